//! `SqsTurnQueue` against moto's SQS with the real SDK client: the queue conformance suite
//! (FIFO order per group, deduplication, visibility timeout, dead-letter queue).

use chatrun_aws::emulators as common;
use std::sync::atomic::{AtomicU32, Ordering};

use chatrun_aws::SqsTurnQueue;
use chatrun_core::testkit::queue_conformance;

#[tokio::test]
async fn sqs_queue_passes_the_queue_conformance_suite() {
    let emulator = common::moto().await;
    let config = common::sdk_config(&emulator.endpoint).await;
    let client = aws_sdk_sqs::Client::new(&config);
    let n = AtomicU32::new(0);
    queue_conformance::run_all(|| {
        let client = client.clone();
        let name = format!("turns-{}", n.fetch_add(1, Ordering::SeqCst));
        async move {
            let (url, dead_letters) = SqsTurnQueue::create_queues(
                &client,
                &name,
                queue_conformance::VISIBILITY_TIMEOUT,
                queue_conformance::MAX_RECEIVES,
            )
            .await
            .unwrap();
            SqsTurnQueue::consumer(client, &url, &dead_letters)
                .await
                .unwrap()
        }
    })
    .await;
}
