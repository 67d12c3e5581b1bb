//! Paging a long chat's history over HTTP (DESIGN §8) against the real gateway: the newest page
//! with the chat, then older pages by cursor back to the first message.

mod support;

use serde_json::{Value, json};
use support::{Applied, TestApp, read_turn};

fn ids(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Walks the chat from its newest page (`limit` messages a page) to its first message.
/// # Returns
/// The pages, newest first, each oldest first.
async fn walk(app: &TestApp, chat_id: &str, token: &str, limit: usize) -> Vec<Vec<String>> {
    let (status, chat) = app
        .get_json(&format!("/api/chats/{chat_id}?limit={limit}"), token)
        .await;
    assert_eq!(status, 200, "{chat}");
    let mut pages = vec![ids(&chat["messages"])];
    let mut cursor = chat["olderCursor"].clone();
    while let Some(before) = cursor.as_str() {
        let (status, page) = app
            .get_json(
                &format!("/api/chats/{chat_id}/messages?before={before}&limit={limit}"),
                token,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        pages.push(ids(&page["messages"]));
        cursor = page["olderCursor"].clone();
        assert!(pages.len() < 100, "the walk ends");
    }
    pages
}

#[tokio::test]
async fn a_chat_longer_than_a_page_walks_back_to_its_first_message() {
    let app = TestApp::start(5000.0).await;
    let (token, _) = app.guest().await;
    let mut client = app.connect(&token).await;
    let chat_id = "chat-long";
    let mut expected = Vec::new();
    for turn in 1..=8 {
        let id = format!("u{turn}");
        let ack = client
            .send_message(chat_id, &id, &format!("question {turn}"))
            .await;
        read_turn(&mut client, &mut Applied::default()).await;
        expected.push(id);
        expected.push(ack["assistantMessageId"].as_str().unwrap().to_owned());
    }

    let (status, whole) = app.get_json(&format!("/api/chats/{chat_id}"), &token).await;
    assert_eq!(status, 200);
    assert_eq!(
        ids(&whole["messages"]),
        expected,
        "the default page holds 16"
    );
    assert_eq!(whole["olderCursor"], Value::Null);

    let pages = walk(&app, chat_id, &token, 3).await;
    assert_eq!(pages.len(), 6, "16 messages in pages of 3: {pages:?}");
    assert_eq!(pages[0].len(), 3);
    assert_eq!(
        pages[5],
        expected[..1],
        "the last page starts at the first message"
    );
    let walked: Vec<String> = pages.iter().rev().flatten().cloned().collect();
    assert_eq!(walked, expected, "nothing missing or doubled");

    // Regenerating the last reply leaves the older pages, and their cursors, as they were.
    let (_, newest) = app
        .get_json(&format!("/api/chats/{chat_id}?limit=4"), &token)
        .await;
    let cursor = newest["olderCursor"].as_str().unwrap().to_owned();
    client
        .send(
            json!({"action": "send-message", "requestId": "regen", "chatId": chat_id,
                     "trigger": "regenerate-message", "messageId": expected[15]}),
        )
        .await;
    let ack = client.recv_type_or_error("ack").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    read_turn(&mut client, &mut Applied::default()).await;
    let older_path = format!("/api/chats/{chat_id}/messages?before={cursor}&limit=4");
    let (status, older) = app.get_json(&older_path, &token).await;
    assert_eq!(status, 200, "{older}");
    assert_eq!(ids(&older["messages"]), expected[8..12]);

    // Editing a message older than the cursor's makes the cursor stale: 409, reload.
    client
        .send(
            json!({"action": "send-message", "requestId": "edit", "chatId": chat_id,
                     "trigger": "submit-message", "messageId": "u4",
                     "message": {"id": "u4", "role": "user",
                                 "parts": [{"type": "text", "text": "question 4, edited"}]}}),
        )
        .await;
    let ack = client.recv_type_or_error("ack").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    read_turn(&mut client, &mut Applied::default()).await;
    let (status, stale) = app.get_json(&older_path, &token).await;
    assert_eq!((status, &stale["error"]["code"]), (409, &json!("conflict")));
    let after_edit: Vec<String> = walk(&app, chat_id, &token, 3)
        .await
        .into_iter()
        .rev()
        .flatten()
        .collect();
    assert_eq!(
        after_edit.len(),
        8,
        "u1..u4 and their replies: {after_edit:?}"
    );
    assert_eq!(after_edit[..6], expected[..6]);
    assert_eq!(after_edit[6], "u4");

    // Bad input is a clear 400.
    for path in [
        format!("/api/chats/{chat_id}?limit=0"),
        format!("/api/chats/{chat_id}?limit=501"),
        format!("/api/chats/{chat_id}?limit=many"),
        format!("/api/chats/{chat_id}/messages?limit=-3"),
        format!("/api/chats/{chat_id}/messages?before=not-a-cursor"),
        format!(
            "/api/chats/{chat_id}/messages?before={}",
            newest_cursor_of(&app, "other-chat", &token, &mut client).await
        ),
    ] {
        let (status, body) = app.get_json(&path, &token).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("bad_request")),
            "{path}"
        );
    }
    app.server.stop().await.unwrap();
}

/// A cursor of another chat of the same user.
async fn newest_cursor_of(
    app: &TestApp,
    chat_id: &str,
    token: &str,
    client: &mut support::Client,
) -> String {
    client.send_message(chat_id, "o1", "another chat").await;
    read_turn(client, &mut Applied::default()).await;
    let (_, chat) = app
        .get_json(&format!("/api/chats/{chat_id}?limit=1"), token)
        .await;
    chat["olderCursor"]
        .as_str()
        .expect("two messages")
        .to_owned()
}
