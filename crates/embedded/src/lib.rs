//! # chatrun-embedded
//!
//! The adapters behind `chatrun serve`'s default backend: everything in one process and one
//! data directory, nothing to install.
//!
//! # Layout
//! - [`db`]: one SQLite file served by its own thread, with group commit: what both SQLite
//!   adapters run on, so no SQLite work happens on the async runtime's threads.
//! - [`store`]: `SqliteChatStore`, the `ChatStore` on one SQLite file (WAL), surviving restarts,
//!   with the stream events in a second file (`events`, written in arrival order and indexed by
//!   run a second at a time).
//! - `usage`: the limits' counters on the store, decided in memory and written behind.
//! - [`queue`]: `SqliteTurnQueue`, a durable queue with the SQS FIFO semantics run-turn relies
//!   on: message groups, deduplication ids, visibility timeout, receive counts, dead letters.
//! - [`outbox`]: `SqliteOutbox`, a send's claim, message and job in one write (the queue is in
//!   the store's file).
//! - [`connections`]: `InProcessConnections`, the registry of the gateway's open WebSockets,
//!   implementing `Connections` the way API Gateway's `@connections` API behaves.

pub mod connections;
pub mod db;
mod events;
pub mod outbox;
pub mod queue;
pub mod store;
mod usage;

pub use connections::{ConnectionInfo, InProcessConnections, Outbound, Outbox};
pub use outbox::SqliteOutbox;
pub use queue::SqliteTurnQueue;
pub use store::SqliteChatStore;

use chatrun_core::error::{QueueError, StoreError};

/// SQLite reports contention as busy/locked: trying again helps. Anything else will not.
fn is_transient(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Locks `mutex` whatever a panicking holder left: every caller changes what it guards in
/// single steps, so it is whole (the events log's entries, the queue's handed messages, the
/// usage counters, a connection's waiting frames).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn store_error(e: rusqlite::Error) -> StoreError {
    if is_transient(&e) {
        StoreError::Transient(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

fn queue_error(e: rusqlite::Error) -> QueueError {
    if is_transient(&e) {
        QueueError::Transient(e.to_string())
    } else {
        QueueError::Backend(e.to_string())
    }
}

/// `execute` and `query_row` through the connection's statement cache: the store and queue run
/// the same few statements thousands of times a second, and parsing one costs more than
/// running it.
trait Cached {
    fn execute_cached(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize>;
    fn query_row_cached<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for rusqlite::Connection {
    fn execute_cached(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, row)
    }
}
