//! The turn engine: the lifecycle of DESIGN §4 and the streaming rules of §6, written once
//! against the ports and called by every function's handler (on Lambda, in the local gateway
//! and in tests alike).
//!
//! - [`connection`]: `$connect` and `$disconnect`.
//! - [`turn`]: onChatStart/onTurnStart (`send-message`), `stop`, and the turn runner
//!   (onTurnComplete) that streams, persists and fans out frames; dead letters.
//! - [`stream`]: `resume` (subscribe, then replay) and `unsubscribe`.
//! - [`api`]: the operations behind the HTTP API.
//! - [`limits`]: the per-user and per-address limits (`rate_limited`).

pub mod api;
pub mod connection;
pub mod limits;
pub mod stream;
pub mod turn;
pub mod websocket;

use std::sync::Arc;

use crate::auth::TokenIssuer;
use crate::config::{ModelCatalog, Settings};
use crate::domain::{Chat, ChatId, Connection, Grant, Millis};
use crate::error::{ChatError, PostError};
use crate::hooks::LifecycleHooks;
use crate::ports::{
    ChatStore, Clock, Connections, IdGenerator, TurnOutbox, TurnQueue, UsageCounters,
};
use crate::protocol::ServerFrame;

/// What every handler works with. Built once per process (Lambda cold start, local gateway).
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn ChatStore>,
    /// The counters behind the limits (on the same backend as the store).
    pub limits: Arc<dyn UsageCounters>,
    pub queue: Arc<dyn TurnQueue>,
    /// Where the backend can queue a send's job in its claim's own write (the embedded
    /// backend); `None`: the job is queued after the claim.
    pub outbox: Option<Arc<dyn TurnOutbox>>,
    pub connections: Arc<dyn Connections>,
    pub hooks: Arc<dyn LifecycleHooks>,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdGenerator>,
    pub tokens: TokenIssuer,
    pub settings: Arc<Settings>,
    /// The models a chat may use: `send-message` refuses any other.
    pub models: Arc<ModelCatalog>,
}

impl Services {
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// The chat if `owner_id` owns it and the grant reaches it; `not_found` otherwise, so that
    /// someone else's chat is indistinguishable from a missing one.
    pub async fn owned_chat(
        &self,
        owner_id: &str,
        grant: &Grant,
        chat_id: &ChatId,
    ) -> Result<Chat, ChatError> {
        if let Grant::Run {
            chat_id: scoped, ..
        } = grant
            && scoped != chat_id
        {
            return Err(ChatError::chat_not_found());
        }
        match self.store.get_chat(chat_id).await? {
            Some(chat) if chat.owner_id == owner_id => Ok(chat),
            _ => Err(ChatError::chat_not_found()),
        }
    }

    /// The connection a frame came on.
    /// # Errors
    /// `unauthorized` when the connection is unknown or expired (its `$connect` never
    /// completed, or it outlived API Gateway's two hours).
    pub async fn connection(&self, connection_id: &str) -> Result<Connection, ChatError> {
        self.store
            .get_connection(connection_id, self.now())
            .await?
            .ok_or_else(|| ChatError::Unauthorized("unknown connection; reconnect".into()))
    }

    /// Posts a frame to one connection; a gone connection is forgotten.
    pub async fn post(&self, connection_id: &str, frame: &ServerFrame) {
        self.post_text(connection_id, &frame.to_json()).await;
    }

    async fn post_text(&self, connection_id: &str, text: &str) -> bool {
        match self.connections.post(connection_id, text).await {
            Ok(()) => true,
            Err(PostError::Gone) => {
                if let Err(e) = self.store.delete_connection(connection_id).await {
                    tracing::warn!(connection_id, error = %e, "could not forget a gone connection");
                }
                false
            }
            Err(e) => {
                tracing::warn!(connection_id, error = %e, "post failed");
                false
            }
        }
    }

    /// Posts one frame to every subscriber of a chat, concurrently. Subscriptions of gone
    /// connections are dropped; the caller goes on regardless.
    pub async fn fan_out<'a>(
        &self,
        chat_id: &ChatId,
        subscribers: &'a [String],
        frame: &ServerFrame,
    ) {
        if subscribers.is_empty() {
            return;
        }
        let text = frame.to_json();
        let post = |id: &'a String| {
            let text = &text;
            async move {
                match self.connections.post(id, text).await {
                    Ok(()) => {}
                    Err(PostError::Gone) => {
                        if let Err(e) = self.store.unsubscribe(chat_id, id).await {
                            tracing::warn!(connection_id = %id, error = %e, "could not drop a gone subscriber");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(connection_id = %id, error = %e, "post to subscriber failed")
                    }
                }
            }
        };
        // One subscriber (one tab) is the common case: no list of posts to build per frame.
        if let [only] = subscribers {
            post(only).await;
        } else {
            futures::future::join_all(subscribers.iter().map(post)).await;
        }
    }
}
