//! Many at once: concurrent sends to one chat never orphan a message, and hundreds of chats
//! streaming together all complete. Each test prints its figures.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::TestApp;

fn send_frame(chat_id: &str, message_id: &str) -> Value {
    json!({
        "action": "send-message", "requestId": message_id, "chatId": chat_id,
        "trigger": "submit-message",
        "message": {"id": message_id, "role": "user", "parts": [{"type": "text", "text": format!("message {message_id}")}]}
    })
}

/// Waits until no reply streams in the chat, and returns it.
async fn idle_chat(app: &TestApp, chat_id: &str, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let chat = app.chat(chat_id, token).await;
        if chat["session"]["streaming"] != true {
            return chat;
        }
        assert!(
            Instant::now() < deadline,
            "the chat never went idle: {chat}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_hundred_sends_to_one_chat_from_three_connections_orphan_nothing() {
    let app = TestApp::start(2000.0).await;
    let (token, _) = app.guest().await;
    let mut first = app.connect(&token).await;
    first.send_message("chat-busy", "u-first", "hello").await;
    let mut clients = vec![first];
    for _ in 0..2 {
        clients.push(app.connect(&token).await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| {
            tokio::spawn(async move {
                let ids: Vec<String> = (0..100)
                    .filter(|i| i % 3 == c)
                    .map(|i| format!("u{i}"))
                    .collect();
                for id in &ids {
                    client.send(send_frame("chat-busy", id)).await;
                }
                let (mut acked, mut conflicts) = (Vec::new(), 0);
                while acked.len() + conflicts < ids.len() {
                    let frame = client.recv().await;
                    match frame["type"].as_str() {
                        Some("ack") => {
                            acked.push(frame["userMessageId"].as_str().unwrap().to_owned())
                        }
                        Some("error") => {
                            assert_eq!(frame["code"], "conflict", "{frame}");
                            conflicts += 1;
                        }
                        _ => {}
                    }
                }
                (acked, conflicts)
            })
        })
        .collect();
    let mut acked = HashSet::new();
    let mut conflicts = 0;
    for task in tasks {
        let (ids, refused) = task.await.unwrap();
        acked.extend(ids);
        conflicts += refused;
    }
    assert_eq!(acked.len() + conflicts, 100, "every send was answered");
    let chat = idle_chat(&app, "chat-busy", &token).await;
    let messages = chat["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    for pair in roles.chunks(2) {
        assert_eq!(
            pair,
            ["user", "assistant"],
            "every user message has its reply: {roles:?}"
        );
    }
    let stored: HashSet<String> = messages
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .filter(|id| id != "u-first")
        .collect();
    assert_eq!(
        stored, acked,
        "stored user messages are exactly the acknowledged ones"
    );
    println!(
        "100 concurrent sends on 3 connections: {} started a turn, {conflicts} got conflict, 0 orphaned",
        acked.len()
    );
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn five_hundred_chats_streaming_at_once_all_complete() {
    let app = TestApp::start(400.0).await;
    let (token, _) = app.guest().await;
    let started = Instant::now();
    // A connection holds ten subscriptions: fifty connections, ten chats each.
    let mut tasks = Vec::new();
    for c in 0..50 {
        let mut client = app.connect(&token).await;
        tasks.push(tokio::spawn(async move {
            for k in 0..10 {
                client
                    .send(send_frame(&format!("chat-{c}-{k}"), &format!("u-{c}-{k}")))
                    .await;
            }
            let mut complete = 0;
            while complete < 10 {
                let frame = client.recv().await;
                assert_ne!(frame["type"], "error", "{frame}");
                if frame["type"] == "turn-complete" {
                    complete += 1;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let took = started.elapsed();
    for c in 0..50 {
        for k in 0..10 {
            let chat = app.chat(&format!("chat-{c}-{k}"), &token).await;
            let messages = chat["messages"].as_array().unwrap();
            assert_eq!(messages.len(), 2, "{chat}");
            assert_eq!(messages[1]["role"], "assistant");
        }
    }
    println!("500 chats streaming at once: all 500 replies stored in {took:?}");
    app.server.stop().await.unwrap();
}
