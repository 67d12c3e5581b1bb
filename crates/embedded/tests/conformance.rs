//! The SQLite adapters pass the port conformance suites, and keep their data across a restart.

use std::time::Duration;

use chatrun_core::domain::{Chat, ChatId, Trigger, TurnJob};
use chatrun_core::message::UIMessage;
use chatrun_core::ports::{ChatStore, QueueName, TurnQueue, TurnQueueConsumer};
use chatrun_core::testkit::{queue_conformance, store_conformance};
use chatrun_embedded::{SqliteChatStore, SqliteTurnQueue};

#[tokio::test]
async fn the_sqlite_store_passes_the_store_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteChatStore::open(dir.path().join("store.sqlite3")).unwrap();
    store_conformance::run_all(&store).await;
}

#[tokio::test]
async fn the_sqlite_queue_passes_the_queue_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    queue_conformance::run_all(|| {
        let path = dir.path().join(format!(
            "queue-{}.sqlite3",
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        async move {
            SqliteTurnQueue::open(
                path,
                queue_conformance::VISIBILITY_TIMEOUT,
                queue_conformance::MAX_RECEIVES,
            )
            .unwrap()
        }
    })
    .await;
}

#[tokio::test]
async fn the_queue_in_the_store_file_passes_the_queue_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    queue_conformance::run_all(|| {
        let path = dir.path().join(format!(
            "store-{}.sqlite3",
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        async move {
            // The queue keeps the file's threads running after the store's handle is gone.
            SqliteTurnQueue::in_store(
                &SqliteChatStore::open(path).unwrap(),
                queue_conformance::VISIBILITY_TIMEOUT,
                queue_conformance::MAX_RECEIVES,
            )
        }
    })
    .await;
}

#[tokio::test]
async fn a_queue_file_of_its_own_is_moved_into_the_store_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let old_file = dir.path().join("queue.sqlite3");
    let job = |chat: &str| TurnJob {
        chat_id: ChatId::parse(chat).unwrap(),
        run_id: format!("run-{chat}"),
        user_message_id: "u1".into(),
        assistant_message_id: "a1".into(),
        trigger: Trigger::SubmitMessage,
    };
    {
        let old = SqliteTurnQueue::open(&old_file, Duration::from_secs(600), 3).unwrap();
        old.enqueue(&job("in-flight")).await.unwrap();
        let taken = old
            .receive(QueueName::Turns, 10, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(taken.len(), 1);
        old.enqueue(&job("queued")).await.unwrap();
        old.close();
    }
    let store = SqliteChatStore::open(dir.path().join("chatrun.sqlite3")).unwrap();
    let queue = SqliteTurnQueue::in_store(&store, Duration::from_secs(600), 3);
    assert_eq!(queue.adopt_file(&old_file).await.unwrap(), 2);
    assert!(!old_file.exists(), "the old file is removed once moved");
    assert!(!dir.path().join("queue.sqlite3.lock").exists());
    assert_eq!(queue.adopt_file(&old_file).await.unwrap(), 0);
    assert_eq!(queue.depth(QueueName::Turns).await.unwrap(), 2);

    // The in-flight message stays in flight (its visibility moved with it); the queued one is
    // handed out, and the deduplication window came along.
    let received = queue
        .receive(QueueName::Turns, 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(
        serde_json::from_str::<TurnJob>(&received[0].body).unwrap(),
        job("queued")
    );
    queue.enqueue(&job("queued")).await.unwrap();
    assert_eq!(queue.depth(QueueName::Turns).await.unwrap(), 2);
}

#[tokio::test]
async fn store_and_queue_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let chat_id = ChatId::parse("restart").unwrap();
    let job = TurnJob {
        chat_id: chat_id.clone(),
        run_id: "r".into(),
        user_message_id: "u1".into(),
        assistant_message_id: "a1".into(),
        trigger: Trigger::SubmitMessage,
    };
    {
        let store = SqliteChatStore::open(dir.path().join("s.sqlite3")).unwrap();
        store
            .create_chat(&Chat {
                id: chat_id.clone(),
                owner_id: "o".into(),
                title: "t".into(),
                model: "m".into(),
                created_at: 1,
                updated_at: 1,
                message_count: 0,
            })
            .await
            .unwrap();
        store
            .append_message(&chat_id, &UIMessage::user_text("u1", "hello"), 2)
            .await
            .unwrap();
        let queue = SqliteTurnQueue::in_store(&store, Duration::from_secs(30), 3);
        queue.enqueue(&job).await.unwrap();
    }
    let store = SqliteChatStore::open(dir.path().join("s.sqlite3")).unwrap();
    assert_eq!(store.messages(&chat_id).await.unwrap()[0].text(), "hello");
    assert_eq!(
        store
            .get_chat(&chat_id)
            .await
            .unwrap()
            .unwrap()
            .message_count,
        1
    );
    let queue = SqliteTurnQueue::in_store(&store, Duration::from_secs(30), 3);
    let received = queue
        .receive(QueueName::Turns, 10, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(
        serde_json::from_str::<TurnJob>(&received[0].body).unwrap(),
        job
    );
}

#[tokio::test]
async fn the_sqlite_store_passes_the_limits_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteChatStore::open(dir.path().join("store.sqlite3")).unwrap();
    chatrun_core::testkit::limits_conformance::run_all(&store).await;
}
