//! Starts the real gateway on a random port for a test, and talks to it as a client would.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use chatrun_core::chunk::{MessageAccumulator, UIMessageChunk};
use chatrun_core::config::{FrameCadence, ModelSettings, Settings};
use chatrun_local::{RunningServer, ServeOptions};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "test-secret-0123456789abcdef";
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestApp {
    pub server: RunningServer,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    /// DynamoDB Local and moto, when the tests run with `CHATRUN_TEST_BACKEND=aws`.
    _emulators: Vec<chatrun_aws::emulators::Emulator>,
}

/// With `CHATRUN_TEST_BACKEND=aws`, the same tests run on the AWS adapters against DynamoDB
/// Local and moto (started here, stopped with the app).
async fn aws_backend(options: &mut ServeOptions) -> Vec<chatrun_aws::emulators::Emulator> {
    if std::env::var("CHATRUN_TEST_BACKEND").as_deref() != Ok("aws") {
        return Vec::new();
    }
    let (dynamo, moto) = tokio::join!(
        chatrun_aws::emulators::dynamodb_local(),
        chatrun_aws::emulators::moto()
    );
    options.backend = chatrun_local::options::BackendKind::Aws;
    options.aws.dynamodb_endpoint = Some(dynamo.endpoint.clone());
    options.aws.sqs_endpoint = Some(moto.endpoint.clone());
    options.aws.create_resources = true;
    vec![dynamo, moto]
}

pub fn options(dir: &std::path::Path, tokens_per_sec: f64) -> ServeOptions {
    let mut settings = Settings::with_secret(SECRET);
    settings.frame_cadence = FrameCadence::fixed(Duration::from_millis(30));
    // The suites drive hundreds of turns from one guest and many guests from one address; only
    // tests/limits.rs is about the limits, and it sets its own.
    settings.user_max_concurrent_turns = u32::MAX;
    settings.user_messages_per_minute = u32::MAX;
    settings.guest_sessions_per_ip_per_hour = u32::MAX;
    let mut options = ServeOptions::new(
        dir.to_path_buf(),
        settings,
        ModelSettings::Offline { tokens_per_sec },
    );
    options.web_dir = dir.join("no-web");
    options
}

impl TestApp {
    pub async fn start(tokens_per_sec: f64) -> TestApp {
        Self::start_with(tokens_per_sec, |_| {}).await
    }

    pub async fn start_with(tokens_per_sec: f64, tweak: impl FnOnce(&mut ServeOptions)) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut options = options(dir.path(), tokens_per_sec);
        tweak(&mut options);
        let emulators = aws_backend(&mut options).await;
        let mut server = None;
        // DynamoDB Local may still be warming up: give it a few tries.
        for attempt in 0..20 {
            match chatrun_local::spawn(options.clone()).await {
                Ok(s) => {
                    server = Some(s);
                    break;
                }
                Err(e) if attempt < 19 && !emulators.is_empty() => {
                    eprintln!("backend not ready yet: {e:#}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("server start: {e:#}"),
            }
        }
        TestApp {
            server: server.expect("the server started"),
            dir,
            http: reqwest::Client::new(),
            _emulators: emulators,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.http_url())
    }

    /// A new guest: `(token, userId)`.
    pub async fn guest(&self) -> (String, String) {
        let v: Value = self
            .http
            .post(self.url("/api/session"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            v["token"].as_str().unwrap().into(),
            v["userId"].as_str().unwrap().into(),
        )
    }

    pub async fn get_json(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn chat(&self, chat_id: &str, token: &str) -> Value {
        let (status, body) = self.get_json(&format!("/api/chats/{chat_id}"), token).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn connect(&self, token: &str) -> Client {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("{}?token={token}", self.server.ws_url()))
                .await
                .expect("websocket connects");
        Client {
            ws,
            held: Vec::new(),
        }
    }
}

impl Client {
    pub fn from_stream(
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Self {
        Client {
            ws,
            held: Vec::new(),
        }
    }
}

pub struct Client {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Frames read while waiting for something else.
    held: Vec<Value>,
}

impl Client {
    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, text: String) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// The next frame (held ones first).
    pub async fn recv(&mut self) -> Value {
        if !self.held.is_empty() {
            return self.held.remove(0);
        }
        self.recv_from_socket().await
    }

    /// The next frame off the socket, whatever is held.
    async fn recv_from_socket(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("the socket is open")
                .expect("a readable frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Close(frame) => panic!("socket closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Reads until a frame of `kind` arrives; the others are kept for later reads.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        if let Some(i) = self.held.iter().position(|f| f["type"] == kind) {
            return self.held.remove(i);
        }
        let mut skipped = Vec::new();
        loop {
            let frame = {
                let message = tokio::time::timeout(WAIT, self.ws.next())
                    .await
                    .unwrap_or_else(|_| panic!("no {kind} frame within the wait; saw {skipped:?}"))
                    .expect("the socket is open")
                    .expect("a readable frame");
                match message {
                    Message::Text(text) => serde_json::from_str::<Value>(&text).unwrap(),
                    Message::Close(frame) => {
                        panic!("socket closed while waiting for {kind}: {frame:?}")
                    }
                    _ => continue,
                }
            };
            if frame["type"] == kind {
                self.held.extend(skipped);
                return frame;
            }
            skipped.push(frame);
        }
    }

    /// Waits for the socket to close and returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("closes within the wait")
            {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn send_message(&mut self, chat_id: &str, message_id: &str, text: &str) -> Value {
        self.send(json!({
            "action": "send-message", "requestId": format!("req-{message_id}"), "chatId": chat_id,
            "trigger": "submit-message",
            "message": {"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}]}
        }))
        .await;
        let ack = self.recv_type_or_error("ack").await;
        assert_eq!(ack["type"], "ack", "{ack}");
        ack
    }

    /// The frame of `kind`, or an error frame if one comes first.
    pub async fn recv_type_or_error(&mut self, kind: &str) -> Value {
        let wanted = |f: &Value| f["type"] == kind || f["type"] == "error";
        if let Some(i) = self.held.iter().position(wanted) {
            return self.held.remove(i);
        }
        loop {
            let frame = self.recv_from_socket().await;
            if wanted(&frame) {
                return frame;
            }
            self.held.push(frame);
            if self.held.len() > 10_000 {
                panic!("no {kind}");
            }
        }
    }

    pub async fn ping(&mut self) {
        self.send(json!({"action": "ping", "requestId": "p"})).await;
        let pong = self.recv_type("pong").await;
        assert_eq!(pong["requestId"], "p");
    }
}

/// Applies `events` frames by event id as the web transport does: drops what it has, holds
/// what comes early, never applies an id twice.
#[derive(Default)]
pub struct Applied {
    pub run_id: Option<String>,
    pub last: u64,
    pub chunks: Vec<(u64, UIMessageChunk)>,
    early: BTreeMap<u64, UIMessageChunk>,
    pub duplicates_dropped: usize,
    /// Every frame `read_turn` read, in short (type, ids), for failure messages.
    pub frames_seen: Vec<String>,
}

impl Applied {
    pub fn starting_at(run_id: &str, last: u64) -> Self {
        Applied {
            run_id: Some(run_id.into()),
            last,
            ..Default::default()
        }
    }

    pub fn apply(&mut self, frame: &Value) {
        assert_eq!(frame["type"], "events");
        let run = frame["runId"].as_str().unwrap();
        if self.run_id.as_deref() != Some(run) {
            self.run_id = Some(run.into());
            self.last = 0;
        }
        let first = frame["firstEventId"].as_u64().unwrap();
        let chunks: Vec<UIMessageChunk> = serde_json::from_value(frame["chunks"].clone()).unwrap();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let id = first + i as u64;
            if id <= self.last || self.early.contains_key(&id) {
                self.duplicates_dropped += 1;
                continue;
            }
            self.early.insert(id, chunk);
        }
        while let Some(chunk) = self.early.remove(&(self.last + 1)) {
            self.last += 1;
            self.chunks.push((self.last, chunk));
        }
    }

    pub fn has_gap(&self) -> bool {
        !self.early.is_empty()
    }

    /// The message the chunks since the last `start` build.
    pub fn message(&self) -> chatrun_core::message::UIMessage {
        let start = self
            .chunks
            .iter()
            .rposition(|(_, c)| matches!(c, UIMessageChunk::Start { .. }))
            .expect("a start chunk");
        let mut acc = MessageAccumulator::new("none");
        acc.apply_all(self.chunks[start..].iter().map(|(_, c)| c));
        acc.into_message()
    }

    pub fn finished(&self) -> bool {
        self.chunks.last().is_some_and(|(_, c)| c.is_finish())
    }
}

/// Reads frames until `turn-complete`, applying every `events` frame.
pub async fn read_turn(client: &mut Client, applied: &mut Applied) -> Value {
    loop {
        let frame = client.recv().await;
        applied.frames_seen.push(frame_summary(&frame));
        match frame["type"].as_str().unwrap() {
            "events" => applied.apply(&frame),
            "turn-complete" => return frame,
            "error" => panic!("error frame during a turn: {frame}"),
            _ => {}
        }
    }
}

/// A frame in a few words: its type and the ids that place it (events by their id range).
pub fn frame_summary(frame: &Value) -> String {
    match frame["type"].as_str().unwrap_or("?") {
        "events" => format!(
            "events {}..+{}{}",
            frame["firstEventId"],
            frame["chunks"].as_array().map_or(0, Vec::len),
            if frame["replay"] == true {
                " replay"
            } else {
                ""
            }
        ),
        "subscribed" => format!(
            "subscribed run {} from {} through {} streaming {}",
            frame["runId"], frame["replayFrom"], frame["replayThrough"], frame["streaming"]
        ),
        other => other.to_owned(),
    }
}

/// Reads on until nothing is held past a gap: a resume's replay is posted by another handler
/// than the live frames, and may arrive after the turn's `turn-complete` (the web transport
/// keeps applying it then). A replay that never comes fails on the wait.
pub async fn read_until_whole(client: &mut Client, applied: &mut Applied) {
    let deadline = tokio::time::Instant::now() + WAIT / 2;
    while applied.has_gap() {
        let Ok(frame) = tokio::time::timeout_at(deadline, client.recv()).await else {
            panic!(
                "the gap after event {} was never filled; read {:?}",
                applied.last, applied.frames_seen
            );
        };
        applied.frames_seen.push(frame_summary(&frame));
        match frame["type"].as_str().unwrap() {
            "events" => applied.apply(&frame),
            "error" => panic!("error frame while waiting for a replay: {frame}"),
            _ => {}
        }
    }
}

pub fn user_and_text(message: &Value) -> (String, String) {
    let text = message["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "text")
        .map(|p| p["text"].as_str().unwrap())
        .collect::<String>();
    (message["role"].as_str().unwrap().into(), text)
}
