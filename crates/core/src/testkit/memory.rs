//! In-memory adapters for unit tests. They keep the ports' contracts (conflicts, versions,
//! expiry, subscription limits) so engine tests mean something, but nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::auth::TokenIssuer;
use crate::config::Settings;
use crate::domain::{
    Chat, ChatId, ChatPage, ChatSession, ChatSummary, Connection, Millis, StreamEvent, TurnJob,
};
use crate::engine::Services;
use crate::error::{PostError, QueueError, StoreError};
use crate::history::{MessagePage, PageLimits, PageReader};
use crate::hooks::NoHooks;
use crate::message::UIMessage;
use crate::ports::{
    Admission, ChatStore, Clock, Connections, IdGenerator, MAX_SUBSCRIPTIONS_PER_CONNECTION,
    TurnQueue, UsageCounters,
};

#[derive(Default)]
struct State {
    chats: HashMap<String, Chat>,
    messages: HashMap<String, Vec<UIMessage>>,
    sessions: HashMap<String, ChatSession>,
    events: HashMap<String, BTreeMap<u64, StreamEvent>>,
    connections: HashMap<String, Connection>,
    /// connection id -> (chat id, subscribed at, expires at, order), in subscription order.
    subscriptions: HashMap<String, Vec<(ChatId, Millis, Millis, u64)>>,
    order: u64,
    /// Usage windows: key -> (window start, window end, actions counted).
    windows: HashMap<String, (Millis, Millis, u32)>,
    /// Usage slots: key -> slot id -> expiry.
    slots: HashMap<String, HashMap<String, Millis>>,
}

/// A `ChatStore` in memory.
#[derive(Default)]
pub struct MemoryChatStore {
    state: Mutex<State>,
}

impl MemoryChatStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("memory store lock"))
    }
}

#[async_trait]
impl ChatStore for MemoryChatStore {
    async fn create_chat(&self, chat: &Chat) -> Result<(), StoreError> {
        self.with(|s| {
            if s.chats.contains_key(chat.id.as_str()) {
                return Err(StoreError::Conflict(format!("chat {} exists", chat.id)));
            }
            let mut chat = chat.clone();
            chat.message_count = 0;
            s.chats.insert(chat.id.to_string(), chat);
            Ok(())
        })
    }

    async fn get_chat(&self, chat_id: &ChatId) -> Result<Option<Chat>, StoreError> {
        Ok(self.with(|s| s.chats.get(chat_id.as_str()).cloned()))
    }

    async fn list_chats(
        &self,
        owner_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ChatPage, StoreError> {
        let after = match cursor {
            None => None,
            Some(c) => {
                let (at, id) = c.split_once('.').ok_or(StoreError::BadCursor)?;
                Some((
                    at.parse::<Millis>().map_err(|_| StoreError::BadCursor)?,
                    id.to_owned(),
                ))
            }
        };
        self.with(|s| {
            let mut chats: Vec<&Chat> = s
                .chats
                .values()
                .filter(|c| c.owner_id == owner_id)
                .collect();
            chats.sort_by(|a, b| (b.updated_at, b.id.as_str()).cmp(&(a.updated_at, a.id.as_str())));
            let chats: Vec<&Chat> = chats
                .into_iter()
                .filter(|c| match &after {
                    None => true,
                    Some((at, id)) => (c.updated_at, c.id.as_str()) < (*at, id.as_str()),
                })
                .collect();
            let limit = limit.max(1);
            let next_cursor = (chats.len() > limit).then(|| {
                let last = chats[limit - 1];
                format!("{}.{}", last.updated_at, last.id)
            });
            Ok(ChatPage {
                chats: chats
                    .into_iter()
                    .take(limit)
                    .map(ChatSummary::from)
                    .collect(),
                next_cursor,
            })
        })
    }

    async fn rename_chat(
        &self,
        chat_id: &ChatId,
        title: &str,
        now: Millis,
    ) -> Result<Chat, StoreError> {
        self.with(|s| {
            let chat = s
                .chats
                .get_mut(chat_id.as_str())
                .ok_or_else(|| StoreError::NotFound(format!("chat {chat_id}")))?;
            chat.title = title.into();
            chat.updated_at = now;
            Ok(chat.clone())
        })
    }

    async fn set_chat_model(&self, chat_id: &ChatId, model: &str) -> Result<Chat, StoreError> {
        self.with(|s| {
            let chat = s
                .chats
                .get_mut(chat_id.as_str())
                .ok_or_else(|| StoreError::NotFound(format!("chat {chat_id}")))?;
            chat.model = model.into();
            Ok(chat.clone())
        })
    }

    async fn delete_chat(&self, chat_id: &ChatId) -> Result<(), StoreError> {
        self.with(|s| {
            s.chats.remove(chat_id.as_str());
            s.messages.remove(chat_id.as_str());
            if let Some(session) = s.sessions.remove(chat_id.as_str()) {
                s.events.remove(&session.run_id);
            }
            for subs in s.subscriptions.values_mut() {
                subs.retain(|(c, ..)| c != chat_id);
            }
            Ok(())
        })
    }

    async fn append_message(
        &self,
        chat_id: &ChatId,
        message: &UIMessage,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.with(|s| {
            let chat = s
                .chats
                .get_mut(chat_id.as_str())
                .ok_or_else(|| StoreError::NotFound(format!("chat {chat_id}")))?;
            let messages = s.messages.entry(chat_id.to_string()).or_default();
            if messages.iter().any(|m| m.id == message.id) {
                return Err(StoreError::Conflict(format!(
                    "message {} exists",
                    message.id
                )));
            }
            messages.push(message.clone());
            chat.updated_at = now;
            chat.message_count += 1;
            Ok(())
        })
    }

    async fn messages(&self, chat_id: &ChatId) -> Result<Vec<UIMessage>, StoreError> {
        Ok(self.with(|s| {
            s.messages
                .get(chat_id.as_str())
                .cloned()
                .unwrap_or_default()
        }))
    }

    /// A message's `seq` is its index: appends push and deletes truncate, as the other stores
    /// number their rows.
    async fn message_page(
        &self,
        chat_id: &ChatId,
        before: Option<&str>,
        limits: PageLimits,
    ) -> Result<MessagePage, StoreError> {
        let mut reader = PageReader::new(chat_id, before, limits)?;
        let messages = self.messages(chat_id).await?;
        let Some(newest) = messages.len().checked_sub(1) else {
            return reader.finish();
        };
        let start = reader
            .start_seq()
            .map_or(newest, |seq| (seq as usize).min(newest));
        for (seq, message) in messages[..=start].iter().enumerate().rev() {
            let json =
                serde_json::to_string(message).map_err(|e| StoreError::Backend(e.to_string()))?;
            if !reader.push(seq as u64, &message.id, json)? {
                break;
            }
        }
        reader.finish()
    }

    async fn delete_messages_from(
        &self,
        chat_id: &ChatId,
        message_id: &str,
    ) -> Result<u64, StoreError> {
        self.with(|s| {
            let messages = s.messages.entry(chat_id.to_string()).or_default();
            let index = messages
                .iter()
                .position(|m| m.id == message_id)
                .ok_or_else(|| StoreError::NotFound(format!("message {message_id}")))?;
            let deleted = (messages.len() - index) as u64;
            messages.truncate(index);
            if let Some(chat) = s.chats.get_mut(chat_id.as_str()) {
                chat.message_count = chat.message_count.saturating_sub(deleted);
            }
            Ok(deleted)
        })
    }

    async fn get_session(&self, chat_id: &ChatId) -> Result<Option<ChatSession>, StoreError> {
        Ok(self.with(|s| s.sessions.get(chat_id.as_str()).cloned()))
    }

    async fn put_session(
        &self,
        session: &ChatSession,
        expected_version: Option<u64>,
    ) -> Result<ChatSession, StoreError> {
        self.with(|s| {
            let current = s.sessions.get(session.chat_id.as_str()).map(|c| c.version);
            if current != expected_version {
                return Err(StoreError::Conflict(format!(
                    "session of {} changed",
                    session.chat_id
                )));
            }
            let mut stored = session.clone();
            stored.version = expected_version.map_or(1, |v| v + 1);
            s.sessions
                .insert(session.chat_id.to_string(), stored.clone());
            Ok(stored)
        })
    }

    async fn append_event(&self, event: &StreamEvent) -> Result<(), StoreError> {
        self.with(|s| {
            let run = s.events.entry(event.run_id.clone()).or_default();
            if run.contains_key(&event.first_event_id) {
                return Err(StoreError::Conflict(format!(
                    "event {} exists",
                    event.first_event_id
                )));
            }
            run.insert(event.first_event_id, event.clone());
            Ok(())
        })
    }

    async fn events_after(
        &self,
        run_id: &str,
        after_event_id: u64,
        now: Millis,
    ) -> Result<Vec<StreamEvent>, StoreError> {
        Ok(self.with(|s| {
            s.events
                .get(run_id)
                .map(|run| {
                    run.values()
                        .filter(|e| e.last_event_id() > after_event_id && e.expires_at > now)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        }))
    }

    async fn last_event_id(&self, run_id: &str, now: Millis) -> Result<u64, StoreError> {
        Ok(self.with(|s| {
            s.events
                .get(run_id)
                .and_then(|run| {
                    run.values()
                        .filter(|e| e.expires_at > now)
                        .map(StreamEvent::last_event_id)
                        .max()
                })
                .unwrap_or(0)
        }))
    }

    async fn put_connection(&self, connection: &Connection) -> Result<(), StoreError> {
        self.with(|s| {
            s.connections
                .insert(connection.connection_id.clone(), connection.clone())
        });
        Ok(())
    }

    async fn get_connection(
        &self,
        connection_id: &str,
        now: Millis,
    ) -> Result<Option<Connection>, StoreError> {
        Ok(self.with(|s| {
            s.connections
                .get(connection_id)
                .filter(|c| c.expires_at > now)
                .cloned()
        }))
    }

    async fn delete_connection(&self, connection_id: &str) -> Result<(), StoreError> {
        self.with(|s| {
            s.connections.remove(connection_id);
            s.subscriptions.remove(connection_id);
        });
        Ok(())
    }

    async fn subscribe(
        &self,
        chat_id: &ChatId,
        connection_id: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        self.with(|s| {
            s.order += 1;
            let order = s.order;
            let subs = s.subscriptions.entry(connection_id.to_owned()).or_default();
            subs.retain(|(c, ..)| c != chat_id);
            subs.push((chat_id.clone(), now, expires_at, order));
            while subs.len() > MAX_SUBSCRIPTIONS_PER_CONNECTION {
                subs.remove(0);
            }
        });
        Ok(())
    }

    async fn unsubscribe(&self, chat_id: &ChatId, connection_id: &str) -> Result<(), StoreError> {
        self.with(|s| {
            if let Some(subs) = s.subscriptions.get_mut(connection_id) {
                subs.retain(|(c, ..)| c != chat_id);
            }
        });
        Ok(())
    }

    async fn subscribers(&self, chat_id: &ChatId, now: Millis) -> Result<Vec<String>, StoreError> {
        Ok(self.with(|s| {
            s.subscriptions
                .iter()
                .filter(|(_, subs)| subs.iter().any(|(c, _, exp, _)| c == chat_id && *exp > now))
                .map(|(id, _)| id.clone())
                .collect()
        }))
    }
}

/// A `TurnQueue` that records what was enqueued (engine tests deliver jobs themselves).
#[derive(Default)]
pub struct RecordingTurnQueue {
    pub jobs: Mutex<Vec<TurnJob>>,
    /// When set, `enqueue` fails with this error.
    pub fail_with: Mutex<Option<QueueError>>,
}

#[async_trait]
impl TurnQueue for RecordingTurnQueue {
    async fn enqueue(&self, job: &TurnJob) -> Result<(), QueueError> {
        if let Some(e) = self.fail_with.lock().expect("queue lock").clone() {
            return Err(e);
        }
        self.jobs.lock().expect("queue lock").push(job.clone());
        Ok(())
    }
}

/// `JobVisibility` that records every change: (queue, receipt handle, timeout).
#[derive(Default)]
pub struct RecordingVisibility {
    pub changes: Mutex<Vec<(crate::ports::QueueName, String, std::time::Duration)>>,
    /// Jobs deleted as their turn finished: (queue, receipt handle).
    pub acknowledged: Mutex<Vec<(crate::ports::QueueName, String)>>,
    /// How long each visibility change takes (SQS is a network round trip away).
    pub latency: Mutex<std::time::Duration>,
}

#[async_trait]
impl crate::ports::JobVisibility for RecordingVisibility {
    async fn set_visibility(
        &self,
        queue: crate::ports::QueueName,
        receipt_handle: &str,
        timeout: std::time::Duration,
    ) -> Result<(), QueueError> {
        let latency = *self.latency.lock().expect("visibility lock");
        tokio::time::sleep(latency).await;
        self.changes.lock().expect("visibility lock").push((
            queue,
            receipt_handle.to_owned(),
            timeout,
        ));
        Ok(())
    }

    async fn acknowledge(
        &self,
        queue: crate::ports::QueueName,
        receipt_handle: &str,
    ) -> Result<(), QueueError> {
        self.acknowledged
            .lock()
            .expect("visibility lock")
            .push((queue, receipt_handle.to_owned()));
        Ok(())
    }
}

/// `Connections` that records every frame per connection.
#[derive(Default)]
pub struct RecordingConnections {
    pub frames: Mutex<HashMap<String, Vec<String>>>,
    /// When each of `frames` was posted, on tokio's clock (a paused-time test reads the frame
    /// cadence from it).
    pub posted_at: Mutex<HashMap<String, Vec<tokio::time::Instant>>>,
    gone: Mutex<Vec<String>>,
}

impl RecordingConnections {
    /// Later posts to this connection answer `Gone`.
    pub fn mark_gone(&self, connection_id: &str) {
        self.gone
            .lock()
            .expect("gone lock")
            .push(connection_id.into());
    }

    /// The frames posted to a connection, parsed.
    pub fn frames_of(&self, connection_id: &str) -> Vec<serde_json::Value> {
        self.frames
            .lock()
            .expect("frames lock")
            .get(connection_id)
            .map(|f| {
                f.iter()
                    .map(|t| serde_json::from_str(t).expect("frames are JSON"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[async_trait]
impl Connections for RecordingConnections {
    async fn post(&self, connection_id: &str, frame: &str) -> Result<(), PostError> {
        if self
            .gone
            .lock()
            .expect("gone lock")
            .iter()
            .any(|g| g == connection_id)
        {
            return Err(PostError::Gone);
        }
        self.frames
            .lock()
            .expect("frames lock")
            .entry(connection_id.into())
            .or_default()
            .push(frame.into());
        self.posted_at
            .lock()
            .expect("frames lock")
            .entry(connection_id.into())
            .or_default()
            .push(tokio::time::Instant::now());
        Ok(())
    }

    async fn close(&self, connection_id: &str) -> Result<(), PostError> {
        self.mark_gone(connection_id);
        Ok(())
    }
}

/// A clock tests move by hand.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now: Millis) -> Self {
        ManualClock(AtomicI64::new(now))
    }

    pub fn advance(&self, millis: Millis) {
        self.0.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl UsageCounters for MemoryChatStore {
    async fn count_in_window(
        &self,
        key: &str,
        limit: u32,
        window: std::time::Duration,
        now: Millis,
    ) -> Result<Admission, StoreError> {
        self.with(|s| {
            let entry = s.windows.entry(key.to_owned()).or_insert((now, now, 0));
            if entry.1 <= now {
                *entry = (now, now + window.as_millis() as Millis, 0);
            }
            if entry.2 >= limit {
                return Ok(Admission::Refused {
                    retry_after_ms: (entry.1 - now) as u64,
                });
            }
            entry.2 += 1;
            Ok(Admission::Admitted)
        })
    }

    async fn claim_slot(
        &self,
        key: &str,
        slot_id: &str,
        limit: u32,
        now: Millis,
        expires_at: Millis,
    ) -> Result<Admission, StoreError> {
        self.with(|s| {
            let slots = s.slots.entry(key.to_owned()).or_default();
            slots.retain(|_, expiry| *expiry > now);
            if !slots.contains_key(slot_id) && slots.len() >= limit as usize {
                let oldest = slots.values().min().copied().unwrap_or(now);
                return Ok(Admission::Refused {
                    retry_after_ms: (oldest - now).max(0) as u64,
                });
            }
            slots.insert(slot_id.to_owned(), expires_at);
            Ok(Admission::Admitted)
        })
    }

    async fn release_slot(&self, key: &str, slot_id: &str) -> Result<(), StoreError> {
        self.with(|s| {
            if let Some(slots) = s.slots.get_mut(key) {
                slots.remove(slot_id);
            }
            Ok(())
        })
    }
}

/// Ids `id-1`, `id-2`, ...
#[derive(Debug, Default)]
pub struct SequentialIds(AtomicU64);

impl IdGenerator for SequentialIds {
    fn new_id(&self) -> String {
        format!("id-{}", self.0.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

/// In-memory services and handles on their parts.
pub struct TestServices {
    pub services: Services,
    pub store: Arc<MemoryChatStore>,
    pub queue: Arc<RecordingTurnQueue>,
    pub connections: Arc<RecordingConnections>,
    pub clock: Arc<ManualClock>,
}

/// Builds `Services` on the in-memory adapters, at a fixed time.
pub fn services(settings: Settings) -> TestServices {
    let store = Arc::new(MemoryChatStore::new());
    let queue = Arc::new(RecordingTurnQueue::default());
    let connections = Arc::new(RecordingConnections::default());
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let services = Services {
        store: store.clone(),
        limits: store.clone(),
        queue: queue.clone(),
        outbox: None,
        connections: connections.clone(),
        hooks: Arc::new(NoHooks),
        clock: clock.clone(),
        ids: Arc::new(SequentialIds::default()),
        tokens: TokenIssuer::new(&settings.token_secret),
        settings: Arc::new(settings),
        models: Arc::new(scripted_catalog()),
    };
    TestServices {
        services,
        store,
        queue,
        connections,
        clock,
    }
}

/// The models [`ScriptedModel`] offers: `scripted` (the default) and `scripted-large`.
pub fn scripted_catalog() -> crate::config::ModelCatalog {
    let models = scripted_models();
    crate::config::ModelCatalog::from_parts(models, "scripted".into())
}

fn scripted_models() -> Vec<crate::ports::ModelInfo> {
    ["scripted", "scripted-large"]
        .into_iter()
        .map(|id| crate::ports::ModelInfo {
            id: id.into(),
            label: id.into(),
            offline: true,
        })
        .collect()
}

/// A model that streams a fixed reply, word by word, or fails as told.
pub struct ScriptedModel {
    pub reply: String,
    /// When set, `stream` fails with this error before streaming.
    pub fail_with: Mutex<Option<crate::error::ModelError>>,
    /// How many times `stream` was called.
    pub calls: AtomicU64,
    /// The model id of every request, in order.
    pub requested_models: Mutex<Vec<String>>,
}

impl ScriptedModel {
    pub fn new(reply: impl Into<String>) -> Self {
        ScriptedModel {
            reply: reply.into(),
            fail_with: Mutex::new(None),
            calls: AtomicU64::new(0),
            requested_models: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl crate::ports::LanguageModel for ScriptedModel {
    async fn stream(
        &self,
        request: crate::ports::ModelRequest,
    ) -> Result<crate::ports::ModelStream, crate::error::ModelError> {
        use futures::StreamExt;
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.requested_models
            .lock()
            .expect("model lock")
            .push(request.model);
        if let Some(e) = self.fail_with.lock().expect("model lock").clone() {
            return Err(e);
        }
        let mut events: Vec<Result<crate::ports::ModelEvent, crate::error::ModelError>> = self
            .reply
            .split_inclusive(' ')
            .map(|w| Ok(crate::ports::ModelEvent::TextDelta(w.to_owned())))
            .collect();
        events.push(Ok(crate::ports::ModelEvent::Finish {
            reason: crate::chunk::FinishReason::Stop,
            usage: Some(crate::ports::Usage {
                output_tokens: Some(3),
                ..Default::default()
            }),
        }));
        Ok(futures::stream::iter(events).boxed())
    }

    fn models(&self) -> Vec<crate::ports::ModelInfo> {
        scripted_models()
    }

    fn default_model(&self) -> String {
        "scripted".into()
    }
}

/// A model that streams `tokens` words (`w0 `, `w1 `, ...), one every `every` on tokio's clock,
/// then finishes `every` after the last: a paused-time test sees the frame cadence of a reply
/// streamed at a steady rate, without waiting for it.
pub struct PacedModel {
    pub tokens: usize,
    pub every: std::time::Duration,
}

#[async_trait]
impl crate::ports::LanguageModel for PacedModel {
    async fn stream(
        &self,
        _request: crate::ports::ModelRequest,
    ) -> Result<crate::ports::ModelStream, crate::error::ModelError> {
        use futures::StreamExt;
        let (tokens, every) = (self.tokens, self.every);
        let events = futures::stream::unfold(0, move |i| async move {
            if i > tokens {
                return None;
            }
            tokio::time::sleep(every).await;
            let event = if i == tokens {
                crate::ports::ModelEvent::Finish {
                    reason: crate::chunk::FinishReason::Stop,
                    usage: None,
                }
            } else {
                crate::ports::ModelEvent::TextDelta(format!("w{i} "))
            };
            Some((Ok(event), i + 1))
        });
        Ok(events.boxed())
    }

    fn models(&self) -> Vec<crate::ports::ModelInfo> {
        scripted_models()
    }

    fn default_model(&self) -> String {
        "scripted".into()
    }
}
