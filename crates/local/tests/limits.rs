//! The per-user and per-address limits, end to end on a real gateway (and, with
//! `CHATRUN_TEST_BACKEND=aws`, on DynamoDB Local and moto): a refused request gets a
//! `rate_limited` error with `retryAfterMs` and leaves nothing stored; the limits of one user or
//! address do not touch another's.

mod support;

use serde_json::{Value, json};
use support::{Client, TestApp};

fn send_frame(chat_id: &str, message_id: &str) -> Value {
    json!({
        "action": "send-message", "requestId": format!("req-{message_id}"), "chatId": chat_id,
        "trigger": "submit-message",
        "message": {"id": message_id, "role": "user", "parts": [{"type": "text", "text": "hello there"}]}
    })
}

/// Sends and returns the answer: an `ack` or an `error`.
async fn try_send(client: &mut Client, chat_id: &str, message_id: &str) -> Value {
    client.send(send_frame(chat_id, message_id)).await;
    client.recv_type_or_error("ack").await
}

fn assert_rate_limited(frame: &Value, chat_id: &str, at_most_ms: u64) -> u64 {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], "rate_limited", "{frame}");
    assert_eq!(frame["chatId"], chat_id, "{frame}");
    let retry_after = frame["retryAfterMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("retryAfterMs in {frame}"));
    assert!(
        (1..=at_most_ms).contains(&retry_after),
        "retryAfterMs {retry_after} within 1..={at_most_ms}"
    );
    retry_after
}

async fn assert_not_stored(app: &TestApp, chat_id: &str, token: &str) {
    let (status, body) = app.get_json(&format!("/api/chats/{chat_id}"), token).await;
    assert_eq!(
        status, 404,
        "nothing of a refused message is stored: {body}"
    );
}

#[tokio::test]
async fn the_21st_message_in_a_minute_is_refused_with_retry_after_and_nothing_stored() {
    let app = TestApp::start_with(2000.0, |options| {
        options.settings.user_messages_per_minute = 20;
        options.settings.user_max_concurrent_turns = 100;
    })
    .await;
    let (token, _) = app.guest().await;
    let mut client = app.connect(&token).await;
    for i in 0..20 {
        let ack = try_send(&mut client, &format!("chat-{i}"), &format!("m{i}")).await;
        assert_eq!(ack["type"], "ack", "message {i} is within the limit: {ack}");
    }
    let refused = try_send(&mut client, "chat-20", "m20").await;
    assert_rate_limited(&refused, "chat-20", 60_000);
    assert_eq!(refused["requestId"], "req-m20");
    assert_not_stored(&app, "chat-20", &token).await;
    let (_, list) = app.get_json("/api/chats", &token).await;
    let chats = list["chats"].as_array().unwrap();
    assert!(
        chats.iter().all(|c| c["id"] != "chat-20"),
        "the refused chat is not listed: {list}"
    );

    // Another user has a minute of their own.
    let (other_token, _) = app.guest().await;
    let mut other = app.connect(&other_token).await;
    let ack = try_send(&mut other, "chat-other", "o1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_fourth_concurrent_turn_is_refused_until_one_ends() {
    // Five tokens a second: every reply streams for seconds, so three run at once.
    let app = TestApp::start_with(5.0, |options| {
        options.settings.user_max_concurrent_turns = 3;
        options.settings.user_messages_per_minute = 100;
    })
    .await;
    let (token, _) = app.guest().await;
    let mut client = app.connect(&token).await;
    let mut runs = Vec::new();
    for i in 0..3 {
        let ack = try_send(&mut client, &format!("chat-{i}"), &format!("m{i}")).await;
        assert_eq!(ack["type"], "ack", "turn {i} is within the limit: {ack}");
        runs.push(ack["runId"].as_str().unwrap().to_owned());
    }
    let refused = try_send(&mut client, "chat-3", "m3").await;
    assert_rate_limited(&refused, "chat-3", 2_000);
    assert_not_stored(&app, "chat-3", &token).await;

    // Another user is not held back by this one's turns.
    let (other_token, _) = app.guest().await;
    let mut other = app.connect(&other_token).await;
    let ack = try_send(&mut other, "chat-other", "o1").await;
    assert_eq!(ack["type"], "ack", "{ack}");

    // One turn ends (stopped): its slot is free, and the fourth is accepted.
    client
        .send(json!({"action": "stop", "requestId": "stop-0", "chatId": "chat-0"}))
        .await;
    loop {
        let frame = client.recv_type("turn-complete").await;
        if frame["chatId"] == "chat-0" {
            assert_eq!(frame["runId"], runs[0].as_str());
            break;
        }
    }
    let ack = try_send(&mut client, "chat-3", "m3").await;
    assert_eq!(ack["type"], "ack", "a slot was freed: {ack}");
    let refused = try_send(&mut client, "chat-4", "m4").await;
    assert_rate_limited(&refused, "chat-4", 2_000);
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn new_guests_from_one_address_are_limited_per_hour_with_429_and_retry_after() {
    let app = TestApp::start_with(2000.0, |options| {
        options.settings.guest_sessions_per_ip_per_hour = 3;
    })
    .await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(app.guest().await.0);
    }
    let refused = app.http.post(app.url("/api/session")).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    let retry_after_header: u64 = refused
        .headers()
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=3600).contains(&retry_after_header),
        "{retry_after_header}"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let retry_after_ms = body["error"]["retryAfterMs"]
        .as_u64()
        .expect("retryAfterMs");
    assert!((1..=3_600_000).contains(&retry_after_ms), "{body}");
    assert_eq!(retry_after_header, retry_after_ms.div_ceil(1000));

    // Renewing an existing user's token is not a new guest, and is never limited.
    let renewed = app
        .http
        .post(app.url("/api/session"))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status().as_u16(), 200);
    // The guests made before the limit keep working.
    let (status, _) = app.get_json("/api/chats", &tokens[2]).await;
    assert_eq!(status, 200);
    app.server.stop().await.unwrap();
}
