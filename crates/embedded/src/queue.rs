//! `SqliteTurnQueue`: a durable queue with the SQS FIFO semantics run-turn relies on.
//!
//! - **Message groups**: while a group has a message in flight, none of its later messages is
//!   handed out; a batch may hold several messages of a group, in order.
//! - **Deduplication**: a second message with the same deduplication id within five minutes is
//!   accepted and dropped.
//! - **Visibility timeout**: a received message is invisible until it is deleted or the timeout
//!   passes; then it is received again with a higher receive count.
//! - **Dead letters**: a message received `max_receives` times moves to the dead-letter queue
//!   on its next receive, as SQS's redrive policy does.
//!
//! Messages live in SQLite, so queued and in-flight turns survive a restart. `chatrun serve`
//! keeps them in the store's file ([`SqliteTurnQueue::in_store`]): one writer thread, reader and
//! checkpointer fewer for two cores to schedule, and a queue operation shares the commit of
//! whatever store writes arrived with it, where a file of its own paid a commit per operation.
//! [`SqliteTurnQueue::open`] gives a queue its own file (the conformance suite, the queue's
//! benchmark). A waiting receive sleeps until a message arrives, one is deleted or made
//! visible, or the earliest in-flight message's visibility ends: it never polls.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chatrun_core::domain::{Millis, TurnJob};
use chatrun_core::error::QueueError;
use chatrun_core::ports::{JobVisibility, QueueName, ReceivedTurn, TurnQueue, TurnQueueConsumer};
use rusqlite::{OptionalExtension, params};
use tokio::sync::Notify;

use crate::Cached;
use crate::db::{Database, DbError, Hooks};
use crate::lock;
use crate::queue_error;
use crate::store::SqliteChatStore;

/// SQS's deduplication interval.
const DEDUPLICATION_WINDOW_MS: i64 = 5 * 60 * 1000;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    deduplication_id TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    visible_at INTEGER NOT NULL DEFAULT 0,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT
);
-- A receive reads only what can be handed out, and asks each candidate's group whether an
-- earlier message waits or is in flight. A receipt names its message's seq, so deletes and
-- heartbeats find it by the primary key: an index on receipts cost every receive a write.
-- (queue, seq) served the old full scan; nothing reads it now, and every write paid for it.
DROP INDEX IF EXISTS queue_messages_by_queue;
DROP INDEX IF EXISTS queue_messages_by_receipt;
CREATE INDEX IF NOT EXISTS queue_messages_by_visibility ON queue_messages (queue, visible_at);
CREATE INDEX IF NOT EXISTS queue_messages_by_group ON queue_messages (queue, group_id, seq);
CREATE TABLE IF NOT EXISTS queue_deduplication (
    deduplication_id TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_deduplication_by_expiry ON queue_deduplication (expires_at);
";

fn queue_key(queue: QueueName) -> &'static str {
    match queue {
        QueueName::Turns => "turns",
        QueueName::DeadLetters => "dead-letters",
    }
}

fn queue_index(queue: QueueName) -> usize {
    match queue {
        QueueName::Turns => 0,
        QueueName::DeadLetters => 1,
    }
}

fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The durable turn queue and its dead-letter queue, in one SQLite file.
pub struct SqliteTurnQueue {
    db: Database,
    /// Whether the file is the queue's own, closed with it (not the store's).
    owns_file: bool,
    visibility_timeout: Duration,
    max_receives: u32,
    /// Per queue (turns, dead letters): rung once for each change a waiting receive may act
    /// on, a message sent, deleted, made visible sooner or moved to the dead letters. One
    /// waiter wakes per change (`notify_one`, a permit kept when none waits): waking every
    /// poller of both queues for every change made each send and delete cost the writer a
    /// receive per poller, nearly all of them finding nothing.
    changed: [Notify; 2],
    /// How many times a receive looked at the queue (for the tests).
    looks: std::sync::atomic::AtomicU64,
    /// Receives of the turn queue waiting for a message right now.
    waiting: Arc<AtomicUsize>,
    /// Turn messages a send received on behalf of a waiting receive, in the send's own
    /// operation, and when ([`SqliteTurnQueue::send_raw`]).
    handed: Mutex<VecDeque<(ReceivedTurn, std::time::Instant)>>,
    /// Messages this queue deleted lately, by seq (never reused: `AUTOINCREMENT`). Each
    /// finished turn is deleted twice, by run-turn as soon as it is done (so the chat's next
    /// turn can start) and by the event source mapping with its batch, as on AWS; the second
    /// is answered from here instead of costing the writer a `DELETE` that finds nothing.
    deleted: Mutex<RecentlyDeleted>,
}

/// The last [`REMEMBERED_DELETES`] seqs deleted, oldest first out.
#[derive(Default)]
struct RecentlyDeleted {
    seqs: HashSet<i64>,
    order: VecDeque<i64>,
}

/// Enough for every turn in flight at once many times over; 16 bytes each.
const REMEMBERED_DELETES: usize = 4096;

impl RecentlyDeleted {
    fn remember(&mut self, seq: i64) {
        if self.seqs.insert(seq) {
            self.order.push_back(seq);
        }
        if self.order.len() > REMEMBERED_DELETES
            && let Some(oldest) = self.order.pop_front()
        {
            self.seqs.remove(&oldest);
        }
    }
}

impl SqliteTurnQueue {
    /// Opens (creating if needed) the queue at `path`.
    /// # Errors
    /// The file cannot be opened or the schema cannot be created.
    pub fn open(
        path: impl AsRef<Path>,
        visibility_timeout: Duration,
        max_receives: u32,
    ) -> Result<Self, QueueError> {
        let db = Database::open(
            path.as_ref(),
            SCHEMA,
            // A few pages hold what is queued or in flight (a row per turn).
            512,
            Hooks::default(),
        )?;
        Ok(SqliteTurnQueue::new(
            db,
            true,
            visibility_timeout,
            max_receives,
        ))
    }

    /// The queue in `store`'s file (which holds its tables): its operations run on the store's
    /// writer and share its commits. Closing the store closes it.
    pub fn in_store(
        store: &SqliteChatStore,
        visibility_timeout: Duration,
        max_receives: u32,
    ) -> Self {
        SqliteTurnQueue::new(
            store.database().clone(),
            false,
            visibility_timeout,
            max_receives,
        )
    }

    fn new(db: Database, owns_file: bool, visibility_timeout: Duration, max_receives: u32) -> Self {
        SqliteTurnQueue {
            db,
            owns_file,
            visibility_timeout,
            max_receives: max_receives.max(1),
            changed: [Notify::new(), Notify::new()],
            looks: std::sync::atomic::AtomicU64::new(0),
            waiting: Arc::default(),
            handed: Mutex::default(),
            deleted: Mutex::default(),
        }
    }

    /// Wakes one receive waiting on `queue` (or the next one to wait).
    fn wake(&self, queue: QueueName) {
        self.changed[queue_index(queue)].notify_one();
    }

    /// Closes a file of the queue's own once pending operations are done; later operations
    /// answer an error. A queue in the store's file closes with the store.
    pub fn close(&self) {
        if self.owns_file {
            self.db.close();
        }
    }

    /// Moves what a queue file of its own at `path` holds (queued and in-flight messages, with
    /// their receive counts, and the deduplication window) into this queue, then removes that
    /// file: what an earlier version, which kept the queue apart from the store, left queued
    /// still runs. Messages keep their order and are taken once each (by message id), so a
    /// crash between the copy and the removal copies nothing twice on the next start.
    /// # Returns
    /// How many messages were moved (0 when there is no such file).
    /// # Errors
    /// The file cannot be read, or the messages cannot be written here.
    pub async fn adopt_file(&self, path: &Path) -> Result<usize, QueueError> {
        if !path.exists() {
            return Ok(0);
        }
        let old = path.to_owned();
        let (messages, deduplication) = tokio::task::spawn_blocking(move || read_queue_file(&old))
            .await
            .map_err(|e| QueueError::Backend(format!("reading the old queue file: {e}")))?
            .map_err(queue_error)?;
        let moved = self
            .db
            .call(move |c| {
                let held: HashSet<String> = c
                    .prepare("SELECT message_id FROM queue_messages")
                    .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                    .map_err(queue_error)?;
                let mut moved = 0;
                for m in messages.iter().filter(|m| !held.contains(&m.message_id)) {
                    moved += 1;
                    c.execute(
                        "INSERT INTO queue_messages (queue, message_id, group_id, deduplication_id, body, sent_at, visible_at, receive_count, receipt)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        params![m.queue, m.message_id, m.group_id, m.deduplication_id, m.body, m.sent_at, m.visible_at, m.receive_count, m.receipt],
                    )
                    .map_err(queue_error)?;
                }
                for (deduplication_id, expires_at) in &deduplication {
                    c.execute(
                        "INSERT INTO queue_deduplication (deduplication_id, expires_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                        params![deduplication_id, expires_at],
                    )
                    .map_err(queue_error)?;
                }
                Ok::<_, QueueError>(moved)
            })
            .await?;
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(QueueError::Backend(format!(
                        "removing the old queue file {}: {e}",
                        std::path::Path::new(&file).display()
                    )));
                }
            }
        }
        if moved > 0 {
            self.wake(QueueName::Turns);
            self.wake(QueueName::DeadLetters);
        }
        Ok(moved)
    }

    /// Enqueues a raw body (what `enqueue` does with a job's JSON; tests use it for bad records).
    ///
    /// When a receive of the turn queue is waiting and the message is the only one of its group,
    /// the send receives it on the waiting receive's behalf in the same operation, as SQS hands
    /// a message to a long poll: the receive then takes it from memory, without an operation of
    /// its own on the writer (one commit and one round trip fewer on the way to every turn's
    /// first token).
    pub async fn send_raw(
        &self,
        group_id: &str,
        deduplication_id: &str,
        body: &str,
    ) -> Result<(), QueueError> {
        self.send(self.send_in(group_id, deduplication_id, body))
            .await
    }

    /// Runs a send ([`SqliteTurnQueue::send_in`]) as an operation of its own.
    async fn send(
        &self,
        send: impl FnOnce(&rusqlite::Connection) -> Result<Sent, QueueError> + Send + 'static,
    ) -> Result<(), QueueError> {
        let sent = self.db.call(move |c| send(c)).await?;
        self.after_sent(sent);
        Ok(())
    }

    /// A turn message's send, to run in a transaction on this queue's file: the operation of
    /// [`SqliteTurnQueue::send_raw`], which a store write in the same file may carry with its
    /// own ([`crate::SqliteOutbox`]). Once its transaction is committed, its result goes to
    /// [`SqliteTurnQueue::after_sent`].
    pub(crate) fn send_in(
        &self,
        group_id: &str,
        deduplication_id: &str,
        body: &str,
    ) -> impl FnOnce(&rusqlite::Connection) -> Result<Sent, QueueError> + Send + 'static + use<>
    {
        let now = now_millis();
        let (group_id, deduplication_id, body) = (
            group_id.to_owned(),
            deduplication_id.to_owned(),
            body.to_owned(),
        );
        let waiting = self.waiting.clone();
        let visibility_timeout = self.visibility_timeout.as_millis() as i64;
        move |tx| {
            tx.execute_cached(
                "DELETE FROM queue_deduplication WHERE expires_at <= ?1",
                [now],
            )
            .map_err(queue_error)?;
            let fresh = tx
                .execute_cached(
                    "INSERT INTO queue_deduplication (deduplication_id, expires_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    params![deduplication_id, now + DEDUPLICATION_WINDOW_MS],
                )
                .map_err(queue_error)?;
            if fresh == 0 {
                return Ok(Sent::Duplicate);
            }
            let message_id = uuid::Uuid::new_v4().to_string();
            let key = queue_key(QueueName::Turns);
            tx.execute_cached(
                "INSERT INTO queue_messages (queue, message_id, group_id, deduplication_id, body, sent_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![key, message_id, group_id, deduplication_id, body, now],
            )
            .map_err(queue_error)?;
            let seq = tx.last_insert_rowid();
            if waiting.load(Ordering::Acquire) == 0
                || earlier_in_group(tx, key, &group_id, seq).map_err(queue_error)?
            {
                return Ok(Sent::Queued);
            }
            let receipt = format!("{seq}.{}", uuid::Uuid::new_v4());
            tx.execute_cached(
                "UPDATE queue_messages SET visible_at = ?2, receive_count = 1, receipt = ?3 WHERE seq = ?1",
                params![seq, now + visibility_timeout, receipt],
            )
            .map_err(queue_error)?;
            Ok::<_, QueueError>(Sent::Handed(ReceivedTurn {
                message_id,
                receipt_handle: receipt,
                body,
                group_id,
                deduplication_id,
                receive_count: 1,
                sent_at: now,
            }))
        }
    }

    /// [`SqliteTurnQueue::send_in`] for a turn's job: its JSON, in its chat's message group,
    /// deduplicated by its turn.
    pub(crate) fn send_job_in(
        &self,
        job: &TurnJob,
    ) -> Result<
        impl FnOnce(&rusqlite::Connection) -> Result<Sent, QueueError> + Send + 'static + use<>,
        QueueError,
    > {
        let body = serde_json::to_string(job).map_err(|e| QueueError::Backend(e.to_string()))?;
        Ok(self.send_in(job.group_id(), &job.deduplication_id(), &body))
    }

    /// What follows a committed send ([`SqliteTurnQueue::send_in`]): a waiting receive is
    /// woken, and given the message when the send received it on its behalf.
    pub(crate) fn after_sent(&self, sent: Sent) {
        match sent {
            Sent::Duplicate => {}
            Sent::Queued => self.wake(QueueName::Turns),
            Sent::Handed(message) => {
                lock(&self.handed).push_back((message, std::time::Instant::now()));
                self.wake(QueueName::Turns);
            }
        }
    }

    /// Whether this queue's tables are in `store`'s file, written by its writer.
    pub(crate) fn is_in(&self, store: &SqliteChatStore) -> bool {
        self.db.same_writer(store.database())
    }

    /// Up to `max` messages a send received for a waiting receive ([`SqliteTurnQueue::send_raw`]),
    /// leaving out any held past its visibility timeout (a later receive got it again).
    fn take_handed(&self, max: usize) -> Vec<ReceivedTurn> {
        let mut handed = lock(&self.handed);
        let mut taken = Vec::new();
        while taken.len() < max
            && let Some((message, at)) = handed.pop_front()
        {
            if at.elapsed() < self.visibility_timeout {
                taken.push(message);
            }
        }
        taken
    }

    /// Hands out up to `max` visible messages, and says when the earliest message in flight
    /// becomes visible again (what a waiting receive sleeps until) and whether it moved any to
    /// the dead letters.
    ///
    /// Cost follows what can be handed out, not what is in flight: with a thousand chats
    /// streaming, a thousand messages are in flight and every finished turn triggers a receive,
    /// so each receive reads only visible rows (index on `visible_at`) and asks the group index
    /// whether an earlier message of the group is still queued or in flight.
    async fn try_receive(&self, queue: QueueName, max: usize) -> Result<Received, QueueError> {
        self.looks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let visibility_timeout = self.visibility_timeout.as_millis() as i64;
        let max_receives = self.max_receives;
        self.db.call(move |tx| {
        let now = now_millis();
        let key = queue_key(queue);
        let next_visible: Option<Millis> = tx
            .prepare_cached(
                "SELECT MIN(visible_at) FROM queue_messages WHERE queue = ?1 AND visible_at > ?2",
            )
            .and_then(|mut s| s.query_row(params![key, now], |r| r.get(0)))
            .map_err(queue_error)?;
        type Candidate = (i64, String, i64);
        let candidates: Vec<Candidate> = tx
            .prepare_cached(
                "SELECT seq, group_id, receive_count FROM queue_messages
                 WHERE queue = ?1 AND visible_at <= ?2 ORDER BY seq",
            )
            .and_then(|mut s| {
                s.query_map(params![key, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<_, _>>()
            })
            .map_err(queue_error)?;
        let mut batch = Vec::new();
        let mut dead_lettered = false;
        // Groups this batch took a message of: their next messages may follow in order.
        let mut taken: HashSet<String> = HashSet::new();
        // Groups with an earlier message queued or in flight: nothing of theirs goes out.
        let mut blocked: HashSet<String> = HashSet::new();
        for (seq, group_id, receive_count) in candidates {
            if batch.len() >= max {
                break;
            }
            if blocked.contains(&group_id) {
                continue;
            }
            if !taken.contains(&group_id)
                && earlier_in_group(tx, key, &group_id, seq).map_err(queue_error)?
            {
                blocked.insert(group_id);
                continue;
            }
            if queue == QueueName::Turns && receive_count as u32 >= max_receives {
                tx.execute_cached(
                    "UPDATE queue_messages SET queue = ?2, visible_at = 0, receive_count = 0, receipt = NULL WHERE seq = ?1",
                    params![seq, queue_key(QueueName::DeadLetters)],
                )
                .map_err(queue_error)?;
                dead_lettered = true;
                continue;
            }
            let receipt = format!("{seq}.{}", uuid::Uuid::new_v4());
            // Read, then update: `UPDATE ... RETURNING` would buffer its row in a temporary
            // table, opened and freed for every message handed out.
            let (message_id, deduplication_id, body, sent_at) = tx
                .query_row_cached(
                    "SELECT message_id, deduplication_id, body, sent_at FROM queue_messages WHERE seq = ?1",
                    [seq],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(queue_error)?;
            tx.execute_cached(
                "UPDATE queue_messages SET visible_at = ?2, receive_count = receive_count + 1, receipt = ?3 WHERE seq = ?1",
                params![seq, now + visibility_timeout, receipt],
            )
            .map_err(queue_error)?;
            taken.insert(group_id.clone());
            batch.push(ReceivedTurn {
                message_id,
                receipt_handle: receipt,
                body,
                group_id,
                deduplication_id,
                receive_count: receive_count as u32 + 1,
                sent_at,
            });
        }
        Ok(Received { batch, next_visible, dead_lettered })
        })
        .await
    }

    /// How many messages a queue holds (visible or in flight).
    pub async fn depth(&self, queue: QueueName) -> Result<u64, QueueError> {
        self.db
            .call(move |c| {
                c.query_row_cached(
                    "SELECT COUNT(*) FROM queue_messages WHERE queue = ?1",
                    [queue_key(queue)],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map_err(queue_error)
                .map(|n| n.unwrap_or(0) as u64)
            })
            .await
    }
}

/// What a send did with its message.
pub(crate) enum Sent {
    /// Dropped: a message with its deduplication id was sent within the window.
    Duplicate,
    /// Queued for the next receive.
    Queued,
    /// Received at once for a waiting receive.
    Handed(ReceivedTurn),
}

/// Whether an earlier message of `group_id` than `seq` is queued or in flight.
fn earlier_in_group(
    c: &rusqlite::Connection,
    queue: &str,
    group_id: &str,
    seq: i64,
) -> rusqlite::Result<bool> {
    c.query_row_cached(
        "SELECT EXISTS (SELECT 1 FROM queue_messages WHERE queue = ?1 AND group_id = ?2 AND seq < ?3)",
        params![queue, group_id, seq],
        |r| r.get(0),
    )
}

/// Counts a receive as waiting for as long as it lives (a receive's future may be dropped
/// mid-wait: a poller that stops).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one look at a queue found ([`SqliteTurnQueue::try_receive`]).
struct Received {
    batch: Vec<ReceivedTurn>,
    /// When the earliest message in flight becomes visible again.
    next_visible: Option<Millis>,
    /// Whether a message was moved to the dead letters on the way.
    dead_lettered: bool,
}

/// The message a receipt handle names (`<seq>.<uuid>`; the uuid makes it one receive's).
fn receipt_seq(receipt_handle: &str) -> Option<i64> {
    receipt_handle.split_once('.')?.0.parse().ok()
}

/// A message as [`SqliteTurnQueue::adopt_file`] moves it.
struct StoredMessage {
    queue: String,
    message_id: String,
    group_id: String,
    deduplication_id: String,
    body: String,
    sent_at: i64,
    visible_at: i64,
    receive_count: i64,
    receipt: Option<String>,
}

/// Everything a queue file holds: its messages in order, and its deduplication window.
type QueueFile = (Vec<StoredMessage>, Vec<(String, i64)>);

fn read_queue_file(path: &Path) -> rusqlite::Result<QueueFile> {
    let c = rusqlite::Connection::open(path)?;
    c.execute_batch(SCHEMA)?;
    let messages = c
        .prepare(
            "SELECT queue, message_id, group_id, deduplication_id, body, sent_at, visible_at, receive_count, receipt
             FROM queue_messages ORDER BY seq",
        )?
        .query_map([], |r| {
            Ok(StoredMessage {
                queue: r.get(0)?,
                message_id: r.get(1)?,
                group_id: r.get(2)?,
                deduplication_id: r.get(3)?,
                body: r.get(4)?,
                sent_at: r.get(5)?,
                visible_at: r.get(6)?,
                receive_count: r.get(7)?,
                receipt: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let deduplication = c
        .prepare("SELECT deduplication_id, expires_at FROM queue_deduplication")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok((messages, deduplication))
}

impl From<DbError> for QueueError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Sqlite(e) => queue_error(e),
            DbError::Commit(m) => QueueError::Transient(m),
            DbError::Closed | DbError::Panicked => QueueError::Backend(e.to_string()),
        }
    }
}

#[async_trait]
impl TurnQueue for SqliteTurnQueue {
    async fn enqueue(&self, job: &TurnJob) -> Result<(), QueueError> {
        self.send(self.send_job_in(job)?).await
    }
}

#[async_trait]
impl TurnQueueConsumer for SqliteTurnQueue {
    async fn receive(
        &self,
        queue: QueueName,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedTurn>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if queue == QueueName::Turns {
                let handed = self.take_handed(max.max(1));
                if !handed.is_empty() {
                    return Ok(handed);
                }
            }
            // Register interest before looking, so a change between the look and the wait
            // still wakes us.
            let changed = self.changed[queue_index(queue)].notified();
            let Received {
                batch,
                next_visible,
                dead_lettered,
            } = self.try_receive(queue, max.max(1)).await?;
            if dead_lettered {
                self.wake(QueueName::DeadLetters);
            }
            if !batch.is_empty() {
                return Ok(batch);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(batch);
            }
            let wake = next_visible.map_or(deadline, |at| {
                let wait_ms = (at - now_millis()).max(0) as u64;
                deadline.min(now + Duration::from_millis(wait_ms))
            });
            let _waiting = (queue == QueueName::Turns).then(|| Waiting::new(&self.waiting));
            let _ = tokio::time::timeout_at(wake, changed).await;
        }
    }

    async fn delete(&self, queue: QueueName, receipt_handle: &str) -> Result<(), QueueError> {
        // A receipt that names no message deletes nothing, as an outdated one does.
        let Some(seq) = receipt_seq(receipt_handle) else {
            return Ok(());
        };
        if lock(&self.deleted).seqs.contains(&seq) {
            return Ok(());
        }
        let receipt_handle = receipt_handle.to_owned();
        let deleted = self
            .db
            .call(move |c| {
                c.execute_cached(
                    "DELETE FROM queue_messages WHERE seq = ?1 AND queue = ?2 AND receipt = ?3",
                    params![seq, queue_key(queue), receipt_handle],
                )
                .map_err(queue_error)
            })
            .await?;
        // Only a delete that took its message changes anything: an outdated receipt's leaves
        // the message, to be deleted (and remembered) under its current receipt.
        if deleted > 0 {
            lock(&self.deleted).remember(seq);
            // The next message of its group may now be handed out.
            self.wake(queue);
        }
        Ok(())
    }

    fn source_arn(&self, queue: QueueName) -> String {
        match queue {
            QueueName::Turns => "arn:aws:sqs:local:000000000000:turns.fifo".into(),
            QueueName::DeadLetters => "arn:aws:sqs:local:000000000000:turns-dlq.fifo".into(),
        }
    }
}

#[async_trait]
impl JobVisibility for SqliteTurnQueue {
    async fn set_visibility(
        &self,
        queue: QueueName,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        let Some(seq) = receipt_seq(receipt_handle) else {
            return Err(QueueError::Backend("outdated receipt handle".into()));
        };
        let receipt_handle = receipt_handle.to_owned();
        let visible_at = now_millis() + timeout.as_millis() as i64;
        let previous: Option<Millis> = self
            .db
            .call(move |c| {
                let previous = c
                    .query_row_cached(
                        "SELECT visible_at FROM queue_messages WHERE seq = ?1 AND queue = ?2 AND receipt = ?3",
                        params![seq, queue_key(queue), receipt_handle],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(queue_error)?;
                if previous.is_some() {
                    c.execute_cached(
                        "UPDATE queue_messages SET visible_at = ?2 WHERE seq = ?1",
                        params![seq, visible_at],
                    )
                    .map_err(queue_error)?;
                }
                Ok::<_, QueueError>(previous)
            })
            .await?;
        let Some(previous) = previous else {
            return Err(QueueError::Backend("outdated receipt handle".into()));
        };
        // A heartbeat pushes visibility later, which no waiting receive cares about; only a
        // message made visible sooner (a retry's backoff) must wake them to look again.
        if visible_at < previous {
            self.wake(queue);
        }
        Ok(())
    }

    async fn acknowledge(&self, queue: QueueName, receipt_handle: &str) -> Result<(), QueueError> {
        TurnQueueConsumer::delete(self, queue, receipt_handle).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_delete_of_a_message_is_answered_without_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let queue = SqliteTurnQueue::open(dir.path().join("q.sqlite3"), Duration::ZERO, 5).unwrap();
        queue.send_raw("g", "d1", "{}").await.unwrap();
        queue.send_raw("h", "d2", "{}").await.unwrap();
        let take = || queue.receive(QueueName::Turns, 1, Duration::from_secs(1));
        let first = take().await.unwrap().remove(0);
        // Visible again at once: an outdated receipt deletes nothing and is not remembered.
        let again = take().await.unwrap().remove(0);
        assert_eq!(again.message_id, first.message_id);
        queue
            .delete(QueueName::Turns, &first.receipt_handle)
            .await
            .unwrap();
        assert_eq!(queue.depth(QueueName::Turns).await.unwrap(), 2);
        queue
            .delete(QueueName::Turns, &again.receipt_handle)
            .await
            .unwrap();
        assert_eq!(queue.depth(QueueName::Turns).await.unwrap(), 1);

        // With the file closed, only what is remembered can still answer.
        queue.close();
        queue
            .delete(QueueName::Turns, &again.receipt_handle)
            .await
            .expect("the second delete of a deleted message needs no file");
        let other = format!("{}.x", receipt_seq(&again.receipt_handle).unwrap() + 1);
        assert!(
            queue.delete(QueueName::Turns, &other).await.is_err(),
            "a message not known deleted still goes to the file"
        );
    }

    #[test]
    fn the_deletes_remembered_are_bounded() {
        let mut deleted = RecentlyDeleted::default();
        for seq in 0..(REMEMBERED_DELETES as i64 + 10) {
            deleted.remember(seq);
        }
        deleted.remember(20);
        assert_eq!(deleted.order.len(), REMEMBERED_DELETES);
        assert_eq!(deleted.seqs.len(), REMEMBERED_DELETES);
        assert!(!deleted.seqs.contains(&9), "the oldest are forgotten");
        assert!(deleted.seqs.contains(&(REMEMBERED_DELETES as i64 + 9)));
    }

    #[tokio::test]
    async fn a_receipt_acts_only_on_the_receive_that_gave_it() {
        let dir = tempfile::tempdir().unwrap();
        let queue = SqliteTurnQueue::open(dir.path().join("q.sqlite3"), Duration::ZERO, 5).unwrap();
        queue.send_raw("g", "d", "{}").await.unwrap();
        let take = || queue.receive(QueueName::Turns, 1, Duration::from_secs(1));
        let first = take().await.unwrap().remove(0);
        // Visible again at once (a zero timeout): the second receive gets a new receipt.
        let second = take().await.unwrap().remove(0);
        assert_eq!(second.receive_count, 2);
        assert_ne!(first.receipt_handle, second.receipt_handle);

        queue
            .delete(QueueName::Turns, &first.receipt_handle)
            .await
            .unwrap();
        queue
            .delete(QueueName::Turns, "not-a-receipt")
            .await
            .unwrap();
        queue
            .delete(QueueName::DeadLetters, &second.receipt_handle)
            .await
            .unwrap();
        assert_eq!(
            queue.depth(QueueName::Turns).await.unwrap(),
            1,
            "only its own receipt deletes it"
        );
        for stale in [first.receipt_handle.as_str(), "not-a-receipt", "12.x"] {
            assert!(
                queue
                    .set_visibility(QueueName::Turns, stale, Duration::from_secs(60))
                    .await
                    .is_err(),
                "{stale} is refused"
            );
        }
        queue
            .set_visibility(
                QueueName::Turns,
                &second.receipt_handle,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        queue
            .delete(QueueName::Turns, &second.receipt_handle)
            .await
            .unwrap();
        assert_eq!(queue.depth(QueueName::Turns).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_message_wakes_one_waiting_receive_not_every_poller() {
        let dir = tempfile::tempdir().unwrap();
        let queue = std::sync::Arc::new(
            SqliteTurnQueue::open(dir.path().join("q.sqlite3"), Duration::from_secs(60), 5)
                .unwrap(),
        );
        let looks = || queue.looks.load(std::sync::atomic::Ordering::Relaxed);
        let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
        let waiting: Vec<_> = [QueueName::Turns; 5]
            .into_iter()
            .chain([QueueName::DeadLetters; 2])
            .map(|name| {
                let (queue, done) = (queue.clone(), done.clone());
                tokio::spawn(async move {
                    let _ = done.send(queue.receive(name, 10, Duration::from_secs(5)).await);
                })
            })
            .collect();
        while looks() < 7 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        queue.send_raw("g", "d", "{}").await.unwrap();
        let received = finished.recv().await.unwrap().unwrap();
        assert_eq!(received.len(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            looks(),
            7,
            "the receive woken took the message the send received for it, the six others slept on"
        );
        assert!(finished.try_recv().is_err(), "the others still wait");
        for waiter in waiting {
            waiter.abort();
        }
    }

    #[tokio::test]
    async fn a_send_hands_its_message_to_a_waiting_receive_and_queues_it_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let queue = std::sync::Arc::new(
            SqliteTurnQueue::open(dir.path().join("q.sqlite3"), Duration::from_secs(60), 5)
                .unwrap(),
        );
        let looks = || queue.looks.load(std::sync::atomic::Ordering::Relaxed);
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move {
                queue
                    .receive(QueueName::Turns, 10, Duration::from_secs(5))
                    .await
            })
        };
        while queue.waiting.load(Ordering::Acquire) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        queue.send_raw("g", "d1", "first").await.unwrap();
        // A second message of the group waits for the first: it is not handed out.
        queue.send_raw("g", "d2", "second").await.unwrap();
        let received = waiter.await.unwrap().unwrap();
        assert_eq!(received.len(), 1);
        assert_eq!(
            (received[0].body.as_str(), received[0].receive_count),
            ("first", 1)
        );
        assert_eq!(looks(), 1, "taken from the send, without a look of its own");
        assert!(lock(&queue.handed).is_empty());
        let take = || queue.receive(QueueName::Turns, 10, Duration::from_millis(100));
        assert!(take().await.unwrap().is_empty(), "the first is in flight");

        queue
            .delete(QueueName::Turns, &received[0].receipt_handle)
            .await
            .unwrap();
        let next = take().await.unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].body, "second");
        assert_eq!(queue.depth(QueueName::Turns).await.unwrap(), 1);
    }
}
