//! `SqliteChatStore`: the `ChatStore` port on one SQLite file.
//!
//! One connection behind a mutex: every operation is a few statements of microseconds, never
//! held across an await, and SQLite serialises writers anyway. Messages are one row each (like
//! DynamoDB items), sessions carry a version for conditional writes, and stream events are keyed
//! by `(run_id, first_event_id)` so a second writer of the same frame fails.

use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use chatrun_core::domain::{
    Chat, ChatId, ChatPage, ChatSession, ChatSummary, Connection, Millis, StreamEvent,
};
use chatrun_core::error::StoreError;
use chatrun_core::message::UIMessage;
use chatrun_core::ports::{ChatStore, MAX_SUBSCRIPTIONS_PER_CONNECTION};
use rusqlite::{OptionalExtension, params};

use crate::store_error;

const SCHEMA: &str = "
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
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    first_event_id INTEGER NOT NULL,
    last_event_id INTEGER NOT NULL,
    chunks TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, first_event_id)
);
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
";

/// The `ChatStore` on SQLite.
pub struct SqliteChatStore {
    conn: Mutex<rusqlite::Connection>,
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("encoding: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
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
        let conn = crate::open_connection(path.as_ref()).map_err(store_error)?;
        conn.execute_batch(SCHEMA).map_err(store_error)?;
        Ok(SqliteChatStore {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
        f(&mut conn)
    }
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
        self.with(|c| {
            c.execute(
                "INSERT INTO chats (id, owner_id, title, model, created_at, updated_at, message_count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
                params![chat.id.as_str(), chat.owner_id, chat.title, chat.model, chat.created_at, chat.updated_at],
            )
            .map_err(|e| if is_constraint(&e) { StoreError::Conflict(format!("chat {} exists", chat.id)) } else { store_error(e) })?;
            Ok(())
        })
    }

    async fn get_chat(&self, chat_id: &ChatId) -> Result<Option<Chat>, StoreError> {
        self.with(|c| {
            let raw = c
                .query_row(
                    &format!("SELECT {CHAT_COLUMNS} FROM chats WHERE id = ?1"),
                    [chat_id.as_str()],
                    chat_from_row,
                )
                .optional()
                .map_err(store_error)?;
            raw.map(into_chat).transpose()
        })
    }

    async fn list_chats(
        &self,
        owner_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ChatPage, StoreError> {
        let after = cursor.map(decode_cursor).transpose()?;
        self.with(|c| {
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
    }

    async fn rename_chat(
        &self,
        chat_id: &ChatId,
        title: &str,
        now: Millis,
    ) -> Result<Chat, StoreError> {
        self.with(|c| {
            let changed = c
                .execute(
                    "UPDATE chats SET title = ?2, updated_at = ?3 WHERE id = ?1",
                    params![chat_id.as_str(), title, now],
                )
                .map_err(store_error)?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("chat {chat_id}")));
            }
            let raw = c
                .query_row(
                    &format!("SELECT {CHAT_COLUMNS} FROM chats WHERE id = ?1"),
                    [chat_id.as_str()],
                    chat_from_row,
                )
                .map_err(store_error)?;
            into_chat(raw)
        })
    }

    async fn delete_chat(&self, chat_id: &ChatId) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction().map_err(store_error)?;
            let run: Option<String> = tx
                .query_row(
                    "SELECT session FROM sessions WHERE chat_id = ?1",
                    [chat_id.as_str()],
                    |r| r.get::<_, String>(0),
                )
                .optional()
                .map_err(store_error)?
                .and_then(|s| serde_json::from_str::<ChatSession>(&s).ok())
                .map(|s| s.run_id);
            if let Some(run) = run {
                tx.execute("DELETE FROM events WHERE run_id = ?1", [run])
                    .map_err(store_error)?;
            }
            for table in [
                "chats WHERE id",
                "messages WHERE chat_id",
                "sessions WHERE chat_id",
                "subscriptions WHERE chat_id",
            ] {
                tx.execute(&format!("DELETE FROM {table} = ?1"), [chat_id.as_str()])
                    .map_err(store_error)?;
            }
            tx.commit().map_err(store_error)
        })
    }

    async fn append_message(
        &self,
        chat_id: &ChatId,
        message: &UIMessage,
        now: Millis,
    ) -> Result<(), StoreError> {
        let body = to_json(message)?;
        self.with(|c| {
            let tx = c.transaction().map_err(store_error)?;
            let changed = tx
                .execute(
                    "UPDATE chats SET updated_at = ?2, message_count = message_count + 1 WHERE id = ?1",
                    params![chat_id.as_str(), now],
                )
                .map_err(store_error)?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("chat {chat_id}")));
            }
            tx.execute(
                "INSERT INTO messages (chat_id, seq, id, message, created_at)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), -1) + 1 FROM messages WHERE chat_id = ?1), ?2, ?3, ?4)",
                params![chat_id.as_str(), message.id, body, now],
            )
            .map_err(|e| {
                if is_constraint(&e) {
                    StoreError::Conflict(format!("message {} exists", message.id))
                } else {
                    store_error(e)
                }
            })?;
            tx.commit().map_err(store_error)
        })
    }

    async fn messages(&self, chat_id: &ChatId) -> Result<Vec<UIMessage>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare_cached("SELECT message FROM messages WHERE chat_id = ?1 ORDER BY seq")
                .map_err(store_error)?;
            let rows: Vec<String> = stmt
                .query_map([chat_id.as_str()], |r| r.get(0))
                .map_err(store_error)?
                .collect::<Result<_, _>>()
                .map_err(store_error)?;
            rows.iter().map(|r| from_json(r)).collect()
        })
    }

    async fn delete_messages_from(
        &self,
        chat_id: &ChatId,
        message_id: &str,
    ) -> Result<u64, StoreError> {
        self.with(|c| {
            let tx = c.transaction().map_err(store_error)?;
            let seq: Option<i64> = tx
                .query_row(
                    "SELECT seq FROM messages WHERE chat_id = ?1 AND id = ?2",
                    params![chat_id.as_str(), message_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(store_error)?;
            let seq = seq.ok_or_else(|| StoreError::NotFound(format!("message {message_id}")))?;
            let deleted = tx
                .execute(
                    "DELETE FROM messages WHERE chat_id = ?1 AND seq >= ?2",
                    params![chat_id.as_str(), seq],
                )
                .map_err(store_error)?;
            tx.execute(
                "UPDATE chats SET message_count = MAX(message_count - ?2, 0) WHERE id = ?1",
                params![chat_id.as_str(), deleted as i64],
            )
            .map_err(store_error)?;
            tx.commit().map_err(store_error)?;
            Ok(deleted as u64)
        })
    }

    async fn get_session(&self, chat_id: &ChatId) -> Result<Option<ChatSession>, StoreError> {
        self.with(|c| {
            let row: Option<(i64, String)> = c
                .query_row(
                    "SELECT version, session FROM sessions WHERE chat_id = ?1",
                    [chat_id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(store_error)?;
            row.map(|(version, text)| {
                let mut session: ChatSession = from_json(&text)?;
                session.version = version as u64;
                Ok(session)
            })
            .transpose()
        })
    }

    async fn put_session(
        &self,
        session: &ChatSession,
        expected_version: Option<u64>,
    ) -> Result<ChatSession, StoreError> {
        let mut stored = session.clone();
        stored.version = expected_version.map_or(1, |v| v + 1);
        let body = to_json(&stored)?;
        let chat_id = session.chat_id.as_str();
        self.with(|c| {
            let written = match expected_version {
                None => c
                    .execute(
                        "INSERT INTO sessions (chat_id, version, session) VALUES (?1, 1, ?2) ON CONFLICT (chat_id) DO NOTHING",
                        params![chat_id, body],
                    )
                    .map_err(store_error)?,
                Some(v) => c
                    .execute(
                        "UPDATE sessions SET version = ?3, session = ?2 WHERE chat_id = ?1 AND version = ?4",
                        params![chat_id, body, v as i64 + 1, v as i64],
                    )
                    .map_err(store_error)?,
            };
            if written == 0 {
                return Err(StoreError::Conflict(format!("session of {chat_id} changed")));
            }
            Ok(stored)
        })
    }

    async fn append_event(&self, event: &StreamEvent) -> Result<(), StoreError> {
        if event.chunks.is_empty() {
            return Err(StoreError::Backend(
                "an event needs at least one chunk".into(),
            ));
        }
        let chunks = to_json(&event.chunks)?;
        self.with(|c| {
            c.prepare_cached(
                "INSERT INTO events (run_id, first_event_id, last_event_id, chunks, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    event.run_id,
                    event.first_event_id as i64,
                    event.last_event_id() as i64,
                    chunks,
                    event.expires_at
                ])
            })
            .map_err(|e| {
                if is_constraint(&e) {
                    StoreError::Conflict(format!("event {} of run {} exists", event.first_event_id, event.run_id))
                } else {
                    store_error(e)
                }
            })?;
            Ok(())
        })
    }

    async fn events_after(
        &self,
        run_id: &str,
        after_event_id: u64,
        now: Millis,
    ) -> Result<Vec<StreamEvent>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT first_event_id, chunks, expires_at FROM events
                     WHERE run_id = ?1 AND last_event_id > ?2 AND expires_at > ?3 ORDER BY first_event_id",
                )
                .map_err(store_error)?;
            let rows: Vec<(i64, String, i64)> = stmt
                .query_map(params![run_id, after_event_id as i64, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(store_error)?
                .collect::<Result<_, _>>()
                .map_err(store_error)?;
            rows.into_iter()
                .map(|(first, chunks, expires_at)| {
                    Ok(StreamEvent {
                        run_id: run_id.to_owned(),
                        first_event_id: first as u64,
                        chunks: from_json(&chunks)?,
                        expires_at,
                    })
                })
                .collect()
        })
    }

    async fn last_event_id(&self, run_id: &str, now: Millis) -> Result<u64, StoreError> {
        self.with(|c| {
            let last: Option<i64> = c
                .query_row(
                    "SELECT MAX(last_event_id) FROM events WHERE run_id = ?1 AND expires_at > ?2",
                    params![run_id, now],
                    |r| r.get(0),
                )
                .map_err(store_error)?;
            Ok(last.unwrap_or(0) as u64)
        })
    }

    async fn put_connection(&self, connection: &Connection) -> Result<(), StoreError> {
        let body = to_json(connection)?;
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO connections (id, connection, expires_at) VALUES (?1, ?2, ?3)",
                params![connection.connection_id, body, connection.expires_at],
            )
            .map_err(store_error)?;
            Ok(())
        })
    }

    async fn get_connection(
        &self,
        connection_id: &str,
        now: Millis,
    ) -> Result<Option<Connection>, StoreError> {
        self.with(|c| {
            let text: Option<String> = c
                .prepare_cached(
                    "SELECT connection FROM connections WHERE id = ?1 AND expires_at > ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![connection_id, now], |r| r.get(0))
                        .optional()
                })
                .map_err(store_error)?;
            text.map(|t| from_json(&t)).transpose()
        })
    }

    async fn delete_connection(&self, connection_id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction().map_err(store_error)?;
            tx.execute("DELETE FROM connections WHERE id = ?1", [connection_id])
                .map_err(store_error)?;
            tx.execute(
                "DELETE FROM subscriptions WHERE connection_id = ?1",
                [connection_id],
            )
            .map_err(store_error)?;
            tx.commit().map_err(store_error)
        })
    }

    async fn subscribe(
        &self,
        chat_id: &ChatId,
        connection_id: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction().map_err(store_error)?;
            tx.execute(
                "INSERT INTO subscriptions (chat_id, connection_id, subscribed_at, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (chat_id, connection_id) DO UPDATE SET subscribed_at = excluded.subscribed_at, expires_at = excluded.expires_at",
                params![chat_id.as_str(), connection_id, now, expires_at],
            )
            .map_err(store_error)?;
            // Keep the newest MAX subscriptions of the connection; ties broken by rowid (order of
            // subscribing), so the oldest goes first.
            tx.execute(
                "DELETE FROM subscriptions WHERE connection_id = ?1 AND rowid NOT IN (
                     SELECT rowid FROM subscriptions WHERE connection_id = ?1
                     ORDER BY subscribed_at DESC, rowid DESC LIMIT ?2)",
                params![connection_id, MAX_SUBSCRIPTIONS_PER_CONNECTION as i64],
            )
            .map_err(store_error)?;
            tx.commit().map_err(store_error)
        })
    }

    async fn unsubscribe(&self, chat_id: &ChatId, connection_id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM subscriptions WHERE chat_id = ?1 AND connection_id = ?2",
                params![chat_id.as_str(), connection_id],
            )
            .map_err(store_error)?;
            Ok(())
        })
    }

    async fn subscribers(&self, chat_id: &ChatId, now: Millis) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare_cached("SELECT connection_id FROM subscriptions WHERE chat_id = ?1 AND expires_at > ?2")
                .map_err(store_error)?;
            let ids = stmt
                .query_map(params![chat_id.as_str(), now], |r| r.get(0))
                .map_err(store_error)?
                .collect::<Result<_, _>>()
                .map_err(store_error)?;
            Ok(ids)
        })
    }
}
