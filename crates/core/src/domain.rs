//! The domain: chats, their sessions, stream events, connections and turn jobs.
//!
//! Times are epoch milliseconds (`i64`) throughout; adapters convert where a backend wants
//! seconds (DynamoDB's TTL attribute `expiresAt`).

use serde::{Deserialize, Serialize};

use crate::chunk::UIMessageChunk;
use crate::error::ChatError;

/// Epoch milliseconds.
pub type Millis = i64;

/// A chat id made by the client: 1-64 characters of `[A-Za-z0-9_-]` (a UUID fits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChatId(String);

impl ChatId {
    /// # Errors
    /// `BadRequest` when the id is empty, longer than 64 characters or has other characters.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ChatError> {
        let raw = raw.into();
        if is_valid_id(&raw) {
            Ok(ChatId(raw))
        } else {
            Err(ChatError::BadRequest(
                "chatId must be 1-64 characters of A-Z, a-z, 0-9, _ and -".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Ids made by clients (chat ids, message ids) share one shape so keys stay safe everywhere.
pub fn is_valid_id(raw: &str) -> bool {
    (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl TryFrom<String> for ChatId {
    type Error = ChatError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        ChatId::parse(raw)
    }
}

impl From<ChatId> for String {
    fn from(id: ChatId) -> Self {
        id.0
    }
}

impl std::fmt::Display for ChatId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The conversation. Lives until deleted; its messages are stored one item each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chat {
    pub id: ChatId,
    pub owner_id: String,
    pub title: String,
    pub model: String,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub message_count: u64,
}

/// What the chat list shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatSummary {
    pub id: ChatId,
    pub title: String,
    pub model: String,
    pub updated_at: Millis,
}

impl From<&Chat> for ChatSummary {
    fn from(c: &Chat) -> Self {
        ChatSummary {
            id: c.id.clone(),
            title: c.title.clone(),
            model: c.model.clone(),
            updated_at: c.updated_at,
        }
    }
}

/// One page of a user's chats, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatPage {
    pub chats: Vec<ChatSummary>,
    /// Opaque; pass it back to get the next page. `None` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Active,
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndedReason {
    MaxTurns,
    Idle,
    Failed,
}

/// The live run handling a chat. One per chat; replaced (new `run_id`) when it has ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatSession {
    pub chat_id: ChatId,
    pub run_id: String,
    pub access_token: String,
    /// Last event id of the last *completed* turn.
    pub last_event_id: u64,
    pub turns: u32,
    pub status: SessionStatus,
    pub ended_reason: Option<EndedReason>,
    /// True from onTurnStart to onTurnComplete.
    pub streaming: bool,
    /// First event id of the running turn (`last_event_id + 1` at onTurnStart).
    pub turn_start_event_id: u64,
    /// The running (or last) turn's assistant message id.
    pub assistant_message_id: Option<String>,
    /// The running turn's user message id.
    pub user_message_id: Option<String>,
    /// The model the running (or last) turn uses, chosen with its message and fixed when the
    /// turn is claimed, so run-turn (also on a redelivery) answers with it whatever the chat's
    /// model is by then. `None` in sessions stored before it existed: the chat's model applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_model: Option<String>,
    pub stop_requested: bool,
    /// With a stop: the last event the stopping client had shown. The stored reply is cut back
    /// to it, so it is exactly the text that was on screen when Stop was pressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after_event_id: Option<u64>,
    /// When the running turn started (to recognise a turn whose worker vanished).
    pub turn_started_at: Option<Millis>,
    /// How many times run-turn has claimed the running turn.
    pub attempts: u32,
    pub expires_at: Millis,
    /// Optimistic-concurrency version, managed by the store: every successful write adds one.
    pub version: u64,
}

impl ChatSession {
    /// Whether a new message must start a fresh session (new run id, new access token).
    pub fn is_over(&self, now: Millis) -> bool {
        self.status == SessionStatus::Ended || self.expires_at <= now
    }
}

/// A frame's worth of chunks of one run, persisted before it is posted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamEvent {
    pub run_id: String,
    /// Id of the first chunk; the chunks carry ids `first_event_id..first_event_id + len`.
    pub first_event_id: u64,
    pub chunks: Vec<UIMessageChunk>,
    pub expires_at: Millis,
}

impl StreamEvent {
    /// Id of the last chunk of this event.
    pub fn last_event_id(&self) -> u64 {
        self.first_event_id + self.chunks.len() as u64 - 1
    }
}

/// What a connection's token allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Grant {
    /// A user token: everything on the user's own chats.
    User,
    /// A run-scoped access token: resume, stop, unsubscribe and ping on one chat.
    #[serde(rename_all = "camelCase")]
    Run { chat_id: ChatId, run_id: String },
}

/// An open WebSocket connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    pub connection_id: String,
    pub owner_id: String,
    pub grant: Grant,
    pub connected_at: Millis,
    pub expires_at: Millis,
}

/// Why a turn runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    SubmitMessage,
    RegenerateMessage,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::SubmitMessage => "submit-message",
            Trigger::RegenerateMessage => "regenerate-message",
        }
    }
}

/// The job on the turn queue. It carries ids only: the message is already stored, and an SQS
/// message must stay far below 256 KB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnJob {
    pub chat_id: ChatId,
    pub run_id: String,
    pub user_message_id: String,
    pub assistant_message_id: String,
    pub trigger: Trigger,
}

impl TurnJob {
    /// The FIFO message group: one per chat, so a chat's turns run in order.
    pub fn group_id(&self) -> &str {
        self.chat_id.as_str()
    }

    /// The FIFO deduplication id: `runId:assistantMessageId`. DESIGN §5 names
    /// `runId:userMessageId:trigger`, which collides when the same user message is regenerated
    /// twice within SQS's 5-minute window (the second regeneration would be dropped) and can
    /// exceed SQS's 128-character limit with client-made message ids. The assistant message id
    /// is chosen by the server once per turn (a UUID), so this id names exactly one turn.
    pub fn deduplication_id(&self) -> String {
        format!("{}:{}", self.run_id, self.assistant_message_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_ids_are_validated() {
        assert!(ChatId::parse("0b7c6e1e-9d8f-4f0e-8d1c-2a7f3e6b5c4d").is_ok());
        assert!(ChatId::parse("a_B-9").is_ok());
        for bad in ["", "has space", "slash/", "x".repeat(65).as_str(), "é"] {
            assert!(ChatId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<ChatId>("\"a/b\"").is_err());
    }

    #[test]
    fn turn_jobs_stay_tiny() {
        let job = TurnJob {
            chat_id: ChatId::parse("c".repeat(64)).unwrap(),
            run_id: uuid::Uuid::new_v4().to_string(),
            user_message_id: "u".repeat(64),
            assistant_message_id: uuid::Uuid::new_v4().to_string(),
            trigger: Trigger::RegenerateMessage,
        };
        assert!(serde_json::to_vec(&job).unwrap().len() < 1024);
        assert!(job.deduplication_id().len() <= 128);
    }
}
