//! `InProcessConnections`: the gateway's open WebSockets, as the `Connections` port sees them.
//!
//! Each socket task registers and gets an [`Outbox`]; `post` puts a frame in it without waiting
//! (a socket that does not read fills it and then answers `Transient`, as API Gateway throttles
//! rather than blocking the poster).
//!
//! The outbox is a locked queue and an `AtomicWaker` rather than a tokio channel: a bounded
//! channel allocates its shared state and its first block of slots up front, about 2 KB per
//! open connection, while most connections hold at most a frame or two at a time. It also lets
//! the socket task take every waiting frame at once and write them with one flush.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use async_trait::async_trait;
use chatrun_core::domain::Millis;
use chatrun_core::error::PostError;
use chatrun_core::ports::Connections;
use futures::task::AtomicWaker;

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

/// The frames waiting for one socket.
#[derive(Default)]
struct Mailbox {
    frames: Mutex<VecDeque<Outbound>>,
    /// The socket task, woken when a frame is posted. Registering is a compare and swap, no
    /// lock: the task registers again each time it waits, once per frame it writes.
    ready: AtomicWaker,
    /// The socket task dropped its outbox: posts answer `Gone`.
    closed: AtomicBool,
}

/// The receiving end a socket task holds: the frames posted to its connection, in order.
pub struct Outbox {
    mailbox: Arc<Mailbox>,
}

impl Outbox {
    /// Waits for the next frame.
    pub async fn recv(&mut self) -> Outbound {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next frame, or `Pending` with the task registered to be woken by the next post.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Outbound> {
        if let Some(frame) = self.try_recv() {
            return Poll::Ready(frame);
        }
        self.mailbox.ready.register(cx.waker());
        // A frame posted between the look and the registration woke no one: look again.
        match self.try_recv() {
            Some(frame) => Poll::Ready(frame),
            None => Poll::Pending,
        }
    }

    /// Ends the connection for posters: they get `Gone` from now on, as after `DELETE
    /// @connections/{id}`, while the socket waits for the client's answer to its close.
    pub fn close(&mut self) {
        self.mailbox.closed.store(true, Ordering::Release);
    }

    /// The next frame if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        crate::lock(&self.mailbox.frames).pop_front()
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.close();
    }
}

struct Entry {
    mailbox: Arc<Mailbox>,
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

    /// Registers an open socket; its task sends what arrives in the returned outbox.
    pub fn register(&self, connection_id: String, info: ConnectionInfo) -> Outbox {
        let mailbox = Arc::new(Mailbox::default());
        self.open.write().expect("connection registry lock").insert(
            connection_id,
            Entry {
                mailbox: mailbox.clone(),
                info,
            },
        );
        Outbox { mailbox }
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
        let open = self.open.read().expect("connection registry lock");
        let Some(entry) = open.get(connection_id) else {
            return Err(PostError::Gone);
        };
        let mailbox = &entry.mailbox;
        if mailbox.closed.load(Ordering::Acquire) {
            return Err(PostError::Gone);
        }
        {
            let mut frames = crate::lock(&mailbox.frames);
            if frames.len() >= BUFFERED_FRAMES {
                return Err(PostError::Transient("the connection is not reading".into()));
            }
            frames.push_back(outbound);
        }
        mailbox.ready.wake();
        Ok(())
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
        assert_eq!(rx.recv().await, Outbound::Text("hello".into()));
        registry.close("c1").await.unwrap();
        assert_eq!(rx.recv().await, Outbound::Close);
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
    async fn waiting_frames_are_taken_in_order_and_a_close_makes_posts_gone() {
        let registry = InProcessConnections::new();
        let mut outbox = registry.register("c1".into(), info());
        assert_eq!(outbox.try_recv(), None);
        for frame in ["a", "b", "c"] {
            registry.post("c1", frame).await.unwrap();
        }
        // The first wakes the socket task; the rest are taken without waiting.
        assert_eq!(outbox.recv().await, Outbound::Text("a".into()));
        assert_eq!(outbox.try_recv(), Some(Outbound::Text("b".into())));
        assert_eq!(outbox.try_recv(), Some(Outbound::Text("c".into())));
        assert_eq!(outbox.try_recv(), None);
        // A post while the task waits wakes it.
        let waiting = tokio::spawn(async move {
            let frame = outbox.recv().await;
            (outbox, frame)
        });
        tokio::task::yield_now().await;
        registry.post("c1", "d").await.unwrap();
        let (mut outbox, frame) = waiting.await.unwrap();
        assert_eq!(frame, Outbound::Text("d".into()));
        // Closed while still registered (waiting for the client's answer): posts are gone.
        outbox.close();
        assert!(matches!(
            registry.post("c1", "e").await,
            Err(PostError::Gone)
        ));
        assert_eq!(outbox.try_recv(), None);
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
