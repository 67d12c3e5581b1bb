//! The turn queue conformance suite: the SQS FIFO behaviour run-turn relies on, checked the same
//! way against every adapter (SQLite, SQS on moto).
//!
//! `make` returns a fresh, empty queue (with its dead-letter queue) configured with
//! [`VISIBILITY_TIMEOUT`] and [`MAX_RECEIVES`].

use std::future::Future;
use std::time::{Duration, Instant};

use crate::domain::{ChatId, Trigger, TurnJob};
use crate::ports::{QueueName, ReceivedTurn, TurnQueue, TurnQueueConsumer};

/// The visibility timeout the queue under test must have.
pub const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(1);
/// The receives before a message moves to the dead-letter queue.
pub const MAX_RECEIVES: u32 = 2;

const SHORT: Duration = Duration::from_millis(300);

fn job(group: &str, n: u32) -> TurnJob {
    TurnJob {
        chat_id: ChatId::parse(group).unwrap(),
        run_id: "run-1".into(),
        user_message_id: format!("u{n}"),
        assistant_message_id: format!("a{n}-{}", uuid::Uuid::new_v4().simple()),
        trigger: Trigger::SubmitMessage,
    }
}

fn job_of(message: &ReceivedTurn) -> TurnJob {
    serde_json::from_str(&message.body).expect("the body is the job")
}

fn group(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Runs every case, each on a fresh queue.
pub async fn run_all<Q, F, Fut>(make: F)
where
    Q: TurnQueue + TurnQueueConsumer,
    F: Fn() -> Fut,
    Fut: Future<Output = Q>,
{
    fifo_order_within_a_group_and_independent_groups(&make().await).await;
    deduplication(&make().await).await;
    visibility_timeout_and_redelivery(&make().await).await;
    dead_letters_after_max_receives(&make().await).await;
    long_poll_wakes_on_arrival(&make().await).await;
}

async fn receive_one<Q: TurnQueueConsumer>(queue: &Q, wait: Duration) -> Option<ReceivedTurn> {
    let mut batch = queue
        .receive(QueueName::Turns, 1, wait)
        .await
        .expect("receive");
    assert!(batch.len() <= 1, "max 1 means at most one");
    batch.pop()
}

/// A group's messages come in order, one in flight at a time; other groups are not blocked.
pub async fn fifo_order_within_a_group_and_independent_groups<Q: TurnQueue + TurnQueueConsumer>(
    queue: &Q,
) {
    let g1 = group("g1");
    let g2 = group("g2");
    let (a, b, c) = (job(&g1, 1), job(&g1, 2), job(&g2, 3));
    for j in [&a, &b, &c] {
        queue.enqueue(j).await.unwrap();
    }
    let first = receive_one(queue, Duration::from_secs(5))
        .await
        .expect("a message");
    assert_eq!(job_of(&first), a, "oldest first");
    assert_eq!(
        (first.group_id.as_str(), first.receive_count),
        (g1.as_str(), 1)
    );
    let second = receive_one(queue, Duration::from_secs(5))
        .await
        .expect("the other group's message");
    assert_eq!(
        job_of(&second),
        c,
        "g1 is blocked while a is in flight, g2 is not"
    );
    assert!(
        receive_one(queue, SHORT).await.is_none(),
        "nothing else is visible"
    );
    queue
        .delete(QueueName::Turns, &first.receipt_handle)
        .await
        .unwrap();
    let third = receive_one(queue, Duration::from_secs(5))
        .await
        .expect("b after a");
    assert_eq!(job_of(&third), b);
    queue
        .delete(QueueName::Turns, &second.receipt_handle)
        .await
        .unwrap();
    queue
        .delete(QueueName::Turns, &third.receipt_handle)
        .await
        .unwrap();
    assert!(
        receive_one(queue, SHORT).await.is_none(),
        "deleted messages are gone"
    );
}

/// A second job with the same deduplication id is accepted and dropped.
pub async fn deduplication<Q: TurnQueue + TurnQueueConsumer>(queue: &Q) {
    let j = job(&group("dedup"), 1);
    queue.enqueue(&j).await.unwrap();
    queue.enqueue(&j).await.unwrap();
    let first = receive_one(queue, Duration::from_secs(5))
        .await
        .expect("one message");
    assert_eq!(first.deduplication_id, j.deduplication_id());
    queue
        .delete(QueueName::Turns, &first.receipt_handle)
        .await
        .unwrap();
    assert!(
        receive_one(queue, SHORT).await.is_none(),
        "the duplicate was dropped"
    );
    // SQS also drops a duplicate sent after the first was deleted (within five minutes); moto
    // delivers it. Nothing relies on that: a redelivered turn is dropped by the store's claim.
}

/// A message not deleted comes back after the visibility timeout, counted.
pub async fn visibility_timeout_and_redelivery<Q: TurnQueue + TurnQueueConsumer>(queue: &Q) {
    let j = job(&group("vis"), 1);
    queue.enqueue(&j).await.unwrap();
    let first = receive_one(queue, Duration::from_secs(5))
        .await
        .expect("a message");
    assert!(
        receive_one(queue, SHORT).await.is_none(),
        "invisible while in flight"
    );
    let started = Instant::now();
    let again = receive_one(queue, VISIBILITY_TIMEOUT * 5)
        .await
        .expect("redelivered");
    assert!(
        started.elapsed() + SHORT >= VISIBILITY_TIMEOUT / 2,
        "not before the timeout"
    );
    assert_eq!(job_of(&again), j);
    assert_eq!(again.message_id, first.message_id);
    assert_eq!(again.receive_count, 2);
    queue
        .delete(QueueName::Turns, &again.receipt_handle)
        .await
        .unwrap();
    assert!(
        receive_one(queue, VISIBILITY_TIMEOUT + SHORT)
            .await
            .is_none()
    );
}

/// After `MAX_RECEIVES` receives without a delete, the message moves to the dead-letter queue.
pub async fn dead_letters_after_max_receives<Q: TurnQueue + TurnQueueConsumer>(queue: &Q) {
    let j = job(&group("dlq"), 1);
    queue.enqueue(&j).await.unwrap();
    for n in 1..=MAX_RECEIVES {
        let m = receive_one(queue, VISIBILITY_TIMEOUT * 5)
            .await
            .expect("delivered");
        assert_eq!(m.receive_count, n);
    }
    // The next receive finds it over the limit and moves it.
    let deadline = Instant::now() + VISIBILITY_TIMEOUT * 8;
    let mut dead = Vec::new();
    while dead.is_empty() && Instant::now() < deadline {
        assert!(
            receive_one(queue, VISIBILITY_TIMEOUT).await.is_none(),
            "not delivered a third time"
        );
        dead = queue
            .receive(QueueName::DeadLetters, 10, SHORT)
            .await
            .unwrap();
    }
    assert_eq!(dead.len(), 1, "on the dead-letter queue");
    assert_eq!(job_of(&dead[0]), j, "the body is intact");
    queue
        .delete(QueueName::DeadLetters, &dead[0].receipt_handle)
        .await
        .unwrap();
    assert!(queue.source_arn(QueueName::DeadLetters) != queue.source_arn(QueueName::Turns));
}

/// A waiting receive returns as soon as a message arrives.
pub async fn long_poll_wakes_on_arrival<Q: TurnQueue + TurnQueueConsumer>(queue: &Q) {
    let j = job(&group("poll"), 1);
    let started = Instant::now();
    let (received, ()) = tokio::join!(receive_one(queue, Duration::from_secs(10)), async {
        tokio::time::sleep(SHORT).await;
        queue.enqueue(&j).await.unwrap();
    });
    let received = received.expect("the message that arrived");
    assert_eq!(job_of(&received), j);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "woke before the wait ran out"
    );
    queue
        .delete(QueueName::Turns, &received.receipt_handle)
        .await
        .unwrap();
}
