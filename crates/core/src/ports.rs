//! The ports: small traits the engine is written against and the adapters implement.
//!
//! Adapters: `crates/embedded` (SQLite, in-process), `crates/aws` (DynamoDB, SQS, API Gateway),
//! `crates/models` (OpenAI-compatible and offline models), and in-memory ones in
//! [`crate::testkit`] for unit tests. Every adapter runs the conformance suites of
//! [`crate::testkit`], so what each method promises here is what every backend does.
//!
//! Times are epoch milliseconds. "Expired" means `expires_at <= now`: stores treat expired
//! items as gone even when the backend has not deleted them yet (DynamoDB's TTL is late).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::chunk::FinishReason;
use crate::domain::{
    Chat, ChatId, ChatPage, ChatSession, Connection, Millis, StreamEvent, TurnJob,
};
use crate::error::{ModelError, PostError, QueueError, StoreError};
use crate::history::{MessagePage, PageLimits};
use crate::message::UIMessage;

/// How many subscriptions one connection holds at most; subscribing to one more drops the oldest.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 10;

/// Why [`ChatStore::claim_with_message`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimWithMessageError {
    /// The session write failed (`Conflict`: the session changed since it was read); nothing
    /// was written.
    #[error("claiming the turn: {0}")]
    Session(StoreError),
    /// The message was refused (as by `append_message`) and the session write undone with
    /// it: nothing was written.
    #[error("storing the message: {0}")]
    Message(StoreError),
    /// The session was written (`claimed`, as stored) but the message was refused: the
    /// caller takes the claim back.
    #[error("storing the message of a claimed turn: {error}")]
    MessageAfterClaim {
        claimed: Box<ChatSession>,
        error: StoreError,
    },
    /// The turn's job could not be queued ([`TurnOutbox`]): nothing was written.
    #[error("queueing the turn: {0}")]
    Job(QueueError),
}

/// A send's claim, its new message and its turn's job in one write, where the store and the
/// queue share a writer: an outbox (the embedded backend keeps its queue in the store's file).
/// Without one, the engine queues the job after the claim, in a write of its own: one more
/// round trip to the writer between a send and its `ack`, and its first token.
#[async_trait]
pub trait TurnOutbox: Send + Sync {
    /// [`ChatStore::claim_with_message`], with `job` queued in the same write: all of it
    /// stands, or none of it.
    /// # Errors
    /// As `claim_with_message`, and [`ClaimWithMessageError::Job`] when the job could not be
    /// queued.
    async fn claim_with_message_and_job(
        &self,
        session: &ChatSession,
        expected_version: Option<u64>,
        message: &UIMessage,
        job: &TurnJob,
        now: Millis,
    ) -> Result<ChatSession, ClaimWithMessageError>;
}

/// Durable state: chats, messages, sessions, stream events, connections and subscriptions.
#[async_trait]
pub trait ChatStore: Send + Sync {
    /// Creates a chat.
    /// # Errors
    /// `Conflict` when a chat with this id exists (whoever owns it).
    async fn create_chat(&self, chat: &Chat) -> Result<(), StoreError>;

    /// The chat, or `None`.
    async fn get_chat(&self, chat_id: &ChatId) -> Result<Option<Chat>, StoreError>;

    /// One page of the owner's chats, most recently updated first. `cursor` is a value an
    /// earlier page returned as `next_cursor`.
    /// # Errors
    /// `BadCursor` when the cursor was not made by this store.
    async fn list_chats(
        &self,
        owner_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ChatPage, StoreError>;

    /// Sets the title and `updated_at`, and returns the updated chat.
    /// # Errors
    /// `NotFound` when the chat does not exist.
    async fn rename_chat(
        &self,
        chat_id: &ChatId,
        title: &str,
        now: Millis,
    ) -> Result<Chat, StoreError>;

    /// Sets the model the chat's turns use from now on, and returns the updated chat. Neither
    /// `updated_at` nor the title changes (the message sent with a new model moves
    /// `updated_at`).
    /// # Errors
    /// `NotFound` when the chat does not exist.
    async fn set_chat_model(&self, chat_id: &ChatId, model: &str) -> Result<Chat, StoreError>;

    /// Deletes the chat with its messages, session, subscriptions and the stream events of its
    /// current run. Deleting a missing chat succeeds.
    async fn delete_chat(&self, chat_id: &ChatId) -> Result<(), StoreError>;

    /// Appends a message at the end of the chat's history, sets the chat's `updated_at` to
    /// `now` and adds one to `message_count`. Exactly once per message id.
    /// # Errors
    /// `Conflict` when the chat already has a message with this id (nothing is written);
    /// `NotFound` when the chat does not exist; `TooLarge` when the backend cannot hold it.
    async fn append_message(
        &self,
        chat_id: &ChatId,
        message: &UIMessage,
        now: Millis,
    ) -> Result<(), StoreError>;

    /// The whole history, oldest first (no size limit: one item per message).
    async fn messages(&self, chat_id: &ChatId) -> Result<Vec<UIMessage>, StoreError>;

    /// One page of the history, newest page first: the newest messages before the cursor
    /// `before` (`None`: the chat's newest), oldest first within the page, at most
    /// `limits.messages` of them and at most `limits.bytes` of stored JSON (a single larger
    /// message still makes a page of one). `older_cursor` pages on towards the first message and
    /// is `None` on the page that holds it. A missing chat has an empty history. Build it with
    /// [`crate::history::PageReader`], so every store pages alike.
    /// # Errors
    /// `BadCursor` when `before` was not made by this method for this chat; `Conflict` when
    /// the cursor's message was deleted since (an earlier message was edited): the caller
    /// loads the newest page again.
    async fn message_page(
        &self,
        chat_id: &ChatId,
        before: Option<&str>,
        limits: PageLimits,
    ) -> Result<MessagePage, StoreError>;

    /// Deletes the message with this id and every later one (regenerate), returning how many
    /// were deleted. `message_count` drops accordingly.
    /// # Errors
    /// `NotFound` when the chat has no message with this id.
    async fn delete_messages_from(
        &self,
        chat_id: &ChatId,
        message_id: &str,
    ) -> Result<u64, StoreError>;

    /// The chat's session, whatever its status or expiry (the engine decides what expiry
    /// means for a session, so that it can replace it with a conditional write).
    async fn get_session(&self, chat_id: &ChatId) -> Result<Option<ChatSession>, StoreError>;

    /// Writes the session if the stored one is at `expected_version` (`None`: no session is
    /// stored), and returns it as stored, with `version` set to `expected_version + 1`
    /// (`1` for a new one). The `version` field of the argument is ignored.
    /// # Errors
    /// `Conflict` when the stored session is at another version; nothing is written.
    async fn put_session(
        &self,
        session: &ChatSession,
        expected_version: Option<u64>,
    ) -> Result<ChatSession, StoreError>;

    /// A send's claim and its new message: writes `session` as [`ChatStore::put_session`]
    /// does, then, only if that succeeded, appends `message` as
    /// [`ChatStore::append_message`] does. A store that can make the two one atomic write
    /// does (the embedded store: one transaction on its writer), so a refused message leaves
    /// the session as it was; the default is the two writes in turn.
    /// # Errors
    /// [`ClaimWithMessageError`]: which write failed, and whether the claim stands.
    async fn claim_with_message(
        &self,
        session: &ChatSession,
        expected_version: Option<u64>,
        message: &UIMessage,
        now: Millis,
    ) -> Result<ChatSession, ClaimWithMessageError> {
        let claimed = self
            .put_session(session, expected_version)
            .await
            .map_err(ClaimWithMessageError::Session)?;
        match self.append_message(&session.chat_id, message, now).await {
            Ok(()) => Ok(claimed),
            Err(error) => Err(ClaimWithMessageError::MessageAfterClaim {
                claimed: Box::new(claimed),
                error,
            }),
        }
    }

    /// Persists a stream event, exactly once per `(run_id, first_event_id)`.
    /// # Errors
    /// `Conflict` when an event with this first id exists for the run (another worker got
    /// there first); nothing is written.
    async fn append_event(&self, event: &StreamEvent) -> Result<(), StoreError>;

    /// The run's unexpired events holding any chunk with an id above `after_event_id`, in
    /// order. The first may start at or before `after_event_id` (callers drop what they have).
    async fn events_after(
        &self,
        run_id: &str,
        after_event_id: u64,
        now: Millis,
    ) -> Result<Vec<StreamEvent>, StoreError>;

    /// The id of the run's last persisted chunk, `0` when it has none.
    async fn last_event_id(&self, run_id: &str, now: Millis) -> Result<u64, StoreError>;

    /// Records an open connection (replacing one with the same id).
    async fn put_connection(&self, connection: &Connection) -> Result<(), StoreError>;

    /// The connection, or `None` when unknown or expired.
    async fn get_connection(
        &self,
        connection_id: &str,
        now: Millis,
    ) -> Result<Option<Connection>, StoreError>;

    /// Removes the connection and all its subscriptions. Removing an unknown one succeeds.
    async fn delete_connection(&self, connection_id: &str) -> Result<(), StoreError>;

    /// Subscribes the connection to the chat's frames until `expires_at`, refreshing an existing
    /// subscription. A connection holds at most [`MAX_SUBSCRIPTIONS_PER_CONNECTION`]: one more
    /// drops its least recently subscribed one.
    async fn subscribe(
        &self,
        chat_id: &ChatId,
        connection_id: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<(), StoreError>;

    /// Ends one subscription; ending a missing one succeeds.
    async fn unsubscribe(&self, chat_id: &ChatId, connection_id: &str) -> Result<(), StoreError>;

    /// The ids of the connections subscribed to the chat and not expired.
    async fn subscribers(&self, chat_id: &ChatId, now: Millis) -> Result<Vec<String>, StoreError>;

    /// The session and the subscribers together: what run-turn reads between frames. Backends
    /// that can answer both with one request (DynamoDB: one Query) override this, and one that
    /// keeps them in memory hands out the same [`TurnSignals`] until either changes.
    async fn session_and_subscribers(
        &self,
        chat_id: &ChatId,
        now: Millis,
    ) -> Result<Arc<TurnSignals>, StoreError> {
        Ok(Arc::new(TurnSignals {
            session: self.get_session(chat_id).await?,
            subscribers: self.subscribers(chat_id, now).await?,
        }))
    }
}

/// A chat's session and the connections subscribed to it: what run-turn reads after every
/// frame ([`ChatStore::session_and_subscribers`]). Shared (`Arc`) because it is read far more
/// often than it changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TurnSignals {
    pub session: Option<ChatSession>,
    /// The live (unexpired) subscriptions' connection ids.
    pub subscribers: Vec<String>,
}

/// Whether a limited action may go ahead ([`UsageCounters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted (or the slot is held): go ahead.
    Admitted,
    /// Refused, and nothing was counted. `retry_after_ms` is when a retry is admitted at the
    /// latest: for a window, when it ends (exact); for slots, when the oldest held one expires
    /// (an upper bound, since a slot is usually released long before).
    Refused { retry_after_ms: u64 },
}

/// Counters behind the per-user and per-address limits, shared by every process of a
/// deployment (on AWS: items of the table, so every Lambda sees the same counts).
///
/// `key` names what is counted (a user's messages, a user's turns, an address's new guests);
/// windows and slots of the same key are independent. Every method is atomic on its key: two
/// callers at once can never both take the last unit of a limit. `limit` is at least 1.
#[async_trait]
pub trait UsageCounters: Send + Sync {
    /// Counts one action in `key`'s current window, unless `limit` actions were already counted
    /// in it. A window opens at the first action after the previous one ended and lasts
    /// `window` (a fixed window anchored at its first action, not at the clock's minute).
    /// # Returns
    /// `Admitted` (counted), or `Refused` with the time until the window ends (nothing counted).
    async fn count_in_window(
        &self,
        key: &str,
        limit: u32,
        window: std::time::Duration,
        now: Millis,
    ) -> Result<Admission, StoreError>;

    /// Takes one of `key`'s `limit` slots for `slot_id` until `expires_at` (a holder that
    /// crashes loses it then). Slots past their expiry are free. Claiming a slot `slot_id`
    /// already holds is admitted and moves its expiry to `expires_at`.
    /// # Returns
    /// `Admitted`, or `Refused` with the time until the oldest held slot expires.
    async fn claim_slot(
        &self,
        key: &str,
        slot_id: &str,
        limit: u32,
        now: Millis,
        expires_at: Millis,
    ) -> Result<Admission, StoreError>;

    /// Frees `slot_id`'s slot. Releasing a slot that is not held (never claimed, released,
    /// expired) succeeds, so every way a turn ends may release it.
    async fn release_slot(&self, key: &str, slot_id: &str) -> Result<(), StoreError>;

    /// [`UsageCounters::claim_slot`] for `slot`, then, once it is admitted,
    /// [`UsageCounters::count_in_window`] for `window`; a window that refuses (or fails) gives
    /// the slot back. So a refused action holds no slot and counts nothing. The default makes
    /// the calls one after another; a backend that can do it in one round trip overrides it
    /// (it is on the way to every turn's first token).
    async fn claim_slot_and_count(
        &self,
        slot: SlotClaim<'_>,
        window: WindowCount<'_>,
        now: Millis,
    ) -> Result<SlotAndCount, StoreError> {
        if let Admission::Refused { retry_after_ms } = self
            .claim_slot(slot.key, slot.slot_id, slot.limit, now, slot.expires_at)
            .await?
        {
            return Ok(SlotAndCount::SlotRefused { retry_after_ms });
        }
        let counted = self
            .count_in_window(window.key, window.limit, window.window, now)
            .await;
        match counted {
            Ok(Admission::Admitted) => Ok(SlotAndCount::Admitted),
            other => {
                if let Err(error) = self.release_slot(slot.key, slot.slot_id).await {
                    tracing::warn!(key = slot.key, slot_id = slot.slot_id, %error,
                        "could not give back a slot; it frees itself at its expiry");
                }
                match other? {
                    Admission::Refused { retry_after_ms } => {
                        Ok(SlotAndCount::WindowRefused { retry_after_ms })
                    }
                    Admission::Admitted => Ok(SlotAndCount::Admitted),
                }
            }
        }
    }
}

/// A slot to take ([`UsageCounters::claim_slot_and_count`]).
#[derive(Debug, Clone, Copy)]
pub struct SlotClaim<'a> {
    pub key: &'a str,
    pub slot_id: &'a str,
    pub limit: u32,
    pub expires_at: Millis,
}

/// An action to count in a window ([`UsageCounters::claim_slot_and_count`]).
#[derive(Debug, Clone, Copy)]
pub struct WindowCount<'a> {
    pub key: &'a str,
    pub limit: u32,
    pub window: std::time::Duration,
}

/// What [`UsageCounters::claim_slot_and_count`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotAndCount {
    /// The slot is held and the action counted.
    Admitted,
    /// Every slot is held (nothing counted), as [`UsageCounters::claim_slot`] refuses.
    SlotRefused { retry_after_ms: u64 },
    /// The window is full (the slot given back), as [`UsageCounters::count_in_window`] refuses.
    WindowRefused { retry_after_ms: u64 },
}

/// The producer side of the durable turn queue (SQS FIFO on AWS).
#[async_trait]
pub trait TurnQueue: Send + Sync {
    /// Enqueues the job in the FIFO group `job.group_id()`. A second job with the same
    /// `job.deduplication_id()` within five minutes is accepted and dropped.
    async fn enqueue(&self, job: &TurnJob) -> Result<(), QueueError>;
}

/// Which queue a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueName {
    Turns,
    /// Where a job lands after failing `max_receives` times.
    DeadLetters,
}

/// A received queue message, as SQS hands it to Lambda.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedTurn {
    pub message_id: String,
    pub receipt_handle: String,
    /// The raw body (a `TurnJob` as JSON, unless something else put it there).
    pub body: String,
    pub group_id: String,
    pub deduplication_id: String,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
    pub sent_at: Millis,
}

/// The consumer side of the queue, used where chatrun itself plays SQS's event source mapping
/// (the local gateway); on AWS, Lambda does this.
#[async_trait]
pub trait TurnQueueConsumer: Send + Sync {
    /// Up to `max` visible messages, oldest first, waiting up to `wait` for the first. FIFO:
    /// while a message of a group is in flight, no later message of that group is returned,
    /// and a batch holds a group's messages in order. A returned message stays invisible for the
    /// visibility timeout; one received more than the queue's max-receives moves to the dead
    /// letter queue instead of being returned.
    async fn receive(
        &self,
        queue: QueueName,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedTurn>, QueueError>;

    /// Deletes a received message. An outdated receipt handle is ignored.
    async fn delete(&self, queue: QueueName, receipt_handle: &str) -> Result<(), QueueError>;

    /// The ARN that `SqsMessage::event_source_arn` carries for messages of this queue.
    fn source_arn(&self, queue: QueueName) -> String;
}

/// The visibility of a received turn job (SQS `ChangeMessageVisibility`): run-turn holds each
/// job it works on with a short, renewed visibility (a heartbeat) instead of relying on the
/// queue's long default, so a crashed worker's job comes back within a minute; and it puts a
/// job that failed for a passing reason back after a short backoff.
#[async_trait]
pub trait JobVisibility: Send + Sync {
    /// Makes the received message invisible for `timeout` from now (zero: visible at once).
    /// # Errors
    /// `Backend` when the receipt handle is outdated (the message was deleted or received
    /// again); `Transient` when the queue could not be reached.
    async fn set_visibility(
        &self,
        queue: QueueName,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError>;

    /// Deletes a job whose turn is done, at once rather than when the whole batch returns: a
    /// FIFO group hands out its chat's next job only once this one is gone, so waiting for the
    /// batch's longest reply would hold every other chat of the batch back. Deleting a job
    /// that is already gone succeeds.
    async fn acknowledge(&self, queue: QueueName, receipt_handle: &str) -> Result<(), QueueError>;
}

/// Posts frames to WebSocket connections (API Gateway's `@connections` API).
#[async_trait]
pub trait Connections: Send + Sync {
    /// Sends one text frame.
    /// # Errors
    /// `Gone` when the connection is closed for good (the caller drops it and does not retry);
    /// `Transient` when throttled or unreachable after retries.
    async fn post(&self, connection_id: &str, frame: &str) -> Result<(), PostError>;

    /// Closes the connection. Closing an unknown one answers `Gone`.
    async fn close(&self, connection_id: &str) -> Result<(), PostError>;
}

/// Token usage of one reply, stored in the assistant message's metadata (`usage`), in the
/// shape of the AI SDK's `LanguageModelUsage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_input_tokens: Option<u64>,
}

/// What a model streams.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    TextDelta(String),
    ReasoningDelta(String),
    /// The last event of a successful stream.
    Finish {
        reason: FinishReason,
        usage: Option<Usage>,
    },
}

/// A model's reply as it streams. Dropping it cancels the upstream request.
pub type ModelStream = BoxStream<'static, Result<ModelEvent, ModelError>>;

/// One reply to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRequest {
    /// A model id from [`LanguageModel::models`].
    pub model: String,
    /// The history, oldest first, ending with the user's message.
    pub messages: Vec<UIMessage>,
}

/// A model a user can pick (`GET /api/models`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    pub label: String,
    pub offline: bool,
}

/// A chat model that streams.
#[async_trait]
pub trait LanguageModel: Send + Sync {
    /// Starts a reply.
    /// # Errors
    /// `Unavailable` or `Rejected` when nothing could be streamed; failures after the first
    /// event arrive in the stream as `Err(ModelError::Stream)`, which ends it.
    async fn stream(&self, request: ModelRequest) -> Result<ModelStream, ModelError>;

    /// The models this provider offers.
    fn models(&self) -> Vec<ModelInfo>;

    /// The model used when a chat names none (or one this provider does not offer).
    fn default_model(&self) -> String;
}

/// The time, in epoch milliseconds.
pub trait Clock: Send + Sync {
    fn now(&self) -> Millis;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        chrono::Utc::now().timestamp_millis()
    }
}

/// Makes ids for runs and messages.
pub trait IdGenerator: Send + Sync {
    fn new_id(&self) -> String;
}

/// Time-ordered UUIDs (v7): ids made close together sort close together, so the SQLite store's
/// indexes (stream events by run, messages by id) take new rows near each other instead of
/// all over the tree, and the pages a busy server writes stay few and cached. They carry their
/// creation time to the millisecond, which every item stores anyway.
#[derive(Debug, Clone, Copy, Default)]
pub struct UuidIds;

impl IdGenerator for UuidIds {
    fn new_id(&self) -> String {
        uuid::Uuid::now_v7().to_string()
    }
}
