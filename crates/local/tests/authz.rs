//! The authorization matrix (issue 10): every kind of bad credential against every WebSocket
//! action and every HTTP path, each on a chat that exists (someone else's) and on one that does
//! not. Every cell must be denied, and denied with the same answer whether or not the chat
//! exists, so a token never learns which chat ids are taken. Prints its figures.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chatrun_core::auth::{ISSUER, RUN_AUDIENCE, TokenIssuer, USER_AUDIENCE, forge};
use serde_json::{Value, json};
use support::{Applied, Client, SECRET, TestApp, read_turn};
use tokio_tungstenite::tungstenite;

const MISSING: &str = "no-such-chat";

/// Counts what was tried, for the printed figures.
#[derive(Default)]
struct Tally {
    http: usize,
    ws_refused_at_connect: usize,
    ws_frames: usize,
    kinds: BTreeMap<&'static str, usize>,
}

impl Tally {
    fn add(&mut self, kind: &'static str, n: usize) {
        *self.kinds.entry(kind).or_default() += n;
    }

    fn total(&self) -> usize {
        self.http + self.ws_refused_at_connect + self.ws_frames
    }
}

/// Every HTTP path that takes a token, with `{id}` for a chat id.
const HTTP_PATHS: [(&str, &str); 10] = [
    ("GET", "/api/models"),
    ("GET", "/api/chats"),
    ("GET", "/api/chats/{id}"),
    ("GET", "/api/chats/{id}?limit=1"),
    ("GET", "/api/chats/{id}/messages"),
    (
        "GET",
        "/api/chats/{id}/messages?before=not-a-cursor&limit=2",
    ),
    ("PATCH", "/api/chats/{id}"),
    ("DELETE", "/api/chats/{id}"),
    ("POST", "/api/session/revoke"),
    ("GET", "/api/chats?cursor=abc"),
];

async fn http(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, Option<String>, Option<String>) {
    let mut request = app
        .http
        .request(method.parse().unwrap(), app.url(path))
        .timeout(Duration::from_secs(20));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method == "PATCH" {
        request = request.json(&json!({"title": "taken over"}));
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().map(str::to_owned),
        body["error"]["message"].as_str().map(str::to_owned),
    )
}

/// Every HTTP path with this token, on `existing` and on a missing chat: each answers
/// `status`/`code`, identically for both chats.
async fn http_denied(
    app: &TestApp,
    tally: &mut Tally,
    kind: &'static str,
    token: Option<&str>,
    existing: &str,
    status: u16,
    code: &str,
) {
    for (method, path) in HTTP_PATHS {
        let mut answers = Vec::new();
        for chat in [existing, MISSING] {
            let answer = http(app, method, &path.replace("{id}", chat), token).await;
            assert_eq!(
                (answer.0, answer.1.as_deref()),
                (status, Some(code)),
                "{kind}: {method} {path} on {chat}"
            );
            answers.push(answer);
            tally.http += 1;
            tally.add(kind, 1);
        }
        assert_eq!(
            answers[0], answers[1],
            "{kind}: {method} {path} answers alike whether or not the chat exists"
        );
    }
}

/// A WebSocket with this token never opens: `$connect` answers 401.
async fn connect_refused(app: &TestApp, tally: &mut Tally, kind: &'static str, token: &str) {
    let url = format!("{}?token={token}", app.server.ws_url());
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401, "{kind}")
        }
        Err(other) => panic!("{kind}: expected a 401, got {other:?}"),
        Ok(_) => panic!("{kind}: the socket opened"),
    }
    // Every action is denied with it: none can even be sent.
    tally.ws_refused_at_connect += 1;
    tally.add(kind, 1);
}

/// Sends a message and returns its `ack`. (`Client::send_message` spins when frames are held
/// from an earlier turn, such as `session-ended`; `recv_type` does not.)
async fn ask(client: &mut Client, chat: &str, id: &str, text: &str) -> Value {
    let mut frame = send_frame(chat, id);
    frame["message"]["parts"][0]["text"] = json!(text);
    client.send(frame).await;
    client.recv_type("ack").await
}

fn send_frame(chat: &str, id: &str) -> Value {
    json!({"action": "send-message", "requestId": "q", "chatId": chat, "trigger": "submit-message",
           "message": {"id": id, "role": "user", "parts": [{"type": "text", "text": "let me in"}]}})
}

/// Sends `frame` on `chat` and on the missing chat; both answer an `error` with `code`, alike
/// but for the echoed chat id.
async fn frame_denied(
    client: &mut Client,
    tally: &mut Tally,
    kind: &'static str,
    frame: impl Fn(&str) -> Value,
    chat: &str,
    code: &str,
) {
    let mut answers = Vec::new();
    for target in [chat, MISSING] {
        let sent = frame(target);
        client.send(sent.clone()).await;
        let error = client.recv_type("error").await;
        assert_eq!(error["code"], code, "{kind}: {sent} -> {error}");
        assert_eq!(error["chatId"], target, "{kind}: {error}");
        answers.push((error["code"].clone(), error["message"].clone()));
        tally.ws_frames += 1;
        tally.add(kind, 1);
    }
    assert_eq!(
        answers[0], answers[1],
        "{kind}: alike whether or not the chat exists"
    );
}

async fn unsubscribe_reveals_nothing(
    client: &mut Client,
    tally: &mut Tally,
    kind: &'static str,
    chat: &str,
) {
    for target in [chat, MISSING] {
        client
            .send(json!({"action": "unsubscribe", "requestId": "u", "chatId": target}))
            .await;
        let answer = client.recv_type("unsubscribed").await;
        assert_eq!(answer["chatId"], target, "{kind}");
        tally.ws_frames += 1;
        tally.add(kind, 1);
    }
}

#[tokio::test]
async fn every_bad_credential_is_denied_on_every_action_and_path_alike_for_missing_chats() {
    // One turn per session, so a second message starts a new run and the first run's access
    // token becomes a token "of another run".
    let app = TestApp::start_with(3000.0, |o| o.settings.max_turns = 1).await;
    let mut tally = Tally::default();
    let (alice, alice_id) = app.guest().await;
    let (bob, _) = app.guest().await;
    let mut a = app.connect(&alice).await;
    let first = ask(&mut a, "alice-chat", "m1", "private").await;
    read_turn(&mut a, &mut Applied::default()).await;
    let old_run_token = first["accessToken"].as_str().unwrap().to_owned();
    // Opened while its run is current; the run is replaced below.
    let mut old_run_socket = app.connect(&old_run_token).await;
    old_run_socket.ping().await;
    let second = ask(&mut a, "alice-chat", "m2", "more private").await;
    read_turn(&mut a, &mut Applied::default()).await;
    assert_ne!(first["runId"], second["runId"], "a new run");
    let run_token = second["accessToken"].as_str().unwrap().to_owned();
    ask(&mut a, "alice-other", "m3", "another chat").await;
    read_turn(&mut a, &mut Applied::default()).await;

    // Credentials that are not tokens of this deployment, or no longer valid.
    let now = chrono::Utc::now().timestamp_millis();
    let issuer = TokenIssuer::new(SECRET);
    let expired = issuer.user_token(&alice_id, now - 7_200_000, Duration::from_secs(60));
    let forged = TokenIssuer::new("another-deployment-secret-0123456789abcdef").user_token(
        &alice_id,
        now,
        Duration::from_secs(3600),
    );
    let claims = |extra: Value| {
        let mut c = json!({"sub": alice_id, "iss": ISSUER, "aud": USER_AUDIENCE, "jti": "j",
                           "exp": now / 1000 + 3600, "iat": now / 1000, "ver": now});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let chat_only = forge::signed(SECRET, &claims(json!({"chat": "alice-chat"})));
    let run_only = forge::signed(SECRET, &claims(json!({"run": second["runId"]})));
    let run_aud_unscoped = forge::signed(SECRET, &claims(json!({"aud": RUN_AUDIENCE})));
    let foreign_issuer = forge::signed(SECRET, &claims(json!({"iss": "someone-else"})));
    let foreign_audience = forge::signed(SECRET, &claims(json!({"aud": "another-app"})));
    let unsigned = forge::unsigned(&claims(json!({})));
    let invalid: [(&'static str, Option<&str>); 11] = [
        ("no token", None),
        ("garbage", Some("not-a-token")),
        ("bad signature", Some(&forged)),
        ("expired", Some(&expired)),
        ("alg none", Some(&unsigned)),
        ("only a chat claim", Some(&chat_only)),
        ("only a run claim", Some(&run_only)),
        ("run audience, no scope", Some(&run_aud_unscoped)),
        ("another issuer", Some(&foreign_issuer)),
        ("another audience", Some(&foreign_audience)),
        ("empty token", Some("")),
    ];
    for (kind, token) in invalid {
        http_denied(
            &app,
            &mut tally,
            kind,
            token,
            "alice-chat",
            401,
            "unauthorized",
        )
        .await;
        connect_refused(&app, &mut tally, kind, token.unwrap_or("")).await;
    }

    // Another user's valid token: someone else's chat is not found, exactly like a missing one.
    let mut b = app.connect(&bob).await;
    for (method, path) in [
        ("GET", "/api/chats/{id}"),
        ("GET", "/api/chats/{id}?limit=1"),
        ("GET", "/api/chats/{id}/messages"),
        ("GET", "/api/chats/{id}/messages?before=not-a-cursor"),
        ("PATCH", "/api/chats/{id}"),
        ("DELETE", "/api/chats/{id}"),
    ] {
        let on_existing = http(
            &app,
            method,
            &path.replace("{id}", "alice-chat"),
            Some(&bob),
        )
        .await;
        let on_missing = http(&app, method, &path.replace("{id}", MISSING), Some(&bob)).await;
        assert_eq!(on_existing.0, 404, "another user: {method} {path}");
        assert_eq!(on_existing, on_missing, "another user: {method} {path}");
        tally.http += 2;
        tally.add("another user's token", 2);
    }
    let (status, list) = app.get_json("/api/chats", &bob).await;
    assert_eq!(status, 200);
    assert!(
        list["chats"].as_array().unwrap().is_empty(),
        "none of alice's chats: {list}"
    );
    tally.http += 1;
    tally.add("another user's token", 1);
    frame_denied(&mut b, &mut tally, "another user's token", |c| {
        json!({"action": "send-message", "requestId": "q", "chatId": c, "trigger": "regenerate-message"})
    }, "alice-chat", "not_found").await;
    frame_denied(
        &mut b,
        &mut tally,
        "another user's token",
        |c| json!({"action": "resume", "requestId": "q", "chatId": c, "lastEventId": 0}),
        "alice-chat",
        "not_found",
    )
    .await;
    frame_denied(
        &mut b,
        &mut tally,
        "another user's token",
        |c| json!({"action": "stop", "requestId": "q", "chatId": c}),
        "alice-chat",
        "not_found",
    )
    .await;
    // A send to a taken id is refused; to a free id it makes Bob's own chat (ids are the
    // client's, DESIGN §3), so only the taken one is in the matrix.
    b.send(send_frame("alice-chat", "b1")).await;
    let error = b.recv_type("error").await;
    assert_eq!(error["code"], "not_found", "{error}");
    tally.ws_frames += 1;
    tally.add("another user's token", 1);
    unsubscribe_reveals_nothing(&mut b, &mut tally, "another user's token", "alice-chat").await;

    // A run-scoped token is refused on every HTTP path, its own chat included.
    http_denied(
        &app,
        &mut tally,
        "run-scoped token",
        Some(&run_token),
        "alice-chat",
        403,
        "forbidden",
    )
    .await;
    let r = app
        .http
        .post(app.url("/api/session"))
        .bearer_auth(&run_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "an access token does not become its user's token"
    );
    tally.http += 1;
    tally.add("run-scoped token", 1);

    // On the socket it may resume and stop its own run of its own chat only.
    let mut scoped = app.connect(&run_token).await;
    scoped
        .send(json!({"action": "resume", "requestId": "own", "chatId": "alice-chat", "lastEventId": 0}))
        .await;
    assert_eq!(scoped.recv_type("subscribed").await["requestId"], "own");
    frame_denied(
        &mut scoped,
        &mut tally,
        "run-scoped token",
        |c| send_frame(c, "s1"),
        "alice-chat",
        "forbidden",
    )
    .await;
    frame_denied(&mut scoped, &mut tally, "run-scoped token", |c| {
        json!({"action": "send-message", "requestId": "q", "chatId": c, "trigger": "regenerate-message"})
    }, "alice-chat", "forbidden").await;
    frame_denied(
        &mut scoped,
        &mut tally,
        "run-scoped token on another chat",
        |c| json!({"action": "resume", "requestId": "q", "chatId": c, "lastEventId": 0}),
        "alice-other",
        "not_found",
    )
    .await;
    frame_denied(
        &mut scoped,
        &mut tally,
        "run-scoped token on another chat",
        |c| json!({"action": "stop", "requestId": "q", "chatId": c}),
        "alice-other",
        "not_found",
    )
    .await;
    let old_run = first["runId"].as_str().unwrap().to_owned();
    frame_denied(
        &mut scoped,
        &mut tally,
        "run-scoped token naming another run",
        |c| json!({"action": "stop", "requestId": "q", "chatId": c, "runId": old_run}),
        "alice-chat",
        "not_found",
    )
    .await;
    unsubscribe_reveals_nothing(&mut scoped, &mut tally, "run-scoped token", "alice-other").await;

    // A token of a run that is no longer the chat's: refused at `$connect`, and a socket opened
    // with it while it was current can no longer resume or stop.
    connect_refused(
        &app,
        &mut tally,
        "run-scoped token of another run",
        &old_run_token,
    )
    .await;
    frame_denied(
        &mut old_run_socket,
        &mut tally,
        "run-scoped token of another run",
        |c| json!({"action": "resume", "requestId": "q", "chatId": c, "lastEventId": 0}),
        "alice-chat",
        "not_found",
    )
    .await;
    frame_denied(
        &mut old_run_socket,
        &mut tally,
        "run-scoped token of another run",
        |c| json!({"action": "stop", "requestId": "q", "chatId": c}),
        "alice-chat",
        "not_found",
    )
    .await;

    // Revocation: every token alice held until now stops working, on HTTP, at `$connect`, and
    // on sockets opened with them; the fresh token from the revoke works.
    let r = app
        .http
        .post(app.url("/api/session/revoke"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fresh: Value = r.json().await.unwrap();
    assert_eq!(fresh["userId"], alice_id.as_str());
    let fresh = fresh["token"].as_str().unwrap().to_owned();
    http_denied(
        &app,
        &mut tally,
        "revoked user token",
        Some(&alice),
        "alice-chat",
        401,
        "unauthorized",
    )
    .await;
    http_denied(
        &app,
        &mut tally,
        "revoked run-scoped token",
        Some(&run_token),
        "alice-chat",
        401,
        "unauthorized",
    )
    .await;
    connect_refused(&app, &mut tally, "revoked user token", &alice).await;
    connect_refused(&app, &mut tally, "revoked run-scoped token", &run_token).await;
    let renewed: Value = app
        .http
        .post(app.url("/api/session"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(
        renewed["userId"],
        alice_id.as_str(),
        "a revoked token cannot renew itself"
    );
    tally.http += 1;
    tally.add("revoked user token", 1);
    for (kind, socket) in [
        ("revoked user token", &mut a),
        ("revoked run-scoped token", &mut scoped),
    ] {
        socket
            .send(json!({"action": "ping", "requestId": "after-revoke"}))
            .await;
        let error = socket.recv_type("error").await;
        assert_eq!(error["code"], "unauthorized", "{kind}: {error}");
        assert!(
            socket.closed().await.is_some(),
            "{kind}: the socket is closed"
        );
        tally.ws_frames += 1;
        tally.add(kind, 1);
    }
    // Alice carries on with the fresh token, and her chats are untouched.
    let chat = app.chat("alice-chat", &fresh).await;
    assert_eq!(chat["title"], "private");
    assert_eq!(chat["messages"].as_array().unwrap().len(), 4, "{chat}");
    let mut again = app.connect(&fresh).await;
    again.ping().await;

    println!("authorization matrix: {} denials checked", tally.total());
    println!(
        "  HTTP requests: {}; sockets refused at $connect: {}; frames refused: {}",
        tally.http, tally.ws_refused_at_connect, tally.ws_frames
    );
    for (kind, n) in &tally.kinds {
        println!("  {kind}: {n}");
    }
    assert!(tally.total() >= 240, "the matrix shrank: {}", tally.total());
    app.server.stop().await.unwrap();
}

/// The local `@connections` API answers only on loopback, or with the configured secret.
#[tokio::test]
async fn the_management_api_refuses_callers_off_loopback() {
    // An address of this machine that is not loopback (no packet is sent).
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe
        .connect("192.0.2.1:9")
        .expect("a route off loopback (this test needs a non-loopback interface)");
    let lan = probe.local_addr().unwrap().ip();
    assert!(!lan.is_loopback(), "{lan}");
    // Listening on every interface, as `--host 0.0.0.0` does; the test's own calls come from
    // loopback, the "network" ones to the machine's other address.
    let app = TestApp::start_with(3000.0, |o| {
        o.host = std::net::IpAddr::from([0, 0, 0, 0]);
        o.settings.management_secret = Some("management-secret-for-the-test".into());
    })
    .await;
    let port = app.server.addr.port();
    let (token, _) = app.guest().await;
    let mut client = app.connect(&token).await;
    client.ping().await;
    let id = app.server.connection_ids().remove(0);
    let url = format!(
        "http://{}/@connections/{id}",
        std::net::SocketAddr::new(lan, port)
    );
    let frame = r#"{"type":"pong","requestId":"injected"}"#;
    for (method, body) in [("POST", Some(frame)), ("GET", None), ("DELETE", None)] {
        for header in [None, Some("wrong-secret")] {
            let mut request = app.http.request(method.parse().unwrap(), &url);
            if let Some(value) = header {
                request = request.header("x-chatrun-management-secret", value);
            }
            if let Some(body) = body {
                request = request.body(body);
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 403, "{method} with {header:?}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["__type"], "ForbiddenException");
        }
    }
    // Nothing reached the socket; it is still open and usable.
    client.ping().await;
    // With the secret, the network may post (as the functions on AWS may with IAM).
    let r = app
        .http
        .post(&url)
        .header(
            "x-chatrun-management-secret",
            "management-secret-for-the-test",
        )
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(client.recv_type("pong").await["requestId"], "injected");
    app.server.stop().await.unwrap();
}
