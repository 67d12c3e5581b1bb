//! The turn pipeline under the event source mapping's real shape: a batch holds records of
//! several chats, and run-turn runs them at once; a job is held by its heartbeat, not by the
//! queue's visibility timeout. Runs on the embedded backend, and on DynamoDB Local + moto with
//! `CHATRUN_TEST_BACKEND=aws`.

mod support;

use std::time::{Duration, Instant};

use chatrun_core::chunk::UIMessageChunk;
use support::{Applied, Client, TestApp, read_turn};

/// Sends a message and waits for the first `events` frame that carries text.
async fn first_token_after_send(client: &mut Client, chat_id: &str) -> Duration {
    let started = Instant::now();
    client
        .send_message(chat_id, "u1", "Tell me about tide pools")
        .await;
    loop {
        let frame = client.recv().await;
        if frame["type"] == "events"
            && frame["chunks"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "text-delta"))
        {
            return started.elapsed();
        }
        assert_ne!(frame["type"], "error", "{frame}");
    }
}

#[tokio::test]
async fn ten_chats_sent_at_once_get_their_first_tokens_as_fast_as_one_chat() {
    // At 20 tokens a second a reply takes seconds: were the chats handled one after another,
    // the last would wait for nine whole replies.
    let app = TestApp::start(20.0).await;
    let (token, _) = app.guest().await;
    let mut solo_client = app.connect(&token).await;
    let started = Instant::now();
    let solo = first_token_after_send(&mut solo_client, "chat-solo").await;
    read_turn(&mut solo_client, &mut Applied::default()).await;
    let reply = started.elapsed();

    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(app.connect(&token).await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(10));
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let latency = first_token_after_send(&mut client, &format!("chat-{i}")).await;
                let mut applied = Applied::default();
                read_turn(&mut client, &mut applied).await;
                (latency, client)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        let (latency, _client) = task.await.unwrap();
        latencies.push(latency);
    }
    let latest = *latencies.iter().max().unwrap();
    println!(
        "first token: one chat {solo:?} (its whole reply {reply:?}); ten at once, latest {latest:?} ({latencies:?})"
    );
    // Handled one after another, the last chat would wait for nine whole replies. The bound is
    // one chat's first token plus less than one reply: no chat waited for another's reply,
    // however slow the machine (the emulators are much slower than the embedded backend).
    assert!(
        latest < solo + reply.mul_f64(0.9),
        "ten chats at once: the latest first token came after {latest:?}; one chat alone after {solo:?}, its reply took {reply:?}"
    );
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_turn_longer_than_the_visibility_timeout_runs_exactly_once() {
    let app = TestApp::start_with(25.0, |o| {
        // The queue would hand the job out again after a second; the heartbeat keeps it.
        o.visibility_timeout = Duration::from_secs(1);
        o.settings.turn_lease = Duration::from_secs(1);
    })
    .await;
    let (token, _) = app.guest().await;
    let mut client = app.connect(&token).await;
    let started = Instant::now();
    client
        .send_message("chat-long", "u1", "Tell me everything about tide pools")
        .await;
    let mut applied = Applied::default();
    read_turn(&mut client, &mut applied).await;
    let took = started.elapsed();
    assert!(
        took > Duration::from_secs(2),
        "the turn outlived the visibility timeout: {took:?}"
    );
    let starts = applied
        .chunks
        .iter()
        .filter(|(_, c)| matches!(c, UIMessageChunk::Start { .. }))
        .count();
    let errors = applied
        .chunks
        .iter()
        .filter(|(_, c)| matches!(c, UIMessageChunk::Error { .. }))
        .count();
    assert_eq!((starts, errors), (1, 0), "{:?}", applied.chunks);
    let chat = app.chat("chat-long", &token).await;
    let messages = chat["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{chat}");
    let (_, stored) = support::user_and_text(&messages[1]);
    assert_eq!(stored, applied.message().text());
    // Nothing comes after the reply: no second attempt streams into the chat.
    let quiet = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            let frame = client.recv().await;
            if frame["type"] == "events" || frame["type"] == "turn-started" {
                return frame;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "a second attempt ran: {quiet:?}");
    app.server.stop().await.unwrap();
}
