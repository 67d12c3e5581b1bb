//! One SQLite file served by one dedicated thread, with group commit.
//!
//! The async runtime's worker threads never touch SQLite: every operation is a closure sent to
//! the file's own thread, which takes whatever has queued up since its last commit and runs it
//! all in one transaction, each operation inside its own savepoint (an operation that fails
//! rolls back alone). Replies are sent only after the commit, so a caller that gets `Ok` knows
//! its write is durable (a frame is persisted before it is posted).
//!
//! Under load this is what makes persistence cheap: a thousand streaming chats produce frames
//! faster than one commit takes, so each commit carries many frames, and the connection is
//! opened in exclusive locking mode (`locking_mode=EXCLUSIVE` before WAL), so SQLite takes its
//! file lock once instead of per transaction and keeps no shared-memory index.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc;

use tokio::sync::oneshot;

/// At most this many operations share one commit, so replies are never held back for long.
const MAX_BATCH: usize = 1024;
/// How long opening waits for a file another connection holds.
const OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

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

/// What the file's thread is asked to do.
enum Request {
    Run(Job),
    /// Finish what came before, then close the file (and release its lock).
    Close,
}

/// A handle on the file's thread. Dropping every handle, or [`Database::close`], ends the
/// thread and closes the file.
pub struct Database {
    jobs: mpsc::Sender<Request>,
}

/// Opens a SQLite file for its own thread: exclusive locking, WAL, `synchronous=NORMAL`
/// (durable across process crashes; an OS crash may lose the last transactions).
fn open_connection(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    // Another process holding the file (a second `chatrun serve` on the same data directory)
    // is waited for briefly, then refused.
    conn.busy_timeout(std::time::Duration::from_secs(1))?;
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(conn)
}

impl Database {
    /// Opens (creating if needed) the file at `path`, runs `schema`, and starts its thread.
    /// `on_rollback` runs on that thread after a commit that failed (callers that cache what
    /// they wrote forget it there).
    /// # Errors
    /// The file cannot be opened, locked or given the schema.
    pub fn open(
        path: &Path,
        schema: &str,
        on_rollback: Box<dyn Fn() + Send>,
    ) -> Result<Database, DbError> {
        // Another instance in this process may be closing the file (a restart in a test); a
        // second process keeps it for good. Wait a while for the first, then say who holds it.
        let deadline = std::time::Instant::now() + OPEN_WAIT;
        let mut conn = loop {
            match open_connection(path).and_then(|c| c.execute_batch(schema).map(|()| c)) {
                Ok(conn) => break conn,
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) if is_busy(&e) => {
                    return Err(DbError::Commit(format!(
                        "{} is in use by another chatrun (one process per data directory): {e}",
                        path.display()
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (jobs, queued) = mpsc::channel::<Request>();
        let name = format!(
            "sqlite-{}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        std::thread::Builder::new()
            .name(name)
            .spawn(move || serve(&mut conn, &queued, on_rollback.as_ref()))
            .map_err(|e| DbError::Commit(format!("starting the database thread: {e}")))?;
        Ok(Database { jobs })
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
        let (reply, answer) = oneshot::channel::<Result<T, E>>();
        let job: Job = Box::new(move |conn| {
            let result = in_savepoint(conn, operation);
            Box::new(move |commit_error: Option<&str>| {
                let result = match commit_error {
                    Some(error) => Err(E::from(DbError::Commit(error.to_owned()))),
                    None => result,
                };
                let _ = reply.send(result);
            })
        });
        self.jobs
            .send(Request::Run(job))
            .map_err(|_| E::from(DbError::Closed))?;
        answer.await.map_err(|_| E::from(DbError::Closed))?
    }

    /// Closes the file once what was asked before is done, even while handles remain (a server
    /// that stops releases the file for the next one at once); later calls answer `Closed`.
    pub fn close(&self) {
        let _ = self.jobs.send(Request::Close);
    }
}

/// Runs one operation in a savepoint of the open transaction.
fn in_savepoint<T, E: From<DbError>>(
    conn: &mut rusqlite::Connection,
    operation: impl FnOnce(&mut rusqlite::Connection) -> Result<T, E>,
) -> Result<T, E> {
    conn.execute_batch("SAVEPOINT operation")
        .map_err(|e| E::from(e.into()))?;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| operation(conn)))
        .unwrap_or_else(|_| Err(E::from(DbError::Panicked)));
    let end = if result.is_ok() {
        "RELEASE operation"
    } else {
        "ROLLBACK TO operation; RELEASE operation"
    };
    conn.execute_batch(end).map_err(|e| E::from(e.into()))?;
    result
}

/// The thread: take what queued, run it in one transaction, commit, answer.
fn serve(
    conn: &mut rusqlite::Connection,
    queued: &mpsc::Receiver<Request>,
    on_rollback: &dyn Fn(),
) {
    let mut closing = false;
    while !closing {
        let Ok(Request::Run(first)) = queued.recv() else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queued.try_recv() {
                Ok(Request::Run(job)) => batch.push(job),
                Ok(Request::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let begun = conn.execute_batch("BEGIN IMMEDIATE");
        let replies: Vec<Reply> = batch.into_iter().map(|job| job(conn)).collect();
        let committed = begun.and_then(|()| conn.execute_batch("COMMIT"));
        let error = committed.err().map(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            on_rollback();
            tracing::error!(error = %e, "a SQLite commit failed; its operations answer with an error");
            e.to_string()
        });
        for reply in replies {
            reply(error.as_deref());
        }
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
            Box::new(|| {}),
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
            Box::new(|| {}),
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
            Box::new(|| {}),
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
