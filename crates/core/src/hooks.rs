//! Lifecycle hooks: where an application adds its own behaviour to a chat's life.
//!
//! The engine always persists what DESIGN §4 says (Chat and ChatSession at chat start, the
//! user's message at turn start, the reply and `lastEventId` at turn complete); hooks run after
//! that persistence succeeded, so a hook sees durable state. Hooks must not fail a turn: they
//! return nothing, and should log and swallow their own errors.

use async_trait::async_trait;

use crate::domain::{Chat, ChatSession};
use crate::message::UIMessage;

#[async_trait]
pub trait LifecycleHooks: Send + Sync {
    /// A new chat and its first session were created (first message of a chat).
    async fn on_chat_start(&self, _chat: &Chat, _session: &ChatSession) {}

    /// The user's message is stored and the turn is about to be queued, or already queued
    /// where the backend queues it in the same write as the message (the embedded backend's
    /// outbox): the reply may be streaming while this runs.
    async fn on_turn_start(&self, _session: &ChatSession, _user_message: &UIMessage) {}

    /// The assistant's reply is stored and the session updated (`last_event_id`, `turns`).
    async fn on_turn_complete(&self, _session: &ChatSession, _assistant_message: &UIMessage) {}
}

/// Built-in persistence only.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl LifecycleHooks for NoHooks {}
