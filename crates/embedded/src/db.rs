//! One SQLite file served by dedicated threads: one writer with group commit, one reader, one
//! checkpointer.
//!
//! The async runtime's worker threads never touch SQLite: every operation is a closure sent to
//! one of the file's threads.
//! - The **writer** takes whatever writes have queued up since its last commit and runs them
//!   all in one transaction, each inside its own savepoint (an operation that fails rolls back
//!   alone). Replies are sent only after the commit, so a caller that gets `Ok` knows its write
//!   is durable (a frame is persisted before it is posted). Under load this is what makes
//!   persistence cheap: a thousand streaming chats produce frames faster than one commit
//!   takes, so each commit carries many frames.
//! - The **reader** answers reads on its own connection from the last committed state (WAL
//!   lets it read while the writer writes), so a read never waits behind a batch of other
//!   chats' frames and its commit. A caller that awaited a write and then reads sees the write:
//!   the write was committed before the read was even asked.
//! - The **checkpointer** copies the WAL back into the database file (SQLite's checkpoint, with
//!   its `fsync`) on its own connection, off the writer's path; SQLite would otherwise do it
//!   inside a commit every thousand pages, stalling every write queued behind it.
//!
//! One process per file: a lock file next to it (`<file>.lock`, `flock`) is held for as long
//! as the writer runs, so a second `chatrun serve` on the same data directory is refused. The
//! store's in-memory mirrors rely on being the only writer.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc;

use tokio::sync::oneshot;

/// At most this many operations share one commit, so replies are never held back for long.
const MAX_BATCH: usize = 1024;
/// How long opening waits for a file another instance holds.
const OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How often the checkpointer looks at the WAL.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
/// A WAL found holding fewer frames than this (1 MiB) is a quiet file's, checkpointed only
/// every [`QUIET_CHECKPOINT_EVERY`]. Once a checkpoint has copied every frame back, the next
/// commit starts the log over, and with `synchronous=NORMAL` SQLite syncs the new log's
/// header to disk in that commit: measured at 0.4 to 0.8 ms, where a commit is otherwise a few
/// microseconds. At 200 ms a quiet server paid that on the first write after nearly every
/// pause, which is a send's claim (a third of its time to `ack` at idle).
const QUIET_WAL_PAGES: i64 = 256;
/// How often a quiet file's WAL is checkpointed: at most a second's writes go unwatched, and
/// a file that wrote [`QUIET_WAL_PAGES`] frames by the next pass is back to every
/// [`CHECKPOINT_EVERY`].
const QUIET_CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// SQLite starts the WAL over (writes from its beginning again) only when a write transaction
/// finds every frame of it copied back, which a checkpoint on another thread never leaves it
/// under a steady stream of commits. So once the checkpointer has copied all but this many
/// frames, it asks the writer to copy the rest between two batches (a fraction of a
/// millisecond), and the writer's next commit starts the log over: the WAL stays a few MiB,
/// hot in the OS's cache, instead of growing to [`WAL_RESTART_PAGES`] and stalling a batch for
/// tens of milliseconds while it is restarted.
const WAL_CATCH_UP_PAGES: i64 = 256;
/// Below this many frames (about 4 MiB) the WAL is left to grow: starting over costs the writer
/// its small catch-up, worth it only when the log is long.
const WAL_START_OVER_PAGES: i64 = 1_024;
/// A WAL longer than this (in pages; about 64 MiB) is more than the catch-up kept short (a
/// reader held a snapshot through every start-over): the writer then restarts it itself,
/// waiting for readers, between two batches.
const WAL_RESTART_PAGES: i64 = 16_384;

/// Why an operation did not run or its commit failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the database thread has stopped")]
    Closed,
    #[error("an operation panicked")]
    Panicked,
}

type Reply = Box<dyn FnOnce(Option<&str>) + Send>;
type Job = Box<dyn FnOnce(&mut rusqlite::Connection) -> Reply + Send>;
type ReadJob = Box<dyn FnOnce(&rusqlite::Connection) + Send>;

/// What the writer is asked to do.
enum Request {
    /// An operation and when it was asked for (for the commit statistics).
    Run(Job, std::time::Instant),
    /// The checkpointer has copied all but a few frames of a long WAL: copy the rest, so the
    /// next commit starts the log over ([`WAL_CATCH_UP_PAGES`]).
    CatchUpWal,
    /// The WAL has grown past [`WAL_RESTART_PAGES`]: copy it all back and start it over.
    RestartWal,
    /// Finish what came before, then close the file (and release its lock).
    Close,
}

/// What the reader is asked to do.
enum ReadRequest {
    Run(ReadJob),
    Close,
}

/// A handle on the file's threads. Dropping every handle, or [`Database::close`], ends the
/// threads and closes the file. Handles are cloned to let two adapters share one file, its
/// writer and its commits (the store and the turn queue).
#[derive(Clone)]
pub struct Database {
    /// This opening of the file, to tell whether two handles write through the same writer.
    id: u64,
    jobs: mpsc::Sender<Request>,
    reads: mpsc::Sender<ReadRequest>,
    /// Dropped (or sent to) to stop the checkpointer.
    checkpoints: mpsc::Sender<()>,
}

/// What a caller that keeps some of what it wrote in memory needs from the file's writer.
pub struct Hooks {
    /// Runs once on the writer's connection, after the schema and before any operation (to
    /// migrate, or to load what the caller keeps in memory).
    pub on_open: OnOpen,
    /// Runs on the writer's thread after each batch, before its operations are answered, told
    /// whether the batch was committed. After a failed commit the connection is outside any
    /// transaction, on the last committed state (from which a caller reloads what it cached).
    pub after_batch: AfterBatch,
}

/// [`Hooks::on_open`].
pub type OnOpen = Box<dyn FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<()> + Send>;
/// [`Hooks::after_batch`].
pub type AfterBatch = Box<dyn Fn(&rusqlite::Connection, Committed) + Send>;

/// Whether a batch was committed ([`Hooks::after_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Yes,
    No,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            on_open: Box::new(|_| Ok(())),
            after_batch: Box::new(|_, _| {}),
        }
    }
}

/// Opens a connection to a SQLite file: WAL, `synchronous=NORMAL` (durable across process
/// crashes; an OS crash may lose the last transactions).
fn open_connection(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    // A checkpoint or a WAL restart holds the other connections back for a moment.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Every statement of the store and queue stays prepared (rusqlite keeps 16 by default,
    // fewer than the hot path uses, so they would be parsed again and again).
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

impl Database {
    /// Opens (creating if needed) the file at `path`, runs `schema` and `hooks.on_open`, and
    /// starts its threads. `writer_cache_kib` is the writer's page cache: the pages its
    /// commits touch, which the caller knows (SQLite's default is 2 MiB per connection).
    /// # Errors
    /// The file cannot be opened, locked or given the schema.
    pub fn open(
        path: &Path,
        schema: &str,
        writer_cache_kib: u32,
        hooks: Hooks,
    ) -> Result<Database, DbError> {
        let lock = lock_file(path)?;
        let mut conn = open_connection(path)?;
        conn.pragma_update(None, "cache_size", -i64::from(writer_cache_kib))?;
        conn.execute_batch(schema)?;
        (hooks.on_open)(&mut conn)?;
        let after_batch = hooks.after_batch;
        // Checkpoints are the checkpointer's job, not the commit's.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let reader = open_connection(path)?;
        reader.pragma_update(None, "query_only", true)?;
        // Page caches per connection (SQLite's default is 2 MiB each): the writer's is its
        // caller's choice; the reader's is small, since what it misses comes from the OS's
        // cache of the file; the checkpointer barely needs one.
        reader.pragma_update(None, "cache_size", -256)?;
        let checkpointer = open_connection(path)?;
        checkpointer.pragma_update(None, "cache_size", -128)?;

        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let spawn = |role: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("sqlite-{role}-{name}"))
                .spawn(run)
                .map(drop)
                .map_err(|e| DbError::Commit(format!("starting a database thread: {e}")))
        };
        let (jobs, queued) = mpsc::channel::<Request>();
        let (reads, queued_reads) = mpsc::channel::<ReadRequest>();
        let (checkpoints, stop_checkpoints) = mpsc::channel::<()>();
        let restart_wal = jobs.clone();
        spawn(
            "write",
            Box::new(move || {
                serve(&mut conn, &queued, after_batch.as_ref());
                // Closed: the next instance may open the file.
                drop(conn);
                drop(lock);
            }),
        )?;
        spawn(
            "read",
            Box::new(move || serve_reads(&reader, &queued_reads)),
        )?;
        spawn(
            "checkpoint",
            Box::new(move || checkpoint(&checkpointer, &stop_checkpoints, &restart_wal)),
        )?;
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Ok(Database {
            id: OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            jobs,
            reads,
            checkpoints,
        })
    }

    /// Whether `other` is a handle to this same opening of the file (one writer, one commit
    /// for the operations of both).
    pub fn same_writer(&self, other: &Database) -> bool {
        self.id == other.id
    }

    /// Runs `operation` on the file's thread, atomically (it rolls back alone if it fails), and
    /// answers once its transaction is committed.
    /// # Errors
    /// What `operation` returned, or a [`DbError`] (converted) when it could not run or its
    /// commit failed.
    pub async fn call<T, E>(
        &self,
        operation: impl FnOnce(&mut rusqlite::Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        self.submit(move |conn| in_savepoint(conn, operation)).await
    }

    /// [`Database::call`] for an `operation` that is a single SQL statement: SQLite undoes a
    /// failed statement by itself, so it runs without the savepoint around it (two statements
    /// fewer per stream event).
    /// # Errors
    /// As [`Database::call`].
    pub async fn call_statement<T, E>(
        &self,
        operation: impl FnOnce(&mut rusqlite::Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        self.submit(move |conn| caught(|| operation(conn))).await
    }

    /// Queues `operation` for the writer's next batch, atomically as [`Database::call`], and
    /// returns at once (a write behind): for a caller that decided in memory what the file must
    /// hold. The writer runs operations in the order they were queued, so a write the caller
    /// queues (and awaits) after this one commits with it or after it. A failure is logged:
    /// `what` names the write.
    pub fn call_behind(
        &self,
        what: &'static str,
        operation: impl FnOnce(&mut rusqlite::Connection) -> Result<(), DbError> + Send + 'static,
    ) {
        let job: Job = Box::new(move |conn| {
            let result = in_savepoint(conn, operation);
            Box::new(move |commit_error: Option<&str>| {
                if let Some(error) = commit_error {
                    tracing::warn!(what, error, "a write behind was not committed");
                } else if let Err(error) = result {
                    tracing::warn!(what, %error, "a write behind failed");
                }
            })
        });
        if self
            .jobs
            .send(Request::Run(job, std::time::Instant::now()))
            .is_err()
        {
            tracing::warn!(what, "a write behind came after the file was closed");
        }
    }

    /// Queues `run` for the writer's next batch and answers with its result once the batch is
    /// committed (or with the commit's error).
    async fn submit<T, E>(
        &self,
        run: impl FnOnce(&mut rusqlite::Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, E>>();
        let job: Job = Box::new(move |conn| {
            let result = run(conn);
            Box::new(move |commit_error: Option<&str>| {
                let result = match commit_error {
                    Some(error) => Err(E::from(DbError::Commit(error.to_owned()))),
                    None => result,
                };
                let _ = reply.send(result);
            })
        });
        self.jobs
            .send(Request::Run(job, std::time::Instant::now()))
            .map_err(|_| E::from(DbError::Closed))?;
        answer.await.map_err(|_| E::from(DbError::Closed))?
    }

    /// Runs the read-only `operation` on the reader's connection, which sees what was last
    /// committed, without waiting for the writer.
    /// # Errors
    /// What `operation` returned, or a [`DbError`] (converted) when it could not run.
    pub async fn read<T, E>(
        &self,
        operation: impl FnOnce(&rusqlite::Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, E>>();
        let job: ReadJob = Box::new(move |conn| {
            let result = caught(|| operation(conn));
            let _ = reply.send(result);
        });
        self.reads
            .send(ReadRequest::Run(job))
            .map_err(|_| E::from(DbError::Closed))?;
        answer.await.map_err(|_| E::from(DbError::Closed))?
    }

    /// Closes the file once what was asked before is done, even while handles remain (a server
    /// that stops releases the file for the next one at once); later calls answer `Closed`.
    pub fn close(&self) {
        let _ = self.checkpoints.send(());
        let _ = self.reads.send(ReadRequest::Close);
        let _ = self.jobs.send(Request::Close);
    }
}

/// Takes the file's lock file, waiting a while for another instance in this process that may
/// be closing it (a restart in a test); a second process keeps it for good.
fn lock_file(path: &Path) -> Result<std::fs::File, DbError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| DbError::Commit(format!("opening {}: {e}", lock_path.display())))?;
    let deadline = std::time::Instant::now() + OPEN_WAIT;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DbError::Commit(format!(
                    "{} is in use by another chatrun (one process per data directory)",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(DbError::Commit(format!("locking {}: {e}", path.display())));
            }
        }
    }
}

/// The reader: take what queued, run it in one read transaction (one snapshot, taken after
/// every read in it was asked), answering each as it is done.
fn serve_reads(conn: &rusqlite::Connection, queued: &mpsc::Receiver<ReadRequest>) {
    loop {
        let Ok(ReadRequest::Run(first)) = queued.recv() else {
            return;
        };
        let mut batch = vec![first];
        let mut closing = false;
        while batch.len() < MAX_BATCH {
            match queued.try_recv() {
                Ok(ReadRequest::Run(job)) => batch.push(job),
                Ok(ReadRequest::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let begun = exec_cached(conn, "BEGIN");
        for job in batch {
            job(conn);
        }
        if begun.is_ok() {
            let _ = exec_cached(conn, "COMMIT");
        }
        if closing {
            return;
        }
    }
}

/// The checkpointer: every [`CHECKPOINT_EVERY`] (a quiet file's every
/// [`QUIET_CHECKPOINT_EVERY`]), copy what the WAL holds back into the file without blocking
/// anyone (`PASSIVE`); past [`WAL_RESTART_PAGES`], ask the writer to restart the log. Ends when
/// the database is closed or dropped.
fn checkpoint(
    conn: &rusqlite::Connection,
    stop: &mpsc::Receiver<()>,
    writer: &mpsc::Sender<Request>,
) {
    let mut restart_asked = std::time::Instant::now() - std::time::Duration::from_secs(60);
    let mut last_pass = std::time::Instant::now();
    // Whether the last pass found a short WAL ([`QUIET_WAL_PAGES`]).
    let mut quiet = false;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if quiet && last_pass.elapsed() < QUIET_CHECKPOINT_EVERY {
            continue;
        }
        last_pass = std::time::Instant::now();
        // Each pass copies what was committed up to its start; commits go on meanwhile, so a
        // few passes bring what is left down to what the writer copies in a moment.
        let mut wal = passive_checkpoint(conn);
        for _ in 0..3 {
            match wal {
                Ok((frames, copied)) if frames - copied > WAL_CATCH_UP_PAGES => {
                    wal = passive_checkpoint(conn);
                }
                _ => break,
            }
        }
        quiet = matches!(wal, Ok((frames, _)) if frames < QUIET_WAL_PAGES);
        let request = match wal {
            Ok((frames, _))
                if frames >= WAL_RESTART_PAGES
                    && restart_asked.elapsed() > std::time::Duration::from_secs(1) =>
            {
                restart_asked = std::time::Instant::now();
                Some(Request::RestartWal)
            }
            Ok((frames, copied))
                if frames >= WAL_START_OVER_PAGES && frames - copied <= WAL_CATCH_UP_PAGES =>
            {
                Some(Request::CatchUpWal)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "a SQLite checkpoint failed; the next one retries");
                None
            }
        };
        if let Some(request) = request
            && writer.send(request).is_err()
        {
            return;
        }
    }
}

/// A `PASSIVE` checkpoint (it never waits for anyone): the frames in the WAL and how many of
/// them are copied back into the file.
fn passive_checkpoint(conn: &rusqlite::Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get(1)?, row.get(2)?))
    })
}

/// Runs an operation, turning a panic into [`DbError::Panicked`] so the thread goes on.
fn caught<T, E: From<DbError>>(operation: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    std::panic::catch_unwind(AssertUnwindSafe(operation))
        .unwrap_or_else(|_| Err(E::from(DbError::Panicked)))
}

/// Runs a statement without parameters or rows from the connection's cache: the transaction
/// and savepoint statements run several times per batch, thousands of times a second, and
/// `execute_batch` would parse them every time.
fn exec_cached(conn: &rusqlite::Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut statement| statement.execute([]))
        .map(drop)
}

/// Runs one operation in a savepoint of the open transaction.
fn in_savepoint<T, E: From<DbError>>(
    conn: &mut rusqlite::Connection,
    operation: impl FnOnce(&mut rusqlite::Connection) -> Result<T, E>,
) -> Result<T, E> {
    exec_cached(conn, "SAVEPOINT operation").map_err(|e| E::from(e.into()))?;
    let result = caught(|| operation(conn));
    if result.is_err() {
        exec_cached(conn, "ROLLBACK TO operation").map_err(|e| E::from(e.into()))?;
    }
    exec_cached(conn, "RELEASE operation").map_err(|e| E::from(e.into()))?;
    result
}

/// What the thread did over about a second, logged at debug level
/// (`RUST_LOG=chatrun_embedded::db=debug`): how full its batches were, how long running and
/// committing them took, and how long an operation waited from being asked to being answered.
struct Stats {
    since: std::time::Instant,
    batches: u64,
    operations: u64,
    run: std::time::Duration,
    commit: std::time::Duration,
    longest_batch: std::time::Duration,
    waited: std::time::Duration,
    longest_wait: std::time::Duration,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            since: std::time::Instant::now(),
            batches: 0,
            operations: 0,
            run: std::time::Duration::ZERO,
            commit: std::time::Duration::ZERO,
            longest_batch: std::time::Duration::ZERO,
            waited: std::time::Duration::ZERO,
            longest_wait: std::time::Duration::ZERO,
        }
    }

    fn log_each_second(&mut self, thread: &str) {
        let elapsed = self.since.elapsed();
        if elapsed < std::time::Duration::from_secs(1) {
            return;
        }
        if self.operations > 0 {
            tracing::debug!(
                thread,
                batches = self.batches,
                operations = self.operations,
                busy_pct = (self.run + self.commit).as_secs_f64() * 100.0 / elapsed.as_secs_f64(),
                run_us_per_op = self.run.as_micros() as u64 / self.operations,
                commit_us_per_batch = self.commit.as_micros() as u64 / self.batches.max(1),
                longest_batch_ms = self.longest_batch.as_secs_f64() * 1000.0,
                mean_wait_ms = self.waited.as_secs_f64() * 1000.0 / self.operations as f64,
                longest_wait_ms = self.longest_wait.as_secs_f64() * 1000.0,
                "sqlite batches"
            );
        }
        *self = Stats::new();
    }
}

/// The thread: take what queued, run it in one transaction, commit, answer.
fn serve(
    conn: &mut rusqlite::Connection,
    queued: &mpsc::Receiver<Request>,
    after_batch: &dyn Fn(&rusqlite::Connection, Committed),
) {
    let thread = std::thread::current().name().unwrap_or("sqlite").to_owned();
    let stats_on = tracing::enabled!(tracing::Level::DEBUG);
    let mut stats = Stats::new();
    let mut closing = false;
    while !closing {
        let (first, asked) = match queued.recv() {
            Ok(Request::Run(first, asked)) => (first, asked),
            Ok(Request::RestartWal) => {
                restart_wal(conn);
                continue;
            }
            Ok(Request::CatchUpWal) => {
                if let Err(e) = passive_checkpoint(conn) {
                    tracing::warn!(error = %e, "a SQLite checkpoint failed; the next one retries");
                }
                continue;
            }
            Ok(Request::Close) | Err(_) => return,
        };
        let mut batch = vec![first];
        // When each operation was asked for, kept only for the statistics.
        let mut asked_at = Vec::new();
        if stats_on {
            asked_at.push(asked);
        }
        let mut restart_wal_after_batch = false;
        let mut catch_up_after_batch = false;
        while batch.len() < MAX_BATCH {
            match queued.try_recv() {
                Ok(Request::Run(job, asked)) => {
                    batch.push(job);
                    if stats_on {
                        asked_at.push(asked);
                    }
                }
                Ok(Request::RestartWal) => restart_wal_after_batch = true,
                Ok(Request::CatchUpWal) => catch_up_after_batch = true,
                Ok(Request::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let begun = exec_cached(conn, "BEGIN IMMEDIATE");
        let replies: Vec<Reply> = batch.into_iter().map(|job| job(conn)).collect();
        let ran = std::time::Instant::now();
        let committed = begun.and_then(|()| exec_cached(conn, "COMMIT"));
        if stats_on {
            let done = std::time::Instant::now();
            stats.batches += 1;
            stats.operations += asked_at.len() as u64;
            stats.run += ran - started;
            stats.commit += done - ran;
            stats.longest_batch = stats.longest_batch.max(done - started);
            for asked in &asked_at {
                stats.waited += done - *asked;
                stats.longest_wait = stats.longest_wait.max(done - *asked);
            }
            stats.log_each_second(&thread);
        }
        let error = committed.err().map(|e| {
            let _ = exec_cached(conn, "ROLLBACK");
            tracing::error!(error = %e, "a SQLite commit failed; its operations answer with an error");
            e.to_string()
        });
        after_batch(
            conn,
            if error.is_none() {
                Committed::Yes
            } else {
                Committed::No
            },
        );
        for reply in replies {
            reply(error.as_deref());
        }
        if restart_wal_after_batch {
            restart_wal(conn);
        } else if catch_up_after_batch && let Err(e) = passive_checkpoint(conn) {
            tracing::warn!(error = %e, "a SQLite checkpoint failed; the next one retries");
        }
    }
}

/// Copies the whole WAL back into the file and starts it over (waiting briefly for readers).
fn restart_wal(conn: &rusqlite::Connection) {
    let started = std::time::Instant::now();
    match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
        row.get::<_, i64>(0)
    }) {
        Ok(0) => tracing::debug!(
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "restarted a long SQLite WAL"
        ),
        Ok(_) => tracing::debug!("a reader held the SQLite WAL; restarting it later"),
        Err(e) => tracing::warn!(error = %e, "restarting the SQLite WAL failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum TestError {
        Db(String),
        Refused,
    }

    impl From<DbError> for TestError {
        fn from(e: DbError) -> Self {
            TestError::Db(e.to_string())
        }
    }

    fn database(dir: &tempfile::TempDir) -> Database {
        Database::open(
            &dir.path().join("t.sqlite3"),
            "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);",
            256,
            Hooks::default(),
        )
        .expect("open")
    }

    #[tokio::test]
    async fn a_failed_operation_rolls_back_alone_while_its_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(database(&dir));
        let mut calls = Vec::new();
        for k in 0..50i64 {
            let db = db.clone();
            calls.push(tokio::spawn(async move {
                db.call(move |c| {
                    c.execute("INSERT INTO t (k, v) VALUES (?1, 'x')", [k])
                        .map_err(|e| TestError::Db(e.to_string()))?;
                    if k % 10 == 0 {
                        return Err(TestError::Refused);
                    }
                    Ok(k)
                })
                .await
            }));
        }
        let mut refused = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => {}
                Err(TestError::Refused) => refused += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(refused, 5);
        let count: i64 = db
            .call(|c| {
                c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                    .map_err(|e| TestError::Db(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!(
            count, 45,
            "the refused inserts were rolled back, the rest kept"
        );
    }

    #[tokio::test]
    async fn a_panicking_operation_is_an_error_and_the_thread_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir);
        let result: Result<(), TestError> = db.call(|_| panic!("bug")).await;
        assert!(matches!(result, Err(TestError::Db(m)) if m.contains("panicked")));
        let one: i64 = db
            .call(|c| {
                c.query_row("SELECT 1", [], |r| r.get(0))
                    .map_err(|e| TestError::Db(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!(one, 1);
    }

    #[tokio::test]
    async fn what_was_committed_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = database(&dir);
            db.call(|c| {
                c.execute("INSERT INTO t (k, v) VALUES (1, 'kept')", [])
                    .map_err(|e| TestError::Db(e.to_string()))
            })
            .await
            .unwrap();
        }
        // The thread closes the file once the last handle is gone; the busy timeout covers
        // the moment in between.
        let db = Database::open(
            &dir.path().join("t.sqlite3"),
            "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);",
            256,
            Hooks::default(),
        )
        .expect("reopen");
        let v: String = db
            .call(|c| {
                c.query_row("SELECT v FROM t WHERE k = 1", [], |r| r.get(0))
                    .map_err(|e| TestError::Db(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!(v, "kept");
    }

    #[tokio::test]
    async fn a_read_does_not_wait_for_the_writer_and_sees_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(database(&dir));
        db.call(|c| {
            c.execute("INSERT INTO t (k, v) VALUES (1, 'committed')", [])
                .map_err(|e| TestError::Db(e.to_string()))
        })
        .await
        .unwrap();
        // A long batch on the writer: the row it inserts is not committed while it runs.
        let slow = {
            let db = db.clone();
            tokio::spawn(async move {
                db.call(|c| {
                    c.execute("INSERT INTO t (k, v) VALUES (2, 'pending')", [])
                        .map_err(|e| TestError::Db(e.to_string()))?;
                    std::thread::sleep(std::time::Duration::from_millis(1500));
                    Ok::<_, TestError>(())
                })
                .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let read_started = std::time::Instant::now();
        let rows: String = db
            .read(|c| {
                c.query_row("SELECT group_concat(v, ',') FROM t", [], |r| r.get(0))
                    .map_err(|e| TestError::Db(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!(rows, "committed", "the read sees the committed row only");
        assert!(
            read_started.elapsed() < std::time::Duration::from_millis(1000),
            "the read answered while the writer was busy ({:?})",
            read_started.elapsed()
        );
        assert!(!slow.is_finished(), "the writer was still busy");
        slow.await.unwrap().unwrap();
        let after: i64 = db
            .read(|c| {
                c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                    .map_err(|e| TestError::Db(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!(after, 2, "once committed, the reader sees the write");
    }

    #[tokio::test]
    async fn a_read_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir);
        let refused = db
            .read(|c| {
                c.execute("INSERT INTO t (k, v) VALUES (1, 'x')", [])
                    .map_err(|e| TestError::Db(e.to_string()))
            })
            .await;
        assert!(matches!(refused, Err(TestError::Db(m)) if m.contains("readonly")));
    }

    #[tokio::test]
    async fn the_checkpointer_copies_the_wal_back_into_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir);
        let file = dir.path().join("t.sqlite3");
        let before = std::fs::metadata(&file).unwrap().len();
        db.call(|c| {
            for k in 0..200i64 {
                c.execute(
                    "INSERT INTO t (k, v) VALUES (?1, ?2)",
                    rusqlite::params![k, "x".repeat(4000)],
                )
                .map_err(|e| TestError::Db(e.to_string()))?;
            }
            Ok::<_, TestError>(())
        })
        .await
        .unwrap();
        // The writer never checkpoints (wal_autocheckpoint is off): the rows reach the main
        // file only through the checkpointer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(&file).unwrap().len() < before + 200 * 4000 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint within 10 s: the file has {} bytes",
                std::fs::metadata(&file).unwrap().len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_quiet_wal_is_copied_back_at_most_once_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir);
        let file = dir.path().join("t.sqlite3");
        let size = || std::fs::metadata(&file).unwrap().len();
        let insert = |k: i64| {
            db.call(move |c| {
                c.execute(
                    "INSERT INTO t (k, v) VALUES (?1, ?2)",
                    rusqlite::params![k, "x".repeat(4000)],
                )
                .map_err(|e| TestError::Db(e.to_string()))
            })
        };
        async fn grows_from(file: &Path, from: u64, within: std::time::Duration) -> bool {
            let deadline = std::time::Instant::now() + within;
            while std::time::Instant::now() < deadline {
                if std::fs::metadata(file).unwrap().len() > from {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            false
        }
        // The first pass copies it (a WAL not yet seen is not known to be quiet) ...
        let before = size();
        insert(1).await.unwrap();
        assert!(grows_from(&file, before, std::time::Duration::from_secs(10)).await);
        // ... and found the WAL short: the next row waits for the next second, not the next
        // 200 ms (the pass that copied the first row was at most 10 ms ago).
        let copied = size();
        insert(2).await.unwrap();
        assert!(
            !grows_from(&file, copied, std::time::Duration::from_millis(600)).await,
            "a quiet WAL was checkpointed again within 0.6 s"
        );
        assert!(grows_from(&file, copied, std::time::Duration::from_secs(10)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_wal_starts_over_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(database(&dir));
        let wal = dir.path().join("t.sqlite3-wal");
        // 48 MiB of rows in a steady stream of small commits, below the 64 MiB at which the
        // writer would restart the log itself: only the catch-up can keep it short.
        let row = "x".repeat(4000);
        let mut longest = 0;
        for round in 0..120i64 {
            let calls: Vec<_> = (0..100i64)
                .map(|i| {
                    let (db, row) = (db.clone(), row.clone());
                    tokio::spawn(async move {
                        db.call_statement(move |c| {
                            c.execute(
                                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                                rusqlite::params![round * 100 + i, row],
                            )
                            .map_err(|e| TestError::Db(e.to_string()))
                        })
                        .await
                    })
                })
                .collect();
            for call in calls {
                call.await.unwrap().unwrap();
            }
            longest = longest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            longest < 24 * 1024 * 1024,
            "the WAL grew to {longest} bytes for 48 MiB written"
        );
    }

    #[tokio::test]
    async fn close_releases_the_file_while_a_handle_remains() {
        let dir = tempfile::tempdir().unwrap();
        let first = database(&dir);
        first
            .call(|c| {
                c.execute("INSERT INTO t (k, v) VALUES (1, 'kept')", [])
                    .map_err(|e| TestError::Db(e.to_string()))
            })
            .await
            .unwrap();
        first.close();
        let started = std::time::Instant::now();
        let second = Database::open(
            &dir.path().join("t.sqlite3"),
            "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);",
            256,
            Hooks::default(),
        )
        .expect("the file is free again");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let after: Result<i64, TestError> = first
            .call(|c| {
                c.query_row("SELECT 1", [], |r| r.get(0))
                    .map_err(|e| TestError::Db(e.to_string()))
            })
            .await;
        assert!(matches!(after, Err(TestError::Db(m)) if m.contains("stopped")));
        drop(second);
    }
}
