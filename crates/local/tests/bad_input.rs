//! Bad input gets the documented error, never a panic or a hang, and the connection stays
//! usable where API Gateway's would.

mod support;

use futures::SinkExt;
use serde_json::{Value, json};
use support::{Applied, SECRET, TestApp, read_turn};

async fn expect_error(client: &mut support::Client, frame: &str, code: &str) -> Value {
    client.send_raw(frame.to_owned()).await;
    let error = client.recv_type("error").await;
    assert_eq!(error["code"], code, "{frame} -> {error}");
    assert!(!error["message"].as_str().unwrap().is_empty());
    error
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_socket_stays_usable() {
    let app = TestApp::start(3000.0).await;
    let (token, _) = app.guest().await;
    let mut client = app.connect(&token).await;
    expect_error(&mut client, "{not json", "bad_request").await;
    let e = expect_error(
        &mut client,
        r#"{"action":"dance","requestId":"r1"}"#,
        "bad_request",
    )
    .await;
    assert_eq!(e["requestId"], "r1");
    assert!(e["message"].as_str().unwrap().contains("unknown action"));
    expect_error(&mut client, r#"{"requestId":"r2"}"#, "bad_request").await;
    let e = expect_error(
        &mut client,
        r#"{"action":"resume","requestId":"r3"}"#,
        "bad_request",
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("chatId"), "{e}");
    let e = expect_error(
        &mut client,
        r#"{"action":"send-message","requestId":"r4","chatId":"c1"}"#,
        "bad_request",
    )
    .await;
    assert_eq!(e["chatId"], "c1");
    expect_error(
        &mut client,
        r#"{"action":"stop","chatId":"has spaces"}"#,
        "bad_request",
    )
    .await;
    expect_error(
        &mut client,
        r#"{"action":"send-message","chatId":"c1","message":{"id":"m1","role":"user","parts":[]}}"#,
        "bad_request",
    )
    .await;
    expect_error(
        &mut client,
        r#"{"action":"send-message","chatId":"c1","message":{"id":"m1","role":"user","parts":[{"type":"reasoning","text":"x"}]}}"#,
        "bad_request",
    )
    .await;
    expect_error(
        &mut client,
        r#"{"action":"send-message","chatId":"c1","trigger":"regenerate-message"}"#,
        "not_found",
    )
    .await;
    let oversized =
        json!({"action": "ping", "requestId": "big", "pad": "x".repeat(40 * 1024)}).to_string();
    let e = expect_error(&mut client, &oversized, "too_large").await;
    assert_eq!(e["requestId"], "big");
    client.ping().await;
    // A real message still works on the same socket.
    client
        .send_message("c-after-errors", "u1", "still fine?")
        .await;
    read_turn(&mut client, &mut Applied::default()).await;
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_past_the_websocket_limit_closes_the_socket() {
    let app = TestApp::start(3000.0).await;
    let (token, _) = app.guest().await;
    let mut client = app.connect(&token).await;
    client.send_raw("x".repeat(200 * 1024)).await;
    let code = client.closed().await;
    assert_eq!(code, Some(1009), "closed as too big");
    // The server is fine: a new connection works.
    let mut again = app.connect(&token).await;
    again.ping().await;
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_and_expired_tokens_are_refused_before_the_upgrade() {
    let app = TestApp::start(3000.0).await;
    for token in ["", "garbage", "a.b.c"] {
        let err =
            tokio_tungstenite::connect_async(format!("{}?token={token}", app.server.ws_url()))
                .await
                .expect_err("refused");
        match err {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                assert_eq!(response.status().as_u16(), 401)
            }
            other => panic!("expected a 401, got {other:?}"),
        }
    }
    let no_token = tokio_tungstenite::connect_async(app.server.ws_url())
        .await
        .expect_err("refused");
    assert!(
        matches!(no_token, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 401)
    );
    let issuer = chatrun_core::auth::TokenIssuer::new(SECRET);
    let now = chrono::Utc::now().timestamp_millis();
    let expired = issuer.user_token("u", now - 7_200_000, std::time::Duration::from_secs(60));
    let err = tokio_tungstenite::connect_async(format!("{}?token={expired}", app.server.ws_url()))
        .await
        .expect_err("expired token refused");
    assert!(matches!(err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 401));
    let forged = chatrun_core::auth::TokenIssuer::new("another-secret-entirely").user_token(
        "u",
        now,
        std::time::Duration::from_secs(60),
    );
    let (status, body) = app.get_json("/api/chats", &forged).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = app.get_json("/api/chats", &expired).await;
    assert_eq!(status, 401);
    let r = app.http.get(app.url("/api/chats")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn someone_elses_chat_is_not_found_for_every_action_and_path() {
    let app = TestApp::start(3000.0).await;
    let (alice, _) = app.guest().await;
    let (mallory, _) = app.guest().await;
    let mut a = app.connect(&alice).await;
    let ack = a.send_message("alice-chat", "u1", "private thoughts").await;
    read_turn(&mut a, &mut Applied::default()).await;

    let mut m = app.connect(&mallory).await;
    let e = expect_error(
        &mut m,
        &json!({"action":"send-message","requestId":"x1","chatId":"alice-chat","message":{"id":"m9","role":"user","parts":[{"type":"text","text":"hi"}]}}).to_string(),
        "not_found",
    )
    .await;
    assert_eq!(
        (e["requestId"].as_str(), e["chatId"].as_str()),
        (Some("x1"), Some("alice-chat"))
    );
    expect_error(
        &mut m,
        r#"{"action":"send-message","chatId":"alice-chat","trigger":"regenerate-message"}"#,
        "not_found",
    )
    .await;
    expect_error(
        &mut m,
        r#"{"action":"resume","chatId":"alice-chat","lastEventId":0}"#,
        "not_found",
    )
    .await;
    expect_error(
        &mut m,
        r#"{"action":"stop","chatId":"alice-chat"}"#,
        "not_found",
    )
    .await;
    m.send(json!({"action":"unsubscribe","requestId":"x2","chatId":"alice-chat"}))
        .await;
    let u = m.recv_type("unsubscribed").await;
    assert_eq!(u["requestId"], "x2", "unsubscribe reveals nothing");

    for (method, body) in [
        ("GET", None),
        ("PATCH", Some(json!({"title": "mine now"}))),
        ("DELETE", None),
    ] {
        let mut request = app
            .http
            .request(method.parse().unwrap(), app.url("/api/chats/alice-chat"))
            .bearer_auth(&mallory);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{method}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "not_found");
    }
    let (_, list) = app.get_json("/api/chats", &mallory).await;
    assert_eq!(list["chats"].as_array().unwrap().len(), 0);

    // A run-scoped access token reaches its own chat only, and cannot send.
    let access = ack["accessToken"].as_str().unwrap();
    let mut scoped = app.connect(access).await;
    expect_error(
        &mut scoped,
        &json!({"action":"send-message","chatId":"alice-chat","message":{"id":"m2","role":"user","parts":[{"type":"text","text":"hi"}]}}).to_string(),
        "forbidden",
    )
    .await;
    scoped
        .send(json!({"action":"resume","chatId":"alice-chat","lastEventId":0}))
        .await;
    assert_eq!(scoped.recv_type("subscribed").await["chatId"], "alice-chat");
    expect_error(
        &mut scoped,
        r#"{"action":"resume","chatId":"other-chat","lastEventId":0}"#,
        "not_found",
    )
    .await;
    // DESIGN §7: refused on every HTTP path, even its own chat's history (which would hand
    // it a fresh access token, renewing a leaked one forever).
    let (status, _) = app.get_json("/api/chats/alice-chat", access).await;
    assert_eq!(status, 403, "an access token cannot read even its own chat");
    let (status, _) = app.get_json("/api/chats", access).await;
    assert_eq!(status, 403, "nor list the user's chats");
    // Alice's chat is untouched.
    let chat = app.chat("alice-chat", &alice).await;
    assert_eq!(chat["messages"].as_array().unwrap().len(), 2);
    assert_eq!(chat["title"], "private thoughts");
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn http_api_validates_input_and_manages_chats() {
    let app = TestApp::start(3000.0).await;
    let (token, user) = app.guest().await;
    assert!(user.starts_with("guest-"));
    // A fresh token for the same user.
    let again: Value = app
        .http
        .post(app.url("/api/session"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["userId"], user.as_str());
    let (status, health) = app.get_json("/api/health", &token).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, models) = app.get_json("/api/models", &token).await;
    assert_eq!(status, 200);
    assert_eq!(models["models"][0]["offline"], true);
    assert_eq!(models["default"], models["models"][0]["id"]);

    let mut client = app.connect(&token).await;
    for i in 0..3 {
        client
            .send_message(
                &format!("chat-{i}"),
                &format!("u{i}"),
                &format!("question {i}"),
            )
            .await;
        read_turn(&mut client, &mut Applied::default()).await;
    }
    let (_, list) = app.get_json("/api/chats", &token).await;
    let ids: Vec<&str> = list["chats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat-2", "chat-1", "chat-0"], "newest first");
    let (status, _) = app.get_json("/api/chats?cursor=not-a-cursor", &token).await;
    assert_eq!(status, 400);

    let rename = |body: Value| {
        app.http
            .patch(app.url("/api/chats/chat-1"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let r = rename(json!({"title": "  Renamed   chat "})).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["title"], "Renamed chat");
    assert_eq!(rename(json!({"title": "   "})).await.unwrap().status(), 400);
    assert_eq!(rename(json!({"name": "x"})).await.unwrap().status(), 400);
    let r = app
        .http
        .patch(app.url("/api/chats/chat-1"))
        .bearer_auth(&token)
        .body("{broken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (status, _) = app.get_json("/api/chats/bad%20id", &token).await;
    assert_eq!(status, 400);
    let (status, _) = app.get_json("/api/chats/missing", &token).await;
    assert_eq!(status, 404);
    let r = app
        .http
        .delete(app.url("/api/chats/chat-0"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, _) = app.get_json("/api/chats/chat-0", &token).await;
    assert_eq!(status, 404);
    let (_, list) = app.get_json("/api/chats", &token).await;
    let titles: Vec<&str> = list["chats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Renamed chat", "question 2"]);
    let (status, _) = app.get_json("/api/nothing-here", &token).await;
    assert_eq!(status, 404);
    app.server.stop().await.unwrap();
}

/// One case of `tests/corpus/`: a JSON header line, then the exact bytes to send.
struct Case {
    name: String,
    header: Value,
    payload: Vec<u8>,
}

fn corpus() -> Vec<Case> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "case"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            let split = bytes.iter().position(|b| *b == b'\n').unwrap();
            let header: Value = serde_json::from_slice(&bytes[..split]).unwrap();
            let mut payload = bytes[split + 1..].to_vec();
            if let Some(size) = header["pad_to"].as_u64() {
                let text = String::from_utf8(payload).unwrap();
                let fill = (size as usize).saturating_sub(text.len() - "@PAD@".len());
                payload = text.replace("@PAD@", &"x".repeat(fill)).into_bytes();
            }
            Case {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                header,
                payload,
            }
        })
        .collect()
}

/// The bad input corpus: every WebSocket frame and HTTP request in `tests/corpus/` gets its
/// documented answer, the socket stays usable unless API Gateway would close it, and the server
/// never panics (a turn still runs at the end).
#[tokio::test]
async fn the_bad_input_corpus_gets_documented_errors_and_breaks_nothing() {
    let app = TestApp::start(3000.0).await;
    let (token, _) = app.guest().await;
    let chat = "corpus-chat";
    let mut client = app.connect(&token).await;
    client.send_message(chat, "seed", "a chat to aim at").await;
    read_turn(&mut client, &mut Applied::default()).await;
    let cases = corpus();
    let (mut frames, mut requests, mut closes) = (0, 0, 0);
    for case in &cases {
        let h = &case.header;
        let payload = String::from_utf8_lossy(&case.payload).replace("{chat}", chat);
        match h["kind"].as_str().unwrap() {
            kind @ ("ws" | "ws-binary") => {
                frames += 1;
                if kind == "ws-binary" {
                    client
                        .ws
                        .send(tokio_tungstenite::tungstenite::Message::Binary(
                            case.payload.clone().into(),
                        ))
                        .await
                        .unwrap();
                } else {
                    client.send_raw(payload.clone()).await;
                }
                if let Some(code) = h["close"].as_u64() {
                    assert_eq!(client.closed().await, Some(code as u16), "{}", case.name);
                    closes += 1;
                    client = app.connect(&token).await;
                } else {
                    let error = client.recv_type("error").await;
                    assert_eq!(error["code"], h["code"], "{}: {error}", case.name);
                    assert!(
                        !error["message"].as_str().unwrap_or_default().is_empty(),
                        "{}",
                        case.name
                    );
                    if let Some(request_id) = h["request_id"].as_str() {
                        assert_eq!(error["requestId"], request_id, "{}", case.name);
                    }
                }
                // The same socket still answers.
                client.ping().await;
            }
            "http" => {
                requests += 1;
                let path = h["path"].as_str().unwrap().replace("{chat}", chat);
                let mut request = app
                    .http
                    .request(
                        h["method"].as_str().unwrap().parse().unwrap(),
                        app.url(&path),
                    )
                    .bearer_auth(&token);
                if !case.payload.is_empty() {
                    let body =
                        if case.payload.is_ascii() || std::str::from_utf8(&case.payload).is_ok() {
                            payload.clone().into_bytes()
                        } else {
                            case.payload.clone()
                        };
                    request = request
                        .header("content-type", "application/json")
                        .body(body);
                }
                let r = request.send().await.unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                assert_eq!(
                    status as u64,
                    h["status"].as_u64().unwrap(),
                    "{}: {body}",
                    case.name
                );
                if let Some(code) = h["code"].as_str() {
                    assert_eq!(body["error"]["code"], code, "{}: {body}", case.name);
                }
                if let Some(title) = h["title"].as_str() {
                    assert_eq!(body["title"], title, "{}: {body}", case.name);
                }
            }
            other => panic!("{}: unknown kind {other}", case.name),
        }
    }
    // Nothing broke: the server answers, the chat is intact, and a turn still runs.
    let (status, _) = app.get_json("/api/health", &token).await;
    assert_eq!(status, 200);
    let stored = app.chat(chat, &token).await;
    assert_eq!(stored["messages"].as_array().unwrap().len(), 2, "{stored}");
    let mut fresh = app.connect(&token).await;
    fresh
        .send_message("after-corpus", "u-after", "still fine?")
        .await;
    read_turn(&mut fresh, &mut Applied::default()).await;
    println!(
        "bad input corpus: {} inputs ({frames} WebSocket frames, {requests} HTTP requests), \
         each with its documented answer; {closes} closed the socket as API Gateway would; 0 panics",
        cases.len()
    );
    assert!(cases.len() >= 50, "the corpus shrank: {}", cases.len());
    app.server.stop().await.unwrap();
}
