//! SQS's event source mapping, played locally as AWS plays it: receive up to ten turn jobs, hand
//! them to one run-turn invocation as an `SqsEvent` (records of several chats in one batch, as
//! the real mapping does; run-turn runs the chats concurrently), delete those it did not report
//! as failures, and leave failures to come back when their visibility ends (run-turn sets it:
//! a short backoff) and, past max receives, on the dead-letter queue.
//!
//! Invocations run concurrently up to a limit, like Lambda's concurrency for the mapping, and
//! several pollers receive at once, as the mapping's do (it starts with five): one poller would
//! make every job wait for the receives of all the jobs ahead of it, one round trip to the queue
//! per ten, which at a burst of thousands of sends is seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use chatrun_core::ports::{QueueName, ReceivedTurn, TurnQueueConsumer};
use chatrun_run_turn::RunTurnDeps;
use tokio::sync::{Semaphore, watch};

/// How long one receive call waits for a message (SQS long polling).
const LONG_POLL: Duration = Duration::from_secs(2);
/// Pollers receiving at once (the SQS event source mapping starts with five).
const POLLERS: usize = 5;

fn sqs_message(received: ReceivedTurn, source_arn: &str) -> SqsMessage {
    let mut message = SqsMessage::default();
    message.event_source = Some("aws:sqs".into());
    message.event_source_arn = Some(source_arn.into());
    message.aws_region = Some("local".into());
    message.attributes = HashMap::from([
        (
            "ApproximateReceiveCount".to_string(),
            received.receive_count.to_string(),
        ),
        ("MessageGroupId".to_string(), received.group_id),
        (
            "MessageDeduplicationId".to_string(),
            received.deduplication_id,
        ),
        ("SentTimestamp".to_string(), received.sent_at.to_string()),
    ]);
    message.message_id = Some(received.message_id);
    message.receipt_handle = Some(received.receipt_handle);
    message.body = Some(received.body);
    message
}

/// One invocation of run-turn with a batch, then the mapping's clean-up: delete what succeeded.
async fn invoke(
    consumer: &dyn TurnQueueConsumer,
    queue: QueueName,
    deps: &RunTurnDeps,
    source_arn: &str,
    batch: Vec<ReceivedTurn>,
) {
    // Only the ids are kept for the clean-up: the records are run-turn's now.
    let receipts: Vec<(String, String)> = batch
        .iter()
        .map(|m| (m.message_id.clone(), m.receipt_handle.clone()))
        .collect();
    let mut event = SqsEvent::default();
    event.records = batch
        .into_iter()
        .map(|m| sqs_message(m, source_arn))
        .collect();
    let response = chatrun_run_turn::handle(deps, event).await;
    for (message_id, receipt_handle) in &receipts {
        let failed = response
            .batch_item_failures
            .iter()
            .any(|f| f.item_identifier == *message_id);
        if failed {
            continue;
        }
        if let Err(error) = consumer.delete(queue, receipt_handle).await {
            tracing::warn!(%error, "deleting a finished turn job failed; it will run again");
        }
    }
}

/// Polls `queue` with [`POLLERS`] pollers until `stop` turns true, then waits for the
/// invocations they started; at most `max_concurrent` invocations run at once.
pub async fn run(
    consumer: Arc<dyn TurnQueueConsumer>,
    queue: QueueName,
    deps: RunTurnDeps,
    max_concurrent: usize,
    stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(max_concurrent));
    let pollers = (0..POLLERS).map(|_| {
        poll(
            consumer.clone(),
            queue,
            deps.clone(),
            limit.clone(),
            stop.clone(),
        )
    });
    futures::future::join_all(pollers).await;
}

/// One poller: receive a batch, start its invocation, again, until `stop` turns true.
async fn poll(
    consumer: Arc<dyn TurnQueueConsumer>,
    queue: QueueName,
    deps: RunTurnDeps,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let source_arn = consumer.source_arn(queue);
    let mut running = tokio::task::JoinSet::new();
    loop {
        let received = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            received = consumer.receive(queue, 10, LONG_POLL) => received,
        };
        let batch = match received {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(?queue, %error, "receiving turn jobs failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let consumer = consumer.clone();
        let deps = deps.clone();
        let source_arn = source_arn.clone();
        running.spawn(async move {
            let _permit = permit;
            invoke(consumer.as_ref(), queue, &deps, &source_arn, batch).await;
        });
        while running.try_join_next().is_some() {}
    }
    // Let running turns finish their current work briefly; the queue redelivers the rest.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while running.join_next().await.is_some() {}
    })
    .await;
}
