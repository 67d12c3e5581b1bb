//! What the embedded turn queue costs per operation while many chats have a turn in flight:
//! the state `chatrun serve` is in with 1,000 chats streaming. Prints figures; asserts nothing
//! about time. `cargo bench -p chatrun-embedded --bench queue`.
//!
//! Each round: N chats each have one job received (in flight), then for each chat, as a
//! finished turn does, the job is deleted, the chat's next job is sent, and a receive takes it.

use std::time::{Duration, Instant};

use chatrun_core::ports::{JobVisibility, QueueName, TurnQueueConsumer};
use chatrun_embedded::queue::SqliteTurnQueue;

const BODY: &str = r#"{"chatId":"00000000-0000-0000-0000-000000000000","runId":"run","userMessageId":"m","assistantMessageId":"a","model":"offline"}"#;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for chats in [100usize, 1_000, 5_000] {
        runtime.block_on(round(chats));
    }
}

async fn round(chats: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let queue = SqliteTurnQueue::open(dir.path().join("queue.db"), Duration::from_secs(3600), 3)
        .expect("queue");
    let mut receipts = Vec::with_capacity(chats);
    for chat in 0..chats {
        queue
            .send_raw(&format!("chat-{chat}"), &format!("job-{chat}-0"), BODY)
            .await
            .expect("send");
    }
    while receipts.len() < chats {
        let batch = queue
            .receive(QueueName::Turns, 10, Duration::ZERO)
            .await
            .expect("receive");
        receipts.extend(batch.into_iter().map(|m| m.receipt_handle));
    }
    let (mut heartbeat, mut cycle) = (Duration::ZERO, Duration::ZERO);
    for (chat, receipt) in receipts.iter_mut().enumerate() {
        let started = Instant::now();
        queue
            .set_visibility(QueueName::Turns, receipt, Duration::from_secs(45))
            .await
            .expect("heartbeat");
        heartbeat += started.elapsed();
        let started = Instant::now();
        queue
            .delete(QueueName::Turns, receipt)
            .await
            .expect("delete");
        queue
            .send_raw(&format!("chat-{chat}"), &format!("job-{chat}-1"), BODY)
            .await
            .expect("send");
        let batch = queue
            .receive(QueueName::Turns, 10, Duration::ZERO)
            .await
            .expect("receive");
        assert_eq!(
            batch.len(),
            1,
            "the chat's next job, and only it: {:?}",
            batch
                .iter()
                .map(|m| (&m.group_id, m.receive_count))
                .collect::<Vec<_>>()
        );
        *receipt = batch[0].receipt_handle.clone();
        cycle += started.elapsed();
    }
    println!(
        "{chats:>5} chats in flight: heartbeat {:>7.1} us, delete + send + receive {:>8.1} us",
        heartbeat.as_secs_f64() * 1e6 / chats as f64,
        cycle.as_secs_f64() * 1e6 / chats as f64,
    );
}
