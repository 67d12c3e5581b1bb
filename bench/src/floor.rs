//! The floor: a bare axum WebSocket server with the two settings TOOLCHAIN.md names (TCP_NODELAY,
//! a 4 KB read buffer) that answers each `send-message` with the frames chatrun sends (`ack`,
//! `turn-started`, `events`, `turn-complete`), at the same pace and with the same coalescing
//! (the first token at once, later ones gathered for 50 ms), persisting nothing. Whatever chatrun
//! spends beyond this is the price of durability and of its own code.

use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;

/// chatrun's default `CHAT_FRAME_INTERVAL_MS`.
const FRAME_INTERVAL: Duration = Duration::from_millis(50);

/// Words of the replies the floor and the Node peer stream (`bench/node/server.mjs` has the same
/// list): prose of about the offline model's word length.
pub const WORDS: &[&str] = &[
    "Good",
    "question.",
    "The",
    "short",
    "answer",
    "is",
    "that",
    "it",
    "depends",
    "on",
    "how",
    "the",
    "parts",
    "fit",
    "together,",
    "so",
    "it",
    "helps",
    "to",
    "start",
    "from",
    "a",
    "concrete",
    "example",
    "and",
    "check",
    "each",
    "step",
    "before",
    "trusting",
    "it.",
];

/// The reply of `tokens` tokens, each a word and the space after it.
pub fn reply(tokens: usize) -> Vec<String> {
    (0..tokens)
        .map(|i| format!("{} ", WORDS[i % WORDS.len()]))
        .collect()
}

/// Serves `/api/health`, `/api/session` and `/ws` on `127.0.0.1:port` until killed.
/// # Errors
/// The port cannot be bound.
pub async fn serve(port: u16, tokens: usize, rate: f64) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/api/health", get(|| async { "ok" }))
        .route(
            "/api/session",
            post(|| async { axum::Json(json!({"token": "floor"})) }),
        )
        .route(
            "/ws",
            get(move |ws: WebSocketUpgrade| async move {
                ws.read_buffer_size(4096)
                    .on_upgrade(move |socket| connection(socket, tokens, rate))
            }),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

/// A frame with its fields in this order, `type` first as chatrun's serde enums write it
/// (`json!` would sort the keys).
fn frame(fields: &[(&str, Value)]) -> Message {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    Message::Text(format!("{{{}}}", body.join(",")).into())
}

async fn connection(socket: WebSocket, tokens: usize, rate: f64) {
    let (mut tx, mut rx) = socket.split();
    let per_token = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut next_id = 1u64;
    let mut turn = 0u64;
    while let Some(Ok(message)) = rx.next().await {
        let Message::Text(body) = message else {
            continue;
        };
        let request: Value = serde_json::from_str(&body).unwrap_or_default();
        let chat_id = request["chatId"].as_str().unwrap_or("c").to_owned();
        let request_id = request["requestId"].clone();
        turn += 1;
        let run_id = "run-floor";
        let assistant = format!("a{turn}");
        let events = |first: u64, chunks: Value| {
            frame(&[
                ("type", json!("events")),
                ("chatId", json!(chat_id)),
                ("runId", json!(run_id)),
                ("firstEventId", json!(first)),
                ("chunks", chunks),
                ("replay", json!(false)),
            ])
        };
        let ack = frame(&[
            ("type", json!("ack")),
            ("requestId", request_id),
            ("chatId", json!(chat_id)),
            ("runId", json!(run_id)),
            ("accessToken", json!("floor")),
            ("userMessageId", json!(format!("u{turn}"))),
            ("assistantMessageId", json!(assistant)),
        ]);
        let started = frame(&[
            ("type", json!("turn-started")),
            ("chatId", json!(chat_id)),
            ("runId", json!(run_id)),
            ("userMessage", request["message"].clone()),
            ("assistantMessageId", json!(assistant)),
            ("firstEventId", json!(next_id)),
        ]);
        if tx.send(ack).await.is_err() || tx.send(started).await.is_err() {
            return;
        }
        let mut words = reply(tokens).into_iter();
        let first = words.next().unwrap_or_default();
        let head = json!([{"type": "start", "messageId": assistant}, {"type": "start-step"},
                          {"type": "text-start", "id": "t1"},
                          {"type": "text-delta", "id": "t1", "delta": first}]);
        if tx.send(events(next_id, head)).await.is_err() {
            return;
        }
        next_id += 4;
        let mut pending = String::new();
        let mut deadline: Option<Instant> = None;
        let mut next_token = Instant::now() + per_token;
        let mut words = words.peekable();
        while words.peek().is_some() {
            let wake = match deadline {
                Some(d) if d < next_token => d,
                _ => next_token,
            };
            tokio::time::sleep_until(wake).await;
            if Some(wake) == deadline {
                let chunks = json!([{"type": "text-delta", "id": "t1", "delta": pending}]);
                if tx.send(events(next_id, chunks)).await.is_err() {
                    return;
                }
                next_id += 1;
                pending.clear();
                deadline = None;
            } else if let Some(word) = words.next() {
                pending.push_str(&word);
                deadline.get_or_insert(wake + FRAME_INTERVAL);
                next_token += per_token;
            }
        }
        // As chatrun does, the model's finish right after its last token flushes at once.
        let mut end = Vec::new();
        if !pending.is_empty() {
            end.push(json!({"type": "text-delta", "id": "t1", "delta": pending}));
            next_id += 1;
        }
        end.extend([
            json!({"type": "text-end", "id": "t1"}),
            json!({"type": "finish-step"}),
            json!({"type": "finish", "finishReason": "stop"}),
        ]);
        let first_end = if pending.is_empty() {
            next_id
        } else {
            next_id - 1
        };
        if tx.send(events(first_end, Value::Array(end))).await.is_err() {
            return;
        }
        next_id += 3;
        let complete = frame(&[
            ("type", json!("turn-complete")),
            ("chatId", json!(chat_id)),
            ("runId", json!(run_id)),
            ("lastEventId", json!(next_id - 1)),
            ("accessToken", json!("floor")),
        ]);
        if tx.send(complete).await.is_err() {
            return;
        }
    }
}
