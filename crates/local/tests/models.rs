//! Changing an existing chat's model for its next turn, end to end: the gateway offers two
//! models of the offline provider (`CHAT_MODELS`), and a chat's second turn runs on the other.

mod support;

use serde_json::{Value, json};
use support::{Applied, TestApp, read_turn};

fn message(chat_id: &str, message_id: &str, text: &str, model: Option<&str>) -> Value {
    let mut frame = json!({
        "action": "send-message", "requestId": format!("req-{message_id}"), "chatId": chat_id,
        "trigger": "submit-message",
        "message": {"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}]}
    });
    if let Some(model) = model {
        frame["model"] = json!(model);
    }
    frame
}

fn reply_model(chat: &Value) -> Value {
    let last = chat["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(last["role"], "assistant", "{last}");
    last["metadata"]["model"].clone()
}

#[tokio::test]
async fn a_chats_second_turn_runs_on_the_model_sent_with_it_and_the_chat_keeps_it() {
    let app = TestApp::start_with(150.0, |o| o.extra_models = vec!["offline-large".into()]).await;
    let (token, _) = app.guest().await;
    let (status, models) = app.get_json("/api/models", &token).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["offline", "offline-large"]);
    assert_eq!(models["default"], "offline");

    let mut client = app.connect(&token).await;
    let chat_id = "chat-model-change";
    let mut applied = Applied::default();

    // Turn 1 names no model: the chat gets the default.
    client
        .send(message(chat_id, "u1", "Tell me about tide pools", None))
        .await;
    assert_eq!(client.recv_type_or_error("ack").await["type"], "ack");
    read_turn(&mut client, &mut applied).await;
    assert!(!applied.message().text().contains("Answering as"));
    let chat = app.chat(chat_id, &token).await;
    assert_eq!(chat["model"], "offline");
    assert_eq!(reply_model(&chat), "offline");

    // An unknown model is refused before anything is stored.
    client
        .send(message(chat_id, "u-bad", "And rock pools?", Some("gpt-9")))
        .await;
    let refused = client.recv_type_or_error("ack").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "bad_request");
    assert_eq!(refused["chatId"], chat_id);
    assert_eq!(refused["requestId"], "req-u-bad");
    assert!(
        refused["message"].as_str().unwrap().contains("gpt-9"),
        "{refused}"
    );
    let chat = app.chat(chat_id, &token).await;
    assert_eq!(chat["model"], "offline");
    assert_eq!(chat["messages"].as_array().unwrap().len(), 2);

    // Turn 2 picks the other model.
    client
        .send(message(
            chat_id,
            "u2",
            "What lives in them?",
            Some("offline-large"),
        ))
        .await;
    assert_eq!(client.recv_type_or_error("ack").await["type"], "ack");
    // While it streams, a send that picks another model is refused and changes nothing.
    client
        .send(message(chat_id, "u3", "Too soon", Some("offline")))
        .await;
    let conflict = client.recv_type_or_error("ack").await;
    assert_eq!(conflict["code"], "conflict", "{conflict}");
    read_turn(&mut client, &mut applied).await;
    let reply = applied.message().text();
    assert!(
        reply.starts_with("*Answering as offline-large.*"),
        "the reply comes from the new model: {reply}"
    );
    let chat = app.chat(chat_id, &token).await;
    assert_eq!(chat["model"], "offline-large", "stored with the chat");
    assert_eq!(reply_model(&chat), "offline-large");
    let (_, list) = app.get_json("/api/chats", &token).await;
    assert_eq!(list["chats"][0]["model"], "offline-large");

    // Turn 3 names no model: the chat's new one answers.
    client
        .send(message(chat_id, "u4", "And in winter?", None))
        .await;
    assert_eq!(client.recv_type_or_error("ack").await["type"], "ack");
    read_turn(&mut client, &mut applied).await;
    assert!(
        applied
            .message()
            .text()
            .starts_with("*Answering as offline-large.*")
    );
    let chat = app.chat(chat_id, &token).await;
    assert_eq!(chat["model"], "offline-large");
    assert_eq!(reply_model(&chat), "offline-large");
    assert_eq!(chat["messages"].as_array().unwrap().len(), 6);
}
