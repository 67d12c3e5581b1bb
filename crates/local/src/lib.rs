//! # chatrun-local: the `chatrun` binary
//!
//! One process that runs the whole app on a laptop: the real handler code of the five functions
//! behind a local gateway that behaves like API Gateway.
//!
//! # Layout
//! - [`options`]: command-line options and what they select (backend, data dir, limits).
//! - [`backend`]: builds the ports: embedded (SQLite store and queue) by default.
//! - [`gateway`]: the axum router: `/ws`, `/@connections/{id}`, `/api/*`, the web app.
//! - [`websocket`]: API Gateway's WebSocket behaviour: connection ids, `$connect` before the
//!   upgrade, route selection on `action`, `$disconnect`, message size and idle limits.
//! - [`management`]: the `@connections` management API (POST, GET, DELETE; 410 Gone).
//! - [`worker`]: SQS's event source mapping: receive turn jobs, invoke run-turn with an
//!   `SqsEvent`, delete what succeeded, leave failures for redelivery; dead letters too.
//! - [`web`]: the built web app (`web/dist`) with `index.html` for client-side routes.

pub mod backend;
pub mod gateway;
pub mod management;
pub mod options;
pub mod web;
pub mod websocket;
pub mod worker;

pub use gateway::{RunningServer, serve, spawn};
pub use options::ServeOptions;
