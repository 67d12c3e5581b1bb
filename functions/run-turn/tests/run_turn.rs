//! run-turn on in-memory adapters: redeliveries, bad records, failures and dead letters, called
//! with real `SqsEvent`s as Lambda would.

use std::sync::Arc;

use aws_lambda_events::apigw::{
    ApiGatewayWebsocketProxyRequest, ApiGatewayWebsocketProxyRequestContext,
};
use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use chatrun_core::chunk::{MessageAccumulator, UIMessageChunk};
use chatrun_core::config::Settings;
use chatrun_core::domain::{ChatId, Connection, Grant, StreamEvent, TurnJob};
use chatrun_core::error::ModelError;
use chatrun_core::ports::ChatStore;
use chatrun_core::testkit::memory::{ScriptedModel, TestServices, services};
use chatrun_run_turn::{RunTurnDeps, handle};
use serde_json::{Value, json};

const DLQ_ARN: &str = "arn:aws:sqs:local:000000000000:turns-dlq.fifo";
const REPLY: &str = "Tide pools are rocky basins full of life. ";

struct Harness {
    t: TestServices,
    deps: RunTurnDeps,
    model: Arc<ScriptedModel>,
}

async fn harness() -> Harness {
    let t = services(Settings::with_secret("secret-secret-secret"));
    let model = Arc::new(ScriptedModel::new(REPLY));
    let deps = RunTurnDeps {
        services: t.services.clone(),
        model: model.clone(),
        dead_letter_source_arn: Some(DLQ_ARN.into()),
    };
    t.store
        .put_connection(&Connection {
            connection_id: "conn-1".into(),
            owner_id: "user-1".into(),
            grant: Grant::User,
            connected_at: 0,
            expires_at: i64::MAX,
        })
        .await
        .unwrap();
    Harness { t, deps, model }
}

/// Sends a message through the send-message handler, as API Gateway would invoke it.
async fn send(h: &Harness, chat: &str, message_id: &str) -> TurnJob {
    let mut context = ApiGatewayWebsocketProxyRequestContext::default();
    context.connection_id = Some("conn-1".into());
    context.route_key = Some("send-message".into());
    let mut event = ApiGatewayWebsocketProxyRequest::default();
    event.request_context = context;
    event.body = Some(
        json!({"action": "send-message", "chatId": chat,
               "message": {"id": message_id, "role": "user", "parts": [{"type": "text", "text": "Tell me about tide pools"}]}})
        .to_string(),
    );
    chatrun_send_message::handle(&h.t.services, event).await;
    let ack = h.t.connections.frames_of("conn-1").pop().unwrap();
    assert_eq!(ack["type"], "ack", "{ack}");
    h.t.queue.jobs.lock().unwrap().last().unwrap().clone()
}

fn record(id: &str, body: String, source: &str) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.into());
    m.body = Some(body);
    m.event_source_arn = Some(source.into());
    m
}

fn batch(records: Vec<SqsMessage>) -> SqsEvent {
    let mut e = SqsEvent::default();
    e.records = records;
    e
}

fn job_record(id: &str, job: &TurnJob) -> SqsMessage {
    record(
        id,
        serde_json::to_string(job).unwrap(),
        "arn:aws:sqs:local:000000000000:turns.fifo",
    )
}

fn frames_of_type(h: &Harness, kind: &str) -> Vec<Value> {
    h.t.connections
        .frames_of("conn-1")
        .into_iter()
        .filter(|f| f["type"] == kind)
        .collect()
}

#[tokio::test]
async fn the_same_job_delivered_twice_stores_one_reply() {
    let h = harness().await;
    let job = send(&h, "chat-dup", "u1").await;
    let first = handle(&h.deps, batch(vec![job_record("m1", &job)])).await;
    assert!(first.batch_item_failures.is_empty());
    let second = handle(&h.deps, batch(vec![job_record("m1", &job)])).await;
    assert!(
        second.batch_item_failures.is_empty(),
        "a duplicate is acknowledged, not retried"
    );
    let chat = ChatId::parse("chat-dup").unwrap();
    let messages = h.t.store.messages(&chat).await.unwrap();
    assert_eq!(messages.len(), 2, "one reply");
    assert_eq!(messages[1].id, job.assistant_message_id);
    assert_eq!(messages[1].text(), REPLY);
    assert_eq!(
        h.model.calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the model ran once"
    );
    assert_eq!(frames_of_type(&h, "turn-complete").len(), 1);
    assert_eq!(frames_of_type(&h, "turn-started").len(), 1);
}

#[tokio::test]
async fn a_bad_record_is_dropped_and_a_failing_one_is_reported_with_the_rest_of_its_batch() {
    let h = harness().await;
    let job = send(&h, "chat-batch", "u1").await;
    *h.model.fail_with.lock().unwrap() = Some(ModelError::Unavailable("down".into()));
    let response = handle(
        &h.deps,
        batch(vec![
            record(
                "bad",
                "{not a job".into(),
                "arn:aws:sqs:local:000000000000:turns.fifo",
            ),
            job_record("good-but-failing", &job),
            job_record("after", &job),
        ]),
    )
    .await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(
        failed,
        ["good-but-failing", "after"],
        "FIFO: later records wait for the failed one"
    );
    // Redelivered once the model is back: the reply arrives.
    *h.model.fail_with.lock().unwrap() = None;
    let response = handle(&h.deps, batch(vec![job_record("good-but-failing", &job)])).await;
    assert!(response.batch_item_failures.is_empty());
    let messages =
        h.t.store
            .messages(&ChatId::parse("chat-batch").unwrap())
            .await
            .unwrap();
    assert_eq!(messages[1].text(), REPLY);
}

#[tokio::test]
async fn a_dead_letter_ends_the_turn_with_an_error_chunk_and_keeps_the_users_message() {
    let h = harness().await;
    let job = send(&h, "chat-dead", "u1").await;
    let response = handle(
        &h.deps,
        batch(vec![record(
            "d1",
            serde_json::to_string(&job).unwrap(),
            DLQ_ARN,
        )]),
    )
    .await;
    assert!(response.batch_item_failures.is_empty());
    let events = frames_of_type(&h, "events");
    let chunks: Vec<UIMessageChunk> = events
        .iter()
        .flat_map(|f| serde_json::from_value::<Vec<UIMessageChunk>>(f["chunks"].clone()).unwrap())
        .collect();
    assert!(matches!(chunks[0], UIMessageChunk::Start { .. }));
    assert!(
        chunks
            .iter()
            .any(|c| matches!(c, UIMessageChunk::Error { .. }))
    );
    assert!(chunks.last().unwrap().is_finish());
    let ended = frames_of_type(&h, "session-ended");
    assert_eq!(ended[0]["reason"], "failed");
    let chat = ChatId::parse("chat-dead").unwrap();
    let messages = h.t.store.messages(&chat).await.unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].id, "u1");
    let session = h.t.store.get_session(&chat).await.unwrap().unwrap();
    assert!(!session.streaming);
    // A late redelivery of the original job does nothing.
    let late = handle(&h.deps, batch(vec![job_record("m1", &job)])).await;
    assert!(late.batch_item_failures.is_empty());
    assert_eq!(h.t.store.messages(&chat).await.unwrap().len(), 1);
    assert_eq!(h.model.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_retry_after_a_crash_mid_stream_keeps_what_streamed_and_ends_with_an_error() {
    let h = harness().await;
    let job = send(&h, "chat-crash", "u1").await;
    let chat = ChatId::parse("chat-crash").unwrap();
    let session = h.t.store.get_session(&chat).await.unwrap().unwrap();
    // What a crashed attempt had persisted (and posted) before dying.
    let partial = vec![
        UIMessageChunk::Start {
            message_id: Some(job.assistant_message_id.clone()),
            message_metadata: None,
        },
        UIMessageChunk::StartStep,
        UIMessageChunk::TextStart {
            id: "t1".into(),
            provider_metadata: None,
        },
        UIMessageChunk::TextDelta {
            id: "t1".into(),
            delta: "Tide pools ".into(),
            provider_metadata: None,
        },
    ];
    h.t.store
        .append_event(&StreamEvent {
            run_id: job.run_id.clone(),
            first_event_id: session.turn_start_event_id,
            chunks: partial.clone(),
            expires_at: i64::MAX,
        })
        .await
        .unwrap();
    let response = handle(&h.deps, batch(vec![job_record("m1", &job)])).await;
    assert!(response.batch_item_failures.is_empty());
    let stored = h.t.store.messages(&chat).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[1].text(),
        "Tide pools ",
        "no second, different reply"
    );
    let events = h.t.store.events_after(&job.run_id, 0, 0).await.unwrap();
    let mut acc = MessageAccumulator::new("x");
    for e in &events {
        acc.apply_all(&e.chunks);
    }
    assert!(acc.is_finished());
    assert_eq!(acc.message().text(), "Tide pools ");
    assert_eq!(h.model.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}
