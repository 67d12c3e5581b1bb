//! `InProcessConnections`: the gateway's open WebSockets, as the `Connections` port sees them.
//!
//! Each socket task registers and gets a receiver; `post` hands a frame to that receiver
//! without waiting (a socket that does not read fills its buffer and then answers `Transient`,
//! as API Gateway throttles rather than blocking the poster).

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;
use chatrun_core::domain::Millis;
use chatrun_core::error::PostError;
use chatrun_core::ports::Connections;
use tokio::sync::mpsc;

/// Frames buffered per connection before posts answer `Transient`.
const BUFFERED_FRAMES: usize = 1024;

/// What the socket task is told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    Text(String),
    Close,
}

/// What `GET @connections/{id}` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub source_ip: String,
    pub user_agent: String,
    pub connected_at: Millis,
    pub last_active_at: Millis,
}

struct Entry {
    sender: mpsc::Sender<Outbound>,
    info: ConnectionInfo,
}

/// The registry of open connections of this process.
#[derive(Default)]
pub struct InProcessConnections {
    open: RwLock<HashMap<String, Entry>>,
}

impl InProcessConnections {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an open socket; its task sends what arrives on the returned receiver.
    pub fn register(
        &self,
        connection_id: String,
        info: ConnectionInfo,
    ) -> mpsc::Receiver<Outbound> {
        let (sender, receiver) = mpsc::channel(BUFFERED_FRAMES);
        self.open
            .write()
            .expect("connection registry lock")
            .insert(connection_id, Entry { sender, info });
        receiver
    }

    /// Forgets a socket (it closed).
    pub fn unregister(&self, connection_id: &str) {
        self.open
            .write()
            .expect("connection registry lock")
            .remove(connection_id);
    }

    pub fn info(&self, connection_id: &str) -> Option<ConnectionInfo> {
        self.open
            .read()
            .expect("connection registry lock")
            .get(connection_id)
            .map(|e| e.info.clone())
    }

    /// Records activity from the client.
    pub fn touch(&self, connection_id: &str, now: Millis) {
        if let Some(entry) = self
            .open
            .write()
            .expect("connection registry lock")
            .get_mut(connection_id)
        {
            entry.info.last_active_at = now;
        }
    }

    /// The ids of the open connections.
    pub fn connection_ids(&self) -> Vec<String> {
        self.open
            .read()
            .expect("connection registry lock")
            .keys()
            .cloned()
            .collect()
    }

    fn send(&self, connection_id: &str, outbound: Outbound) -> Result<(), PostError> {
        let sender = match self
            .open
            .read()
            .expect("connection registry lock")
            .get(connection_id)
        {
            Some(entry) => entry.sender.clone(),
            None => return Err(PostError::Gone),
        };
        sender.try_send(outbound).map_err(|e| match e {
            mpsc::error::TrySendError::Closed(_) => PostError::Gone,
            mpsc::error::TrySendError::Full(_) => {
                PostError::Transient("the connection is not reading".into())
            }
        })
    }
}

#[async_trait]
impl Connections for InProcessConnections {
    async fn post(&self, connection_id: &str, frame: &str) -> Result<(), PostError> {
        self.send(connection_id, Outbound::Text(frame.to_owned()))
    }

    async fn close(&self, connection_id: &str) -> Result<(), PostError> {
        self.send(connection_id, Outbound::Close)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            source_ip: "127.0.0.1".into(),
            user_agent: "test".into(),
            connected_at: 1,
            last_active_at: 1,
        }
    }

    #[tokio::test]
    async fn posts_reach_the_registered_socket_and_unknown_ones_are_gone() {
        let registry = InProcessConnections::new();
        let mut rx = registry.register("c1".into(), info());
        registry.post("c1", "hello").await.unwrap();
        assert_eq!(rx.recv().await, Some(Outbound::Text("hello".into())));
        registry.close("c1").await.unwrap();
        assert_eq!(rx.recv().await, Some(Outbound::Close));
        assert!(matches!(
            registry.post("nope", "x").await,
            Err(PostError::Gone)
        ));
        registry.touch("c1", 99);
        assert_eq!(registry.info("c1").unwrap().last_active_at, 99);
        assert_eq!(registry.connection_ids(), vec!["c1".to_string()]);
        drop(rx);
        assert!(
            matches!(registry.post("c1", "x").await, Err(PostError::Gone)),
            "receiver dropped"
        );
        registry.unregister("c1");
        assert!(registry.info("c1").is_none());
    }

    #[tokio::test]
    async fn a_socket_that_does_not_read_answers_transient_not_blocking() {
        let registry = InProcessConnections::new();
        let _rx = registry.register("slow".into(), info());
        for _ in 0..BUFFERED_FRAMES {
            registry.post("slow", "x").await.unwrap();
        }
        assert!(matches!(
            registry.post("slow", "x").await,
            Err(PostError::Transient(_))
        ));
    }
}
