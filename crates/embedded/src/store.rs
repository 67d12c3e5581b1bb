//! `SqliteChatStore`: the `ChatStore` port on one SQLite file.
//!
//! The file is served by its own thread with group commit ([`crate::db`]): no SQLite work on
//! the async runtime's threads, and the frames of many chats share one transaction. Messages
//! are one row each (like DynamoDB items), sessions carry a version for conditional writes,
//! and a stream event is written once per `(run_id, first_event_id)`, so a second writer of
//! the same frame fails ([`crate::events`] keeps them).
//!
//! Between frames run-turn reads the chat's session and subscribers. This process is the only
//! writer of the file (its lock file, [`crate::db`]), so the store keeps a mirror of both per chat, kept
//! by the writer thread itself in the order of the writes: that read is a map lookup, and a stop
//! or a new subscriber reaches the running turn at its next frame without any query.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chatrun_core::domain::{
    Chat, ChatId, ChatPage, ChatSession, ChatSummary, Connection, Millis, StreamEvent,
};
use chatrun_core::error::StoreError;
use chatrun_core::history::{MessagePage, PageLimits, PageReader};
use chatrun_core::message::UIMessage;
use chatrun_core::ports::{
    ChatStore, ClaimWithMessageError, MAX_SUBSCRIPTIONS_PER_CONNECTION, TurnSignals,
};
use rusqlite::{OptionalExtension, params};

use crate::Cached;
use crate::db::{Committed, Database, DbError, Hooks};
use crate::events::EventLog;
use crate::lock;
use crate::store_error;
use crate::usage::Usage;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chats (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    title TEXT NOT NULL,
    model TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    message_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS chats_by_owner ON chats (owner_id, updated_at DESC, id DESC);
CREATE TABLE IF NOT EXISTS messages (
    chat_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (chat_id, seq),
    UNIQUE (chat_id, id)
);
CREATE TABLE IF NOT EXISTS sessions (
    chat_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    session TEXT NOT NULL
);
-- Stream events live in their own file (EVENTS_SCHEMA); this table held them before.
DROP TABLE IF EXISTS events;
CREATE TABLE IF NOT EXISTS connections (
    id TEXT PRIMARY KEY,
    connection TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS subscriptions (
    chat_id TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    subscribed_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (chat_id, connection_id)
);
CREATE INDEX IF NOT EXISTS subscriptions_by_connection ON subscriptions (connection_id, subscribed_at);
CREATE TABLE IF NOT EXISTS usage_windows (
    key TEXT PRIMARY KEY,
    window_start INTEGER NOT NULL,
    window_end INTEGER NOT NULL,
    hits INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_windows_by_end ON usage_windows (window_end);
CREATE TABLE IF NOT EXISTS usage_slots (
    key TEXT NOT NULL,
    slot_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (key, slot_id)
);
CREATE INDEX IF NOT EXISTS usage_slots_by_expiry ON usage_slots (expires_at);
";

/// What run-turn reads between frames, mirrored per chat.
#[derive(Debug, Clone, Default)]
struct ChatSignals {
    session: Option<ChatSession>,
    /// Subscribed connections and when each subscription expires.
    subscribers: Vec<(String, Millis)>,
    /// The last answer to `session_and_subscribers`, handed out again (not copied) after
    /// every frame until something changes; every change clears it.
    answered: Option<Answered>,
}

/// An answer to `session_and_subscribers` and the times it holds for: from when it was made
/// until the first of its subscriptions expires.
#[derive(Debug, Clone)]
struct Answered {
    signals: Arc<TurnSignals>,
    from: Millis,
    until: Millis,
}

impl ChatSignals {
    fn answer(&mut self, now: Millis) -> Arc<TurnSignals> {
        if let Some(answered) = &self.answered
            && (answered.from..answered.until).contains(&now)
        {
            return answered.signals.clone();
        }
        let signals = Arc::new(TurnSignals {
            session: self.session.clone(),
            subscribers: live(&self.subscribers, now),
        });
        let until = self
            .subscribers
            .iter()
            .map(|(_, expires_at)| *expires_at)
            .filter(|expires_at| *expires_at > now)
            .min()
            .unwrap_or(Millis::MAX);
        self.answered = Some(Answered {
            signals: signals.clone(),
            from: now,
            until,
        });
        signals
    }
}

/// The mirror, written only on the database thread (in write order) and read anywhere.
type Mirror = Arc<Mutex<HashMap<String, ChatSignals>>>;

fn mirror_update(mirror: &Mirror, chat_id: &str, change: impl FnOnce(&mut ChatSignals)) {
    if let Ok(mut chats) = mirror.lock()
        && let Some(signals) = chats.get_mut(chat_id)
    {
        change(signals);
        signals.answered = None;
    }
}

fn mirror_forget(mirror: &Mirror, chat_ids: &[String]) {
    if let Ok(mut chats) = mirror.lock() {
        for chat_id in chat_ids {
            chats.remove(chat_id);
        }
    }
}

/// Every record of the `connections` table (connections, and revocation floors stored as
/// connection records), by id, kept by the writer thread in the order of its writes.
/// `get_connection` is asked for every client frame, twice (the connection, then its owner's
/// revocation floor, which most owners do not have): this makes both a map lookup instead of
/// two round trips to the reader thread on the way to every `ack`. The store is the file's
/// only writer ([`crate::db`]), so the map is the table, loaded whole when the file opens and
/// again after a failed commit.
#[derive(Clone, Default)]
struct ConnectionRecords(Arc<Mutex<HashMap<String, Connection>>>);

impl ConnectionRecords {
    /// Replaces the map with the table's rows.
    fn reload(&self, c: &rusqlite::Connection) -> rusqlite::Result<()> {
        let mut stmt = c.prepare("SELECT id, connection FROM connections")?;
        let mut rows = stmt.query([])?;
        let mut records = HashMap::new();
        while let Some(row) = rows.next()? {
            let (id, text): (String, String) = (row.get(0)?, row.get(1)?);
            match serde_json::from_str::<Connection>(&text) {
                Ok(connection) => {
                    records.insert(id, connection);
                }
                // As `get_connection` read it before: a record it cannot parse is an error
                // for that connection only, which then has to reconnect.
                Err(error) => {
                    tracing::warn!(id, %error, "a stored connection could not be read; it is ignored")
                }
            }
        }
        *lock(&self.0) = records;
        Ok(())
    }
}

/// The `ChatStore` on SQLite.
pub struct SqliteChatStore {
    db: Database,
    /// The stream events, in a file of their own (`<name>.events.sqlite3` beside the store's):
    /// frames are nearly all the writes of a busy server, and with their own writer thread and
    /// commits, the few writes that start a turn (claim it, store the message) never wait
    /// behind a batch of other chats' frames.
    events: EventLog,
    mirror: Mirror,
    /// The limits' counters, decided in memory and written behind ([`crate::usage`]).
    usage: Usage,
    connections: ConnectionRecords,
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Sqlite(e) => store_error(e),
            DbError::Commit(m) => StoreError::Transient(m),
            DbError::Closed | DbError::Panicked => StoreError::Backend(e.to_string()),
        }
    }
}

/// The operation could not run or its commit failed: nothing was written, the claim included.
impl From<DbError> for ClaimWithMessageError {
    fn from(e: DbError) -> Self {
        ClaimWithMessageError::Session(e.into())
    }
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("encoding: {e}")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Backend(format!("decoding a stored item: {e}")))
}

fn chat_from_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, String, String, String, i64, i64, i64)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

fn into_chat(raw: (String, String, String, String, i64, i64, i64)) -> Result<Chat, StoreError> {
    Ok(Chat {
        id: ChatId::parse(raw.0).map_err(|e| StoreError::Backend(e.to_string()))?,
        owner_id: raw.1,
        title: raw.2,
        model: raw.3,
        created_at: raw.4,
        updated_at: raw.5,
        message_count: raw.6 as u64,
    })
}

const CHAT_COLUMNS: &str = "id, owner_id, title, model, created_at, updated_at, message_count";

impl SqliteChatStore {
    /// Opens (creating if needed) the store at `path`.
    /// # Errors
    /// The file cannot be opened or the schema cannot be created.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let mirror: Mirror = Arc::default();
        let forget_all = mirror.clone();
        let usage = Usage::default();
        let (load_usage, reload_usage) = (usage.clone(), usage.clone());
        let connections = ConnectionRecords::default();
        let (load_connections, reload_connections) = (connections.clone(), connections.clone());
        // The turn queue's tables live in this file too ([`SqliteTurnQueue::in_store`]).
        let schema = [SCHEMA, crate::queue::SCHEMA].concat();
        let db = Database::open(
            path.as_ref(),
            &schema,
            // The pages every commit touches (the chats', sessions', limits' and queue's rows,
            // the messages' last pages) fit in 512 KiB at 1,000 chats streaming; 1 MiB
            // measured no cheaper (BENCHMARKS.md).
            512,
            Hooks {
                on_open: Box::new(move |c| {
                    load_usage.reload(c)?;
                    load_connections.reload(c)
                }),
                after_batch: Box::new(move |c, committed| {
                    if committed == Committed::Yes {
                        return;
                    }
                    if let Ok(mut chats) = forget_all.lock() {
                        chats.clear();
                    }
                    if let Err(error) = reload_usage.reload(c) {
                        tracing::error!(%error, "could not reload the usage counters after a failed commit");
                    }
                    if let Err(error) = reload_connections.reload(c) {
                        tracing::error!(%error, "could not reload the connections after a failed commit");
                    }
                }),
            },
        )?;
        let events = EventLog::open(&path.as_ref().with_extension("events.sqlite3"))?;
        Ok(SqliteChatStore {
            db,
            events,
            mirror,
            usage,
            connections,
        })
    }

    /// [`ChatStore::claim_with_message`] with `also` in the same operation, once the claim and
    /// the message stand: its failure undoes both (the operation is one savepoint), and the
    /// session is mirrored only once all three stand. For a write of another table of this
    /// file ([`crate::SqliteOutbox`]).
    pub(crate) async fn claim_with_message_and<T: Send + 'static>(
        &self,
        session: &ChatSession,
        expected_version: Option<u64>,
        message: &UIMessage,
        now: Millis,
        also: impl FnOnce(&rusqlite::Connection) -> Result<T, ClaimWithMessageError> + Send + 'static,
    ) -> Result<(ChatSession, T), ClaimWithMessageError> {
        let (stored, body) =
            versioned(session, expected_version).map_err(ClaimWithMessageError::Session)?;
        let message_body = to_json(message).map_err(ClaimWithMessageError::Message)?;
        let message_id = message.id.clone();
        let mirror = self.mirror.clone();
        self.db
            .call(move |c| {
                write_session(c, &stored, &body, expected_version)
                    .map_err(ClaimWithMessageError::Session)?;
                insert_message(c, &stored.chat_id, &message_id, &message_body, now)
                    .map_err(ClaimWithMessageError::Message)?;
                let also = also(c)?;
                // Only now that all stand: a refused message rolls the session back too.
                mirror_update(&mirror, stored.chat_id.as_str(), |signals| {
                    signals.session = Some(stored.clone())
                });
                Ok((stored, also))
            })
            .await
    }

    /// The store's file: the turn queue shares it (a clone of the handle), and the usage
    /// counters write behind on it.
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    pub(crate) fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Closes the files once pending operations are done (a stopping server releases them for
    /// the next one); later operations answer an error.
    pub fn close(&self) {
        self.db.close();
        self.events.close();
    }

    /// Runs `operation` on the database thread.
    async fn with<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.db.call(operation).await
    }

    /// Runs the read-only `operation` on the reader's connection (the last committed state),
    /// without waiting behind the writer's batches.
    async fn read<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.db.read(operation).await
    }

    /// `read` of the chat's mirrored session and subscribers, loaded on the database thread on
    /// a miss.
    async fn signals<T: Send + 'static>(
        &self,
        chat_id: &ChatId,
        read: impl FnOnce(&mut ChatSignals) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        if let Ok(mut chats) = self.mirror.lock()
            && let Some(signals) = chats.get_mut(chat_id.as_str())
        {
            return Ok(read(signals));
        }
        let mirror = self.mirror.clone();
        let chat_id = chat_id.as_str().to_owned();
        self.with(move |c| {
            let mut signals = ChatSignals {
                session: read_session(c, &chat_id)?,
                subscribers: read_subscribers(c, &chat_id)?,
                answered: None,
            };
            let answer = read(&mut signals);
            if let Ok(mut chats) = mirror.lock() {
                chats.insert(chat_id, signals);
            }
            Ok(answer)
        })
        .await
    }
}

fn prune_subscriptions(
    c: &rusqlite::Connection,
    connection_id: &str,
) -> Result<Vec<String>, StoreError> {
    let held: i64 = c
        .query_row_cached(
            "SELECT COUNT(*) FROM subscriptions WHERE connection_id = ?1",
            [connection_id],
            |r| r.get(0),
        )
        .map_err(store_error)?;
    if held <= MAX_SUBSCRIPTIONS_PER_CONNECTION as i64 {
        return Ok(Vec::new());
    }
    let mut stmt = c
        .prepare_cached(
            "DELETE FROM subscriptions WHERE connection_id = ?1 AND rowid NOT IN (
                 SELECT rowid FROM subscriptions WHERE connection_id = ?1
                 ORDER BY subscribed_at DESC, rowid DESC LIMIT ?2)
             RETURNING chat_id",
        )
        .map_err(store_error)?;
    let dropped = stmt
        .query_map(
            params![connection_id, MAX_SUBSCRIPTIONS_PER_CONNECTION as i64],
            |r| r.get(0),
        )
        .map_err(store_error)?
        .collect::<Result<_, _>>()
        .map_err(store_error)?;
    Ok(dropped)
}

fn read_session(
    c: &rusqlite::Connection,
    chat_id: &str,
) -> Result<Option<ChatSession>, StoreError> {
    let row: Option<(i64, String)> = c
        .prepare_cached("SELECT version, session FROM sessions WHERE chat_id = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([chat_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(store_error)?;
    row.map(|(version, text)| {
        let mut session: ChatSession = from_json(&text)?;
        session.version = version as u64;
        Ok(session)
    })
    .transpose()
}

fn read_subscribers(
    c: &rusqlite::Connection,
    chat_id: &str,
) -> Result<Vec<(String, Millis)>, StoreError> {
    let mut stmt = c
        .prepare_cached("SELECT connection_id, expires_at FROM subscriptions WHERE chat_id = ?1")
        .map_err(store_error)?;
    let rows = stmt
        .query_map([chat_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(store_error)?
        .collect::<Result<_, _>>()
        .map_err(store_error)?;
    Ok(rows)
}

fn live(subscribers: &[(String, Millis)], now: Millis) -> Vec<String> {
    subscribers
        .iter()
        .filter(|(_, expires_at)| *expires_at > now)
        .map(|(id, _)| id.clone())
        .collect()
}

/// The session as `put_session` stores it (its version one past `expected_version`), and its
/// JSON.
fn versioned(
    session: &ChatSession,
    expected_version: Option<u64>,
) -> Result<(ChatSession, String), StoreError> {
    let mut stored = session.clone();
    stored.version = expected_version.map_or(1, |v| v + 1);
    let body = to_json(&stored)?;
    Ok((stored, body))
}

/// Writes `stored` (made by [`versioned`]) if the stored session is at `expected_version`.
fn write_session(
    c: &rusqlite::Connection,
    stored: &ChatSession,
    body: &str,
    expected_version: Option<u64>,
) -> Result<(), StoreError> {
    let chat_id = stored.chat_id.as_str();
    let written = match expected_version {
        None => c
            .execute_cached(
                "INSERT INTO sessions (chat_id, version, session) VALUES (?1, 1, ?2) ON CONFLICT (chat_id) DO NOTHING",
                params![chat_id, body],
            )
            .map_err(store_error)?,
        Some(v) => c
            .execute_cached(
                "UPDATE sessions SET version = ?3, session = ?2 WHERE chat_id = ?1 AND version = ?4",
                params![chat_id, body, v as i64 + 1, v as i64],
            )
            .map_err(store_error)?,
    };
    if written == 0 {
        return Err(StoreError::Conflict(format!(
            "session of {chat_id} changed"
        )));
    }
    Ok(())
}

/// Appends a message at the end of the chat's history and counts it on the chat.
fn insert_message(
    c: &rusqlite::Connection,
    chat_id: &ChatId,
    message_id: &str,
    body: &str,
    now: Millis,
) -> Result<(), StoreError> {
    let changed = c
        .execute_cached(
            "UPDATE chats SET updated_at = ?2, message_count = message_count + 1 WHERE id = ?1",
            params![chat_id.as_str(), now],
        )
        .map_err(store_error)?;
    if changed == 0 {
        return Err(StoreError::NotFound(format!("chat {chat_id}")));
    }
    c.execute_cached(
        "INSERT INTO messages (chat_id, seq, id, message, created_at)
         VALUES (?1, (SELECT COALESCE(MAX(seq), -1) + 1 FROM messages WHERE chat_id = ?1), ?2, ?3, ?4)",
        params![chat_id.as_str(), message_id, body, now],
    )
    .map_err(|e| {
        if is_constraint(&e) {
            StoreError::Conflict(format!("message {message_id} exists"))
        } else {
            store_error(e)
        }
    })?;
    Ok(())
}

fn encode_cursor(updated_at: Millis, id: &str) -> String {
    format!("{updated_at}.{id}")
}

fn decode_cursor(cursor: &str) -> Result<(Millis, String), StoreError> {
    let (at, id) = cursor.split_once('.').ok_or(StoreError::BadCursor)?;
    let at: Millis = at.parse().map_err(|_| StoreError::BadCursor)?;
    if !chatrun_core::domain::is_valid_id(id) {
        return Err(StoreError::BadCursor);
    }
    Ok((at, id.to_owned()))
}

#[async_trait]
impl ChatStore for SqliteChatStore {
    async fn create_chat(&self, chat: &Chat) -> Result<(), StoreError> {
        let chat = chat.clone();
        self.with(move |c| {
            c.execute_cached(
                "INSERT INTO chats (id, owner_id, title, model, created_at, updated_at, message_count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
                params![chat.id.as_str(), chat.owner_id, chat.title, chat.model, chat.created_at, chat.updated_at],
            )
            .map_err(|e| if is_constraint(&e) { StoreError::Conflict(format!("chat {} exists", chat.id)) } else { store_error(e) })?;
            Ok(())
        })
        .await
    }

    async fn get_chat(&self, chat_id: &ChatId) -> Result<Option<Chat>, StoreError> {
        let chat_id = chat_id.clone();
        self.read(move |c| {
            let raw = c
                .prepare_cached(&format!("SELECT {CHAT_COLUMNS} FROM chats WHERE id = ?1"))
                .and_then(|mut stmt| stmt.query_row([chat_id.as_str()], chat_from_row).optional())
                .map_err(store_error)?;
            raw.map(into_chat).transpose()
        })
        .await
    }

    async fn list_chats(
        &self,
        owner_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ChatPage, StoreError> {
        let after = cursor.map(decode_cursor).transpose()?;
        let owner_id = owner_id.to_owned();
        self.read(move |c| {
            let limit = limit.max(1);
            let rows: Vec<_> = match &after {
                None => {
                    let mut stmt = c
                        .prepare_cached(&format!(
                            "SELECT {CHAT_COLUMNS} FROM chats WHERE owner_id = ?1 ORDER BY updated_at DESC, id DESC LIMIT ?2"
                        ))
                        .map_err(store_error)?;
                    stmt.query_map(params![owner_id, limit as i64 + 1], chat_from_row)
                        .map_err(store_error)?
                        .collect::<Result<_, _>>()
                        .map_err(store_error)?
                }
                Some((at, id)) => {
                    let mut stmt = c
                        .prepare_cached(&format!(
                            "SELECT {CHAT_COLUMNS} FROM chats WHERE owner_id = ?1 AND (updated_at < ?2 OR (updated_at = ?2 AND id < ?3)) ORDER BY updated_at DESC, id DESC LIMIT ?4"
                        ))
                        .map_err(store_error)?;
                    stmt.query_map(params![owner_id, at, id, limit as i64 + 1], chat_from_row)
                        .map_err(store_error)?
                        .collect::<Result<_, _>>()
                        .map_err(store_error)?
                }
            };
            let mut chats = rows.into_iter().map(into_chat).collect::<Result<Vec<_>, _>>()?;
            let next_cursor = if chats.len() > limit {
                chats.truncate(limit);
                chats.last().map(|c| encode_cursor(c.updated_at, c.id.as_str()))
            } else {
                None
            };
            Ok(ChatPage { chats: chats.iter().map(ChatSummary::from).collect(), next_cursor })
        })
        .await
    }

    async fn rename_chat(
        &self,
        chat_id: &ChatId,
        title: &str,
        now: Millis,
    ) -> Result<Chat, StoreError> {
        let chat_id = chat_id.clone();
        let title = title.to_owned();
        self.with(move |c| {
            let changed = c
                .execute_cached(
                    "UPDATE chats SET title = ?2, updated_at = ?3 WHERE id = ?1",
                    params![chat_id.as_str(), title, now],
                )
                .map_err(store_error)?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("chat {chat_id}")));
            }
            let raw = c
                .query_row_cached(
                    &format!("SELECT {CHAT_COLUMNS} FROM chats WHERE id = ?1"),
                    [chat_id.as_str()],
                    chat_from_row,
                )
                .map_err(store_error)?;
            into_chat(raw)
        })
        .await
    }

    async fn set_chat_model(&self, chat_id: &ChatId, model: &str) -> Result<Chat, StoreError> {
        let chat_id = chat_id.clone();
        let model = model.to_owned();
        self.with(move |c| {
            let raw = c
                .query_row_cached(
                    &format!("UPDATE chats SET model = ?2 WHERE id = ?1 RETURNING {CHAT_COLUMNS}"),
                    params![chat_id.as_str(), model],
                    chat_from_row,
                )
                .optional()
                .map_err(store_error)?
                .ok_or_else(|| StoreError::NotFound(format!("chat {chat_id}")))?;
            into_chat(raw)
        })
        .await
    }

    async fn delete_chat(&self, chat_id: &ChatId) -> Result<(), StoreError> {
        let chat_id = chat_id.as_str().to_owned();
        let mirror = self.mirror.clone();
        let run = self
            .with(move |c| {
                let run = read_session(c, &chat_id)?.map(|s| s.run_id);
                for table in [
                    "chats WHERE id",
                    "messages WHERE chat_id",
                    "sessions WHERE chat_id",
                    "subscriptions WHERE chat_id",
                ] {
                    c.execute_cached(&format!("DELETE FROM {table} = ?1"), [chat_id.as_str()])
                        .map_err(store_error)?;
                }
                mirror_forget(&mirror, &[chat_id]);
                Ok(run)
            })
            .await?;
        // The chat is gone, so nothing can resume its run any more; its events go after it
        // (had this failed, they would only take space until the run's events expire).
        if let Some(run) = run {
            self.events.delete_run(run).await?;
        }
        Ok(())
    }

    async fn append_message(
        &self,
        chat_id: &ChatId,
        message: &UIMessage,
        now: Millis,
    ) -> Result<(), StoreError> {
        let body = to_json(message)?;
        let chat_id = chat_id.clone();
        let message_id = message.id.clone();
        self.with(move |c| insert_message(c, &chat_id, &message_id, &body, now))
            .await
    }

    async fn messages(&self, chat_id: &ChatId) -> Result<Vec<UIMessage>, StoreError> {
        let chat_id = chat_id.clone();
        let rows: Vec<String> = self
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached("SELECT message FROM messages WHERE chat_id = ?1 ORDER BY seq")
                    .map_err(store_error)?;
                let rows = stmt
                    .query_map([chat_id.as_str()], |r| r.get(0))
                    .map_err(store_error)?
                    .collect::<Result<_, _>>()
                    .map_err(store_error)?;
                Ok(rows)
            })
            .await?;
        // Decoding is the caller's work, off the database thread.
        rows.iter().map(|r| from_json(r)).collect()
    }

    async fn message_page(
        &self,
        chat_id: &ChatId,
        before: Option<&str>,
        limits: PageLimits,
    ) -> Result<MessagePage, StoreError> {
        let mut reader = PageReader::new(chat_id, before, limits)?;
        let chat_id = chat_id.clone();
        // Rows are read on the database thread, up to what the page can take; they are
        // decoded by the caller, off that thread.
        let reader = self
            .read(move |c| {
                let start = reader.start_seq().map_or(i64::MAX, |seq| seq as i64);
                let mut stmt = c
                    .prepare_cached(
                        "SELECT seq, id, message FROM messages WHERE chat_id = ?1 AND seq <= ?2
                         ORDER BY seq DESC LIMIT ?3",
                    )
                    .map_err(store_error)?;
                let mut rows = stmt
                    .query(params![
                        chat_id.as_str(),
                        start,
                        reader.rows_wanted() as i64
                    ])
                    .map_err(store_error)?;
                while let Some(row) = rows.next().map_err(store_error)? {
                    let seq: i64 = row.get(0).map_err(store_error)?;
                    let id: String = row.get(1).map_err(store_error)?;
                    let json: String = row.get(2).map_err(store_error)?;
                    if !reader.push(seq as u64, &id, json)? {
                        break;
                    }
                }
                Ok(reader)
            })
            .await?;
        reader.finish()
    }

    async fn delete_messages_from(
        &self,
        chat_id: &ChatId,
        message_id: &str,
    ) -> Result<u64, StoreError> {
        let chat_id = chat_id.clone();
        let message_id = message_id.to_owned();
        self.with(move |c| {
            let seq: Option<i64> = c
                .query_row_cached(
                    "SELECT seq FROM messages WHERE chat_id = ?1 AND id = ?2",
                    params![chat_id.as_str(), message_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(store_error)?;
            let seq = seq.ok_or_else(|| StoreError::NotFound(format!("message {message_id}")))?;
            let deleted = c
                .execute_cached(
                    "DELETE FROM messages WHERE chat_id = ?1 AND seq >= ?2",
                    params![chat_id.as_str(), seq],
                )
                .map_err(store_error)?;
            c.execute_cached(
                "UPDATE chats SET message_count = MAX(message_count - ?2, 0) WHERE id = ?1",
                params![chat_id.as_str(), deleted as i64],
            )
            .map_err(store_error)?;
            Ok(deleted as u64)
        })
        .await
    }

    async fn get_session(&self, chat_id: &ChatId) -> Result<Option<ChatSession>, StoreError> {
        self.signals(chat_id, |signals| signals.session.clone())
            .await
    }

    async fn put_session(
        &self,
        session: &ChatSession,
        expected_version: Option<u64>,
    ) -> Result<ChatSession, StoreError> {
        let (stored, body) = versioned(session, expected_version)?;
        let mirror = self.mirror.clone();
        self.with(move |c| {
            write_session(c, &stored, &body, expected_version)?;
            mirror_update(&mirror, stored.chat_id.as_str(), |signals| {
                signals.session = Some(stored.clone())
            });
            Ok(stored)
        })
        .await
    }

    /// One operation on the writer: the session's write and the message's insert share a
    /// savepoint, so a refused message undoes the claim with it.
    async fn claim_with_message(
        &self,
        session: &ChatSession,
        expected_version: Option<u64>,
        message: &UIMessage,
        now: Millis,
    ) -> Result<ChatSession, ClaimWithMessageError> {
        self.claim_with_message_and(session, expected_version, message, now, |_| Ok(()))
            .await
            .map(|(stored, ())| stored)
    }

    async fn append_event(&self, event: &StreamEvent) -> Result<(), StoreError> {
        self.events.append(event).await
    }

    async fn events_after(
        &self,
        run_id: &str,
        after_event_id: u64,
        now: Millis,
    ) -> Result<Vec<StreamEvent>, StoreError> {
        self.events.after(run_id, after_event_id, now).await
    }

    async fn last_event_id(&self, run_id: &str, now: Millis) -> Result<u64, StoreError> {
        self.events.last_event_id(run_id, now).await
    }

    async fn put_connection(&self, connection: &Connection) -> Result<(), StoreError> {
        let body = to_json(connection)?;
        let record = connection.clone();
        let records = self.connections.clone();
        self.with(move |c| {
            c.execute_cached(
                "INSERT OR REPLACE INTO connections (id, connection, expires_at) VALUES (?1, ?2, ?3)",
                params![record.connection_id, body, record.expires_at],
            )
            .map_err(store_error)?;
            lock(&records.0).insert(record.connection_id.clone(), record);
            Ok(())
        })
        .await
    }

    async fn get_connection(
        &self,
        connection_id: &str,
        now: Millis,
    ) -> Result<Option<Connection>, StoreError> {
        Ok(lock(&self.connections.0)
            .get(connection_id)
            .filter(|connection| connection.expires_at > now)
            .cloned())
    }

    async fn delete_connection(&self, connection_id: &str) -> Result<(), StoreError> {
        let connection_id = connection_id.to_owned();
        let mirror = self.mirror.clone();
        let records = self.connections.clone();
        self.with(move |c| {
            let chats = chats_of(c, &connection_id)?;
            c.execute_cached("DELETE FROM connections WHERE id = ?1", [&connection_id])
                .map_err(store_error)?;
            lock(&records.0).remove(&connection_id);
            c.execute_cached(
                "DELETE FROM subscriptions WHERE connection_id = ?1",
                [&connection_id],
            )
            .map_err(store_error)?;
            for chat_id in chats {
                mirror_update(&mirror, &chat_id, |signals| {
                    signals.subscribers.retain(|(id, _)| *id != connection_id)
                });
            }
            Ok(())
        })
        .await
    }

    async fn subscribe(
        &self,
        chat_id: &ChatId,
        connection_id: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        let chat_id = chat_id.as_str().to_owned();
        let connection_id = connection_id.to_owned();
        let mirror = self.mirror.clone();
        self.with(move |c| {
            c.execute_cached(
                "INSERT INTO subscriptions (chat_id, connection_id, subscribed_at, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (chat_id, connection_id) DO UPDATE SET subscribed_at = excluded.subscribed_at, expires_at = excluded.expires_at",
                params![chat_id, connection_id, now, expires_at],
            )
            .map_err(store_error)?;
            let dropped = prune_subscriptions(c, &connection_id)?;
            for dropped_chat in &dropped {
                mirror_update(&mirror, dropped_chat, |signals| {
                    signals.subscribers.retain(|(id, _)| *id != connection_id)
                });
            }
            mirror_update(&mirror, &chat_id, |signals| {
                signals.subscribers.retain(|(id, _)| *id != connection_id);
                signals.subscribers.push((connection_id.clone(), expires_at));
            });
            Ok(())
        })
        .await
    }

    async fn unsubscribe(&self, chat_id: &ChatId, connection_id: &str) -> Result<(), StoreError> {
        let chat_id = chat_id.as_str().to_owned();
        let connection_id = connection_id.to_owned();
        let mirror = self.mirror.clone();
        self.with(move |c| {
            c.execute_cached(
                "DELETE FROM subscriptions WHERE chat_id = ?1 AND connection_id = ?2",
                params![chat_id, connection_id],
            )
            .map_err(store_error)?;
            mirror_update(&mirror, &chat_id, |signals| {
                signals.subscribers.retain(|(id, _)| *id != connection_id)
            });
            Ok(())
        })
        .await
    }

    async fn subscribers(&self, chat_id: &ChatId, now: Millis) -> Result<Vec<String>, StoreError> {
        self.signals(chat_id, move |signals| live(&signals.subscribers, now))
            .await
    }

    async fn session_and_subscribers(
        &self,
        chat_id: &ChatId,
        now: Millis,
    ) -> Result<Arc<TurnSignals>, StoreError> {
        self.signals(chat_id, move |signals| signals.answer(now))
            .await
    }
}

/// The chats a connection is subscribed to.
fn chats_of(c: &rusqlite::Connection, connection_id: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = c
        .prepare_cached("SELECT chat_id FROM subscriptions WHERE connection_id = ?1")
        .map_err(store_error)?;
    let rows = stmt
        .query_map([connection_id], |r| r.get(0))
        .map_err(store_error)?
        .collect::<Result<_, _>>()
        .map_err(store_error)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_read_from_memory_and_the_file_keeps_them_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chatrun.sqlite3");
        let now = 1_800_000_000_000;
        let connection = |id: &str, expires_at| Connection {
            connection_id: id.into(),
            owner_id: "u".into(),
            grant: chatrun_core::domain::Grant::User,
            connected_at: now,
            expires_at,
        };
        let store = SqliteChatStore::open(&path).unwrap();
        store
            .put_connection(&connection("k1", now + 10))
            .await
            .unwrap();
        store
            .put_connection(&connection("k2", now + 10))
            .await
            .unwrap();
        store
            .put_connection(&connection("k3", now + 10))
            .await
            .unwrap();
        store.delete_connection("k3").await.unwrap();
        // Replaced, as by a second `$connect` with the same id.
        store
            .put_connection(&connection("k2", now + 20))
            .await
            .unwrap();
        // The reader would see the same (the file is the truth the map mirrors); close it to
        // show the answers come from memory.
        store.db.close();
        assert_eq!(
            store.get_connection("k1", now).await.unwrap(),
            Some(connection("k1", now + 10))
        );
        assert_eq!(
            store.get_connection("k1", now + 10).await.unwrap(),
            None,
            "expired"
        );
        assert_eq!(
            store.get_connection("k2", now + 15).await.unwrap(),
            Some(connection("k2", now + 20))
        );
        assert_eq!(store.get_connection("k3", now).await.unwrap(), None);
        store.close();
        drop(store);

        let reopened = SqliteChatStore::open(&path).unwrap();
        assert_eq!(
            reopened.get_connection("k1", now).await.unwrap(),
            Some(connection("k1", now + 10))
        );
        assert_eq!(
            reopened.get_connection("k2", now + 15).await.unwrap(),
            Some(connection("k2", now + 20))
        );
        assert_eq!(reopened.get_connection("k3", now).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_refused_message_undoes_its_claim_in_the_file_and_the_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chatrun.sqlite3");
        let store = SqliteChatStore::open(&path).unwrap();
        let now = 1_800_000_000_000;
        let chat = Chat {
            id: ChatId::parse("chat-1").unwrap(),
            owner_id: "u".into(),
            title: "t".into(),
            model: "m".into(),
            created_at: now,
            updated_at: now,
            message_count: 0,
        };
        store.create_chat(&chat).await.unwrap();
        let session: ChatSession = serde_json::from_value(serde_json::json!({
            "chatId": "chat-1", "runId": "r1", "accessToken": "a", "lastEventId": 0,
            "turns": 0, "status": "active", "endedReason": null, "streaming": true,
            "turnStartEventId": 1, "assistantMessageId": "a1", "userMessageId": "m1",
            "stopRequested": false, "turnStartedAt": now, "attempts": 0,
            "expiresAt": now + 3_600_000, "version": 0
        }))
        .unwrap();
        let message = UIMessage::user_text("m1", "hello");
        let claimed = store
            .claim_with_message(&session, None, &message, now)
            .await
            .unwrap();
        let mut next = claimed.clone();
        next.assistant_message_id = Some("a2".into());
        let refused = store
            .claim_with_message(&next, Some(claimed.version), &message, now)
            .await;
        assert!(
            matches!(
                refused,
                Err(ClaimWithMessageError::Message(StoreError::Conflict(_)))
            ),
            "one transaction: the claim is undone, not left standing ({refused:?})"
        );
        assert_eq!(store.get_session(&chat.id).await.unwrap().unwrap(), claimed);
        store.close();
        drop(store);
        let reopened = SqliteChatStore::open(&path).unwrap();
        assert_eq!(
            reopened.get_session(&chat.id).await.unwrap().unwrap(),
            claimed,
            "the file holds the first claim only"
        );
        assert_eq!(reopened.messages(&chat.id).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_signals_after_each_frame_are_shared_until_something_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteChatStore::open(dir.path().join("chatrun.sqlite3")).unwrap();
        let chat = ChatId::parse("chat-1").unwrap();
        let now = 1_800_000_000_000;
        store
            .subscribe(&chat, "c1", now, now + 1_000)
            .await
            .unwrap();
        let first = store.session_and_subscribers(&chat, now).await.unwrap();
        assert_eq!(first.subscribers, ["c1"]);
        let again = store
            .session_and_subscribers(&chat, now + 10)
            .await
            .unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "nothing changed: the same answer"
        );

        store
            .subscribe(&chat, "c2", now, now + 5_000)
            .await
            .unwrap();
        let both = store
            .session_and_subscribers(&chat, now + 20)
            .await
            .unwrap();
        assert_eq!(both.subscribers, ["c1", "c2"]);

        // c1's subscription expires: the answer changes with the clock alone.
        let later = store
            .session_and_subscribers(&chat, now + 1_000)
            .await
            .unwrap();
        assert_eq!(later.subscribers, ["c2"]);
        // A clock that went back (another worker's) is answered afresh, not from the cache.
        let earlier = store
            .session_and_subscribers(&chat, now + 500)
            .await
            .unwrap();
        assert_eq!(earlier.subscribers, ["c1", "c2"]);

        store.unsubscribe(&chat, "c2").await.unwrap();
        let none = store
            .session_and_subscribers(&chat, now + 1_000)
            .await
            .unwrap();
        assert!(none.subscribers.is_empty());
    }
}
