//! `SqliteOutbox`: a send's claim, its message and its turn's job in one write.
//!
//! The turn queue lives in the store's file ([`SqliteTurnQueue::in_store`]), written by the
//! same thread, so the job's insert can ride in the claim's own operation: one round trip to
//! the writer and one commit between a send and its `ack` where there were two, and the job is
//! queued exactly when the claim and the message stand (a refused message queues nothing).

use std::sync::Arc;

use async_trait::async_trait;
use chatrun_core::domain::{ChatSession, Millis, TurnJob};
use chatrun_core::error::QueueError;
use chatrun_core::message::UIMessage;
use chatrun_core::ports::{ClaimWithMessageError, TurnOutbox};

use crate::queue::SqliteTurnQueue;
use crate::store::SqliteChatStore;

/// The store and the turn queue of one file, for [`TurnOutbox`].
pub struct SqliteOutbox {
    store: Arc<SqliteChatStore>,
    queue: Arc<SqliteTurnQueue>,
}

impl SqliteOutbox {
    /// The outbox of `store` and `queue`, which must be the queue in `store`'s file.
    /// # Errors
    /// `queue` has a file of its own: a write cannot span both.
    pub fn new(
        store: Arc<SqliteChatStore>,
        queue: Arc<SqliteTurnQueue>,
    ) -> Result<SqliteOutbox, QueueError> {
        if !queue.is_in(&store) {
            return Err(QueueError::Backend(
                "an outbox needs the turn queue in the store's file (SqliteTurnQueue::in_store)"
                    .into(),
            ));
        }
        Ok(SqliteOutbox { store, queue })
    }
}

#[async_trait]
impl TurnOutbox for SqliteOutbox {
    async fn claim_with_message_and_job(
        &self,
        session: &ChatSession,
        expected_version: Option<u64>,
        message: &UIMessage,
        job: &TurnJob,
        now: Millis,
    ) -> Result<ChatSession, ClaimWithMessageError> {
        let send = self
            .queue
            .send_job_in(job)
            .map_err(ClaimWithMessageError::Job)?;
        let (stored, sent) = self
            .store
            .claim_with_message_and(session, expected_version, message, now, move |c| {
                send(c).map_err(ClaimWithMessageError::Job)
            })
            .await?;
        // Committed: a waiting receive may take the job now.
        self.queue.after_sent(sent);
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatrun_core::domain::Trigger;
    use chatrun_core::error::StoreError;
    use chatrun_core::ports::{ChatStore, QueueName, TurnQueueConsumer};
    use chatrun_core::testkit::store_conformance::{chat, session};
    use std::time::Duration;

    const NOW: Millis = 1_800_000_000_000;

    fn job(session: &ChatSession) -> TurnJob {
        TurnJob {
            chat_id: session.chat_id.clone(),
            run_id: session.run_id.clone(),
            user_message_id: "u1".into(),
            assistant_message_id: "a1".into(),
            trigger: Trigger::SubmitMessage,
        }
    }

    fn user_message(id: &str) -> UIMessage {
        serde_json::from_value(serde_json::json!({
            "id": id, "role": "user", "parts": [{"type": "text", "text": "hello"}]
        }))
        .unwrap()
    }

    async fn queued(queue: &SqliteTurnQueue) -> Vec<TurnJob> {
        queue
            .receive(QueueName::Turns, 10, Duration::ZERO)
            .await
            .unwrap()
            .iter()
            .map(|m| serde_json::from_str(&m.body).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn the_job_is_queued_with_the_claim_and_the_message_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteChatStore::open(dir.path().join("s.sqlite3")).unwrap());
        let queue = Arc::new(SqliteTurnQueue::in_store(
            &store,
            Duration::from_secs(30),
            3,
        ));
        let outbox = SqliteOutbox::new(store.clone(), queue.clone()).unwrap();
        let new_chat = chat("user-1", NOW);
        store.create_chat(&new_chat).await.unwrap();
        let chat = new_chat.id;
        let first = session(&chat);
        let stored = outbox
            .claim_with_message_and_job(&first, None, &user_message("u1"), &job(&first), NOW)
            .await
            .unwrap();
        assert_eq!(stored.version, 1);
        assert_eq!(
            store.get_session(&chat).await.unwrap(),
            Some(stored.clone())
        );
        assert_eq!(store.messages(&chat).await.unwrap().len(), 1);
        assert_eq!(queued(&queue).await, [job(&first)]);

        // The same message again: refused, and neither the claim nor a job is written.
        let again = ChatSession {
            run_id: "run-2".into(),
            ..stored.clone()
        };
        let refused = outbox
            .claim_with_message_and_job(&again, Some(1), &user_message("u1"), &job(&again), NOW)
            .await;
        assert!(
            matches!(
                refused,
                Err(ClaimWithMessageError::Message(StoreError::Conflict(_)))
            ),
            "{refused:?}"
        );
        assert_eq!(
            store.get_session(&chat).await.unwrap(),
            Some(stored.clone())
        );
        // A stale version: refused too, with nothing queued.
        let stale = outbox
            .claim_with_message_and_job(&again, Some(7), &user_message("u2"), &job(&again), NOW)
            .await;
        assert!(
            matches!(
                stale,
                Err(ClaimWithMessageError::Session(StoreError::Conflict(_)))
            ),
            "{stale:?}"
        );
        assert_eq!(store.messages(&chat).await.unwrap().len(), 1);
        assert!(queued(&queue).await.is_empty(), "only the first job");
    }

    #[tokio::test]
    async fn a_queue_in_a_file_of_its_own_has_no_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteChatStore::open(dir.path().join("s.sqlite3")).unwrap());
        let queue = Arc::new(
            SqliteTurnQueue::open(dir.path().join("q.sqlite3"), Duration::from_secs(30), 3)
                .unwrap(),
        );
        assert!(SqliteOutbox::new(store, queue).is_err());
    }
}
