//! `OpenAiModel` against a local HTTP server that speaks OpenAI's `chat.completions` SSE
//! streaming format, written here so every behaviour is under the test's control.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chatrun_core::chunk::FinishReason;
use chatrun_core::error::ModelError;
use chatrun_core::message::UIMessage;
use chatrun_core::ports::{LanguageModel, ModelEvent, ModelRequest};
use chatrun_models::OpenAiModel;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// What a provider's error may say: it must reach the log, never a user.
const LEAKY_MESSAGE: &str =
    "Incorrect API key provided: sk-live-0123abcd. See https://platform.example.com/keys";

/// A message shown to users names the provider, the status and a reference, and nothing that
/// could be a key, a URL or the provider's free text.
fn assert_safe(message: &str, provider: &str, status: Option<u16>) {
    assert!(
        message.starts_with(&format!("{provider} error")),
        "{message}"
    );
    if let Some(status) = status {
        assert!(message.contains(&format!("HTTP {status}")), "{message}");
    }
    assert!(message.contains("reference "), "{message}");
    for leak in [
        "sk-",
        "http://",
        "https://",
        "127.0.0.1",
        "Incorrect",
        "upstream",
    ] {
        assert!(!message.contains(leak), "{leak} in {message}");
    }
    assert!(message.len() < 120, "{message}");
}

/// What the fake server does with the next request.
#[derive(Clone)]
enum Script {
    /// Send these SSE data lines, then close cleanly.
    Events(Vec<String>),
    /// Send these, then break the connection without finishing.
    EventsThenDrop(Vec<String>),
    /// Answer with this status and an OpenAI error body.
    Status(u16),
    /// Send these, then keep the stream open until the client goes away.
    EventsThenHang(Vec<String>),
}

#[derive(Clone)]
struct Fake {
    script: Script,
    requests: Arc<Mutex<Vec<Value>>>,
    client_gone: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    .to_string()
}

fn usage_chunk() -> String {
    json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
           "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16,
                     "completion_tokens_details": {"reasoning_tokens": 2}}})
    .to_string()
}

async fn completions(State(fake): State<Fake>, body: Bytes) -> Response {
    fake.requests
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap());
    let sse = |lines: &[String]| {
        lines
            .iter()
            .map(|l| format!("data: {l}\n\n"))
            .collect::<String>()
    };
    match fake.script {
        Script::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            [(header::CONTENT_TYPE, "application/json")],
            json!({"error": {"message": LEAKY_MESSAGE, "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}).to_string(),
        )
            .into_response(),
        Script::Events(lines) => {
            let text = sse(&lines) + "data: [DONE]\n\n";
            ([(header::CONTENT_TYPE, "text/event-stream")], text).into_response()
        }
        Script::EventsThenDrop(lines) => {
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
            tokio::spawn(async move {
                tx.send(Ok(Bytes::from(sse(&lines)))).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tx.send(Err(std::io::Error::other("connection reset"))).await;
            });
            ([(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(tokio_stream_from(rx))).into_response()
        }
        Script::EventsThenHang(lines) => {
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
            let gone = fake.client_gone.lock().unwrap().take();
            tokio::spawn(async move {
                tx.send(Ok(Bytes::from(sse(&lines)))).await.unwrap();
                // The body's receiver is dropped when the client disconnects.
                tx.closed().await;
                if let Some(gone) = gone {
                    let _ = gone.send(());
                }
            });
            let body = Body::from_stream(tokio_stream_from(rx));
            ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
        }
    }
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn serve(script: Script) -> (String, Fake, Option<oneshot::Receiver<()>>) {
    let (gone_tx, gone_rx) = oneshot::channel();
    let fake = Fake {
        script,
        requests: Arc::default(),
        client_gone: Arc::new(Mutex::new(Some(gone_tx))),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), fake, Some(gone_rx))
}

fn request() -> ModelRequest {
    let mut answer = UIMessage::user_text("a1", "Hi! How can I help?");
    answer.role = chatrun_core::message::Role::Assistant;
    ModelRequest {
        model: "test-model".into(),
        messages: vec![
            UIMessage::user_text("u1", "Hello"),
            answer,
            UIMessage::user_text("u2", "Tell me a joke"),
        ],
    }
}

#[tokio::test]
async fn a_stream_yields_its_deltas_then_finish_with_usage_and_sends_the_history() {
    let (url, fake, _) = serve(Script::Events(vec![
        chunk(json!({"role": "assistant", "content": ""}), None),
        chunk(json!({"content": "Why did "}), None),
        chunk(json!({"content": "the chicken"}), None),
        chunk(json!({"content": " cross?"}), Some("stop")),
        usage_chunk(),
    ]))
    .await;
    let model = OpenAiModel::new("sk-test", Some(&url), "test-model", "test");
    let events: Vec<_> = model.stream(request()).await.unwrap().collect().await;
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            Ok(ModelEvent::TextDelta(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "Why did the chicken cross?");
    match events.last().unwrap() {
        Ok(ModelEvent::Finish {
            reason: FinishReason::Stop,
            usage: Some(usage),
        }) => {
            assert_eq!(
                (
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.reasoning_tokens
                ),
                (Some(11), Some(5), Some(2))
            );
        }
        other => panic!("expected finish, got {other:?}"),
    }
    let sent = fake.requests.lock().unwrap()[0].clone();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["model"], "test-model");
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(sent["messages"][2]["content"], "Tell me a joke");
}

#[tokio::test]
async fn reasoning_deltas_are_mapped() {
    let (url, _, _) = serve(Script::Events(vec![
        chunk(json!({"reasoning_content": "Think "}), None),
        chunk(json!({"reasoning": "harder."}), None),
        chunk(json!({"content": "42"}), Some("length")),
    ]))
    .await;
    let model = OpenAiModel::new("k", Some(&url), "m", "test");
    let events: Vec<_> = model.stream(request()).await.unwrap().collect().await;
    assert_eq!(
        events[0].as_ref().unwrap(),
        &ModelEvent::ReasoningDelta("Think ".into())
    );
    assert_eq!(
        events[1].as_ref().unwrap(),
        &ModelEvent::ReasoningDelta("harder.".into())
    );
    assert_eq!(
        events[2].as_ref().unwrap(),
        &ModelEvent::TextDelta("42".into())
    );
    assert!(matches!(
        events[3],
        Ok(ModelEvent::Finish {
            reason: FinishReason::Length,
            usage: None
        })
    ));
}

#[tokio::test]
async fn an_error_mid_stream_ends_it_with_a_stream_error() {
    let (url, _, _) = serve(Script::Events(vec![
        chunk(json!({"content": "Partial "}), None),
        json!({"error": {"message": "upstream model failed: 503", "type": "server_error"}})
            .to_string(),
    ]))
    .await;
    let model = OpenAiModel::new("k", Some(&url), "m", "test");
    let events: Vec<_> = model.stream(request()).await.unwrap().collect().await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        events[0].as_ref().unwrap(),
        &ModelEvent::TextDelta("Partial ".into())
    );
    match &events[1] {
        Err(ModelError::Stream(m)) => {
            assert_safe(m, "test", None);
            assert!(m.contains("server_error"), "the code is kept: {m}");
        }
        other => panic!("{other:?}"),
    }

    let (url, _, _) = serve(Script::EventsThenDrop(vec![chunk(
        json!({"content": "Half"}),
        None,
    )]))
    .await;
    let model = OpenAiModel::new("k", Some(&url), "m", "test");
    let events: Vec<_> = model.stream(request()).await.unwrap().collect().await;
    assert_eq!(
        events[0].as_ref().unwrap(),
        &ModelEvent::TextDelta("Half".into())
    );
    match events.last().unwrap() {
        Err(ModelError::Stream(m)) => assert_safe(m, "test", None),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn errors_before_streaming_say_whether_a_retry_helps() {
    for (status, retryable) in [(401, false), (400, false), (429, true), (500, true)] {
        let (url, _, _) = serve(Script::Status(status)).await;
        let model = OpenAiModel::new("k", Some(&url), "m", "test");
        match model.stream(request()).await {
            Err(ModelError::Rejected(m)) => {
                assert!(!retryable, "{status}");
                assert_safe(&m, "test", Some(status));
                assert!(m.contains("invalid_api_key"), "{m}");
            }
            Err(ModelError::Unavailable(m)) => {
                assert!(retryable, "{status}");
                assert_safe(&m, "test", Some(status));
            }
            Ok(_) => panic!("{status} must fail"),
            Err(other) => panic!("{status}: {other:?}"),
        }
    }
    let model = OpenAiModel::new(
        "sk-live-0123abcd",
        Some("http://127.0.0.1:9/v1"),
        "m",
        "test",
    );
    match model.stream(request()).await {
        Err(ModelError::Unavailable(m)) => assert_safe(&m, "test", None),
        other => panic!("{:?}", other.err()),
    }
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_upstream_request() {
    let (url, _, gone) = serve(Script::EventsThenHang(vec![chunk(
        json!({"content": "Once "}),
        None,
    )]))
    .await;
    let model = OpenAiModel::new("k", Some(&url), "m", "test");
    let mut stream = model.stream(request()).await.unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        ModelEvent::TextDelta("Once ".into())
    );
    drop(stream);
    tokio::time::timeout(Duration::from_secs(10), gone.unwrap())
        .await
        .expect("the server sees the client go away")
        .unwrap();
}
