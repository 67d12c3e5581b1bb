//! Builds the ports for the selected backend.

use std::sync::Arc;

use anyhow::Context;
use chatrun_core::auth::TokenIssuer;
use chatrun_core::engine::Services;
use chatrun_core::hooks::NoHooks;
use chatrun_core::ports::{SystemClock, TurnQueueConsumer, UuidIds};
use chatrun_embedded::{InProcessConnections, SqliteChatStore, SqliteTurnQueue};

use crate::options::{BackendKind, ServeOptions};

/// The ports, plus the consumer side of the queue that the local worker drives.
pub struct Backend {
    pub services: Services,
    pub consumer: Arc<dyn TurnQueueConsumer>,
}

/// Opens the backend. `sockets` is the gateway's registry of open WebSockets.
pub fn open(options: &ServeOptions, sockets: Arc<InProcessConnections>) -> anyhow::Result<Backend> {
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("creating the data directory {}", options.data_dir.display()))?;
    let settings = Arc::new(options.settings.clone());
    match options.backend {
        BackendKind::Embedded => {
            let store = SqliteChatStore::open(options.data_dir.join("chatrun.sqlite3"))
                .context("opening the SQLite store")?;
            let queue = Arc::new(
                SqliteTurnQueue::open(
                    options.data_dir.join("queue.sqlite3"),
                    options.visibility_timeout,
                    settings.max_receives,
                )
                .context("opening the SQLite turn queue")?,
            );
            Ok(Backend {
                services: Services {
                    store: Arc::new(store),
                    queue: queue.clone(),
                    connections: sockets,
                    hooks: Arc::new(NoHooks),
                    clock: Arc::new(SystemClock),
                    ids: Arc::new(UuidIds),
                    tokens: TokenIssuer::new(&settings.token_secret),
                    settings,
                },
                consumer: queue,
            })
        }
    }
}
