//! # chatrun-core
//!
//! Everything of chatrun that does not depend on where it runs: the domain, the wire protocol,
//! the ports (traits) the adapters implement, and the turn engine that the five functions call.
//!
//! # Layout
//! - [`message`]: `UIMessage` and its parts, as the AI SDK defines them.
//! - [`chunk`]: the AI SDK UI message stream chunks and [`chunk::MessageAccumulator`], which
//!   builds a `UIMessage` from them exactly as the SDK's `readUIMessageStream` does.
//! - [`protocol`]: WebSocket frames (client to server and back) with validation at the edge.
//! - [`domain`]: `Chat`, `ChatSession`, `StreamEvent`, `Connection`, `TurnJob`, validated ids.
//! - [`ports`]: `ChatStore`, `TurnQueue`, `TurnQueueConsumer`, `Connections`, `LanguageModel`,
//!   `Clock`, `IdGenerator`; each method documents its contract.
//! - [`auth`]: user tokens and run-scoped access tokens (HS256).
//! - [`config`]: every setting, read from the environment in one place.
//! - [`engine`]: the lifecycle (onChatStart, onTurnStart, onTurnComplete), the turn runner that
//!   streams, persists and fans out frames, resume, and the HTTP API operations.
//! - [`history`]: paging a chat's history newest page first: the cursor codec and the page
//!   assembly every store shares.
//! - [`hooks`]: the `LifecycleHooks` trait applications implement to add behaviour.
//! - [`testkit`] (feature `test-util`): in-memory adapters and the port conformance suites that
//!   every adapter runs.

pub mod auth;
pub mod chunk;
pub mod config;
pub mod domain;
pub mod engine;
pub mod error;
pub mod history;
pub mod hooks;
pub mod message;
pub mod ports;
pub mod protocol;
#[cfg(any(test, feature = "test-util"))]
pub mod testkit;

pub use error::{ChatError, ErrorCode};
