//! Failures: a turn whose model is unreachable is retried, then dead-lettered; the user gets an
//! `error` chunk and keeps their message.

mod support;

use std::time::Duration;

use chatrun_core::chunk::UIMessageChunk;
use chatrun_core::config::ModelSettings;
use support::{Applied, TestApp, read_turn};

#[tokio::test]
async fn a_turn_that_always_fails_ends_in_the_dead_letter_path_with_an_error_chunk() {
    // Nothing listens on port 9 of loopback: every attempt fails before streaming.
    let app = TestApp::start_with(1000.0, |o| {
        o.model = ModelSettings::OpenAi {
            api_key: "test".into(),
            base_url: Some("http://127.0.0.1:9/v1".into()),
            model: "unreachable".into(),
        };
        o.visibility_timeout = Duration::from_millis(500);
        o.settings.max_receives = 2;
    })
    .await;
    let (token, _) = app.guest().await;
    let mut client = app.connect(&token).await;
    client
        .send_message("chat-fails", "u1", "Is anyone there?")
        .await;
    let mut applied = Applied::default();
    read_turn(&mut client, &mut applied).await;
    let errors: Vec<&str> = applied
        .chunks
        .iter()
        .filter_map(|(_, c)| match c {
            UIMessageChunk::Error { error_text } => Some(error_text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "{:?}", applied.chunks);
    assert!(applied.finished());
    let ended = client.recv_type("session-ended").await;
    assert_eq!(ended["reason"], "failed");
    let chat = app.chat("chat-fails", &token).await;
    let messages = chat["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        1,
        "the user's message stays, no empty reply: {chat}"
    );
    assert_eq!(messages[0]["id"], "u1");
    assert_eq!(chat["session"]["streaming"], false);
    // The next message starts a fresh session (and fails the same way, but is accepted).
    let ack = client.send_message("chat-fails", "u2", "Hello?").await;
    assert_ne!(ack["runId"], ended["runId"]);
    app.server.stop().await.unwrap();
}
