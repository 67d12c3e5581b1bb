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
use chatrun_core::ports::{
    ChatStore, LanguageModel, ModelEvent, ModelInfo, ModelRequest, ModelStream, QueueName,
};
use chatrun_core::testkit::memory::{RecordingVisibility, ScriptedModel, TestServices, services};
use chatrun_run_turn::{RunTurnDeps, handle};
use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const DLQ_ARN: &str = "arn:aws:sqs:local:000000000000:turns-dlq.fifo";
const REPLY: &str = "Tide pools are rocky basins full of life. ";

struct Harness {
    t: TestServices,
    deps: RunTurnDeps,
    model: Arc<ScriptedModel>,
    visibility: Arc<RecordingVisibility>,
}

fn settings() -> Settings {
    let mut settings = Settings::with_secret("secret-secret-secret-secret-secret");
    // One user drives every chat of a batch here; the limits are tested in core and
    // crates/local/tests/limits.rs.
    settings.user_max_concurrent_turns = u32::MAX;
    settings.user_messages_per_minute = u32::MAX;
    settings
}

async fn harness() -> Harness {
    harness_with(settings(), None).await
}

/// A harness with these settings, and `other` answering instead of the scripted model.
async fn harness_with(settings: Settings, other: Option<Arc<dyn LanguageModel>>) -> Harness {
    let t = services(settings);
    let model = Arc::new(ScriptedModel::new(REPLY));
    let visibility = Arc::new(RecordingVisibility::default());
    let deps = RunTurnDeps {
        services: t.services.clone(),
        model: other.unwrap_or_else(|| model.clone()),
        visibility: visibility.clone(),
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
    Harness {
        t,
        deps,
        model,
        visibility,
    }
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

/// A record as the event source mapping hands it over: FIFO group = chat id.
fn record(id: &str, body: String, source: &str) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.into());
    m.receipt_handle = Some(format!("receipt-{id}"));
    let group = serde_json::from_str::<TurnJob>(&body)
        .map(|job| job.chat_id.as_str().to_owned())
        .unwrap_or_else(|_| "not-a-job".into());
    m.attributes.insert("MessageGroupId".into(), group);
    m.attributes
        .insert("ApproximateReceiveCount".into(), "1".into());
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
    assert_eq!(
        session.attempts, 1,
        "ending the turn with an error claims it like an attempt before writing its frames \
         (a first attempt relies on that to skip looking for earlier frames)"
    );
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
    // What a crashed attempt had done before dying: claimed the turn, then persisted (and
    // posted) its first frame.
    let mut claimed = session.clone();
    claimed.attempts += 1;
    let session =
        h.t.store
            .put_session(&claimed, Some(session.version))
            .await
            .unwrap();
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

/// A model that waits `per_token` before each of its `tokens` words, noting when each chat's
/// reply began to stream.
struct SlowModel {
    per_token: Duration,
    tokens: usize,
    first_token_at: Mutex<Vec<Instant>>,
}

#[async_trait::async_trait]
impl LanguageModel for SlowModel {
    async fn stream(&self, _request: ModelRequest) -> Result<ModelStream, ModelError> {
        let per_token = self.per_token;
        let tokens = self.tokens;
        let started = Instant::now();
        self.first_token_at
            .lock()
            .unwrap()
            .push(started + per_token);
        Ok(futures::stream::iter(0..=tokens)
            .then(move |i| async move {
                tokio::time::sleep(per_token).await;
                Ok(if i == tokens {
                    ModelEvent::Finish {
                        reason: chatrun_core::chunk::FinishReason::Stop,
                        usage: None,
                    }
                } else {
                    ModelEvent::TextDelta(format!("w{i} "))
                })
            })
            .boxed())
    }

    fn models(&self) -> Vec<ModelInfo> {
        vec![]
    }

    fn default_model(&self) -> String {
        "slow".into()
    }
}

/// A model that accepts the request and then never says anything.
struct SilentModel;

#[async_trait::async_trait]
impl LanguageModel for SilentModel {
    async fn stream(&self, _request: ModelRequest) -> Result<ModelStream, ModelError> {
        Ok(futures::stream::pending().boxed())
    }

    fn models(&self) -> Vec<ModelInfo> {
        vec![]
    }

    fn default_model(&self) -> String {
        "silent".into()
    }
}

fn failed_ids(response: &aws_lambda_events::sqs::SqsBatchResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

#[tokio::test]
async fn a_batch_of_ten_chats_streams_them_all_at_once() {
    let slow = Arc::new(SlowModel {
        per_token: Duration::from_millis(50),
        tokens: 20,
        first_token_at: Mutex::new(Vec::new()),
    });
    let h = harness_with(settings(), Some(slow.clone())).await;
    let mut records = Vec::new();
    for i in 0..10 {
        let job = send(&h, &format!("chat-{i}"), &format!("u{i}")).await;
        records.push(job_record(&format!("m{i}"), &job));
    }
    let started = Instant::now();
    let response = handle(&h.deps, batch(records)).await;
    let took = started.elapsed();
    assert!(response.batch_item_failures.is_empty());
    // One reply takes 21 x 50 ms; one after another, ten would take ten times that.
    let reply = Duration::from_millis(50 * 21);
    let first_tokens = slow.first_token_at.lock().unwrap().clone();
    assert_eq!(first_tokens.len(), 10);
    let latest = first_tokens
        .iter()
        .map(|at| at.duration_since(started))
        .max()
        .unwrap();
    println!("10 chats in one batch: latest first token {latest:?}, whole batch {took:?}");
    assert!(
        latest < Duration::from_millis(50) + Duration::from_millis(400),
        "every chat's first token within one chat's latency plus a margin, not after another's reply: {latest:?}"
    );
    assert!(took < reply * 3, "the batch took {took:?}");
    for i in 0..10 {
        let messages =
            h.t.store
                .messages(&ChatId::parse(format!("chat-{i}")).unwrap())
                .await
                .unwrap();
        assert_eq!(messages.len(), 2, "chat-{i} has its reply");
    }
}

#[tokio::test]
async fn the_first_token_does_not_wait_for_the_lease() {
    let slow = Arc::new(SlowModel {
        per_token: Duration::from_millis(20),
        tokens: 5,
        first_token_at: Mutex::new(Vec::new()),
    });
    let h = harness_with(settings(), Some(slow.clone())).await;
    *h.visibility.latency.lock().unwrap() = Duration::from_millis(500);
    let job = send(&h, "chat-lease", "u1").await;
    let started = Instant::now();
    let response = handle(&h.deps, batch(vec![job_record("m1", &job)])).await;
    assert!(response.batch_item_failures.is_empty());
    let first_token = slow.first_token_at.lock().unwrap()[0].duration_since(started);
    assert!(
        first_token < Duration::from_millis(300),
        "the turn started while the lease was being set: {first_token:?}"
    );
    let changes = h.visibility.changes.lock().unwrap().clone();
    assert_eq!(
        changes.first().map(|c| c.2),
        Some(Duration::from_secs(45)),
        "the lease was still set: {changes:?}"
    );
    assert_eq!(
        *h.visibility.acknowledged.lock().unwrap(),
        [(QueueName::Turns, "receipt-m1".to_string())],
    );
}

#[tokio::test]
async fn a_long_turn_holds_its_job_with_a_heartbeat() {
    let mut settings = settings();
    settings.turn_lease = Duration::from_millis(300);
    let slow = Arc::new(SlowModel {
        per_token: Duration::from_millis(50),
        tokens: 20,
        first_token_at: Mutex::new(Vec::new()),
    });
    let h = harness_with(settings, Some(slow)).await;
    let job = send(&h, "chat-long", "u1").await;
    let response = handle(&h.deps, batch(vec![job_record("m1", &job)])).await;
    assert!(response.batch_item_failures.is_empty());
    let changes = h.visibility.changes.lock().unwrap().clone();
    let leases = changes
        .iter()
        .filter(|(q, r, t)| {
            *q == QueueName::Turns && r == "receipt-m1" && *t == Duration::from_millis(300)
        })
        .count();
    // Set at once, then renewed every 100 ms of a turn of about a second.
    assert!(leases >= 5, "the lease was set and renewed: {changes:?}");
    assert_eq!(
        *h.visibility.acknowledged.lock().unwrap(),
        [(QueueName::Turns, "receipt-m1".to_string())],
        "deleted as soon as its turn was done"
    );
}

#[tokio::test]
async fn a_passing_model_failure_comes_back_after_a_growing_backoff() {
    let h = harness().await;
    let job = send(&h, "chat-flaky", "u1").await;
    *h.model.fail_with.lock().unwrap() = Some(ModelError::Unavailable("503".into()));
    let mut second = job_record("m1", &job);
    second
        .attributes
        .insert("ApproximateReceiveCount".into(), "2".into());
    let response = handle(&h.deps, batch(vec![second])).await;
    assert_eq!(failed_ids(&response), ["m1"]);
    // The turn did not wait for the lease (the record was received invisible for longer), and
    // no renewal lands after the backoff to undo it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let changes = h.visibility.changes.lock().unwrap().clone();
    assert_eq!(
        changes.last(),
        Some(&(
            QueueName::Turns,
            "receipt-m1".to_string(),
            Duration::from_secs(4)
        )),
        "second receive: twice the 2 s backoff"
    );
    // Nothing of the failed attempt reached the user or the history.
    assert!(frames_of_type(&h, "events").is_empty());
    let chat = ChatId::parse("chat-flaky").unwrap();
    assert_eq!(h.t.store.messages(&chat).await.unwrap().len(), 1);
    // The model heals: the next delivery answers.
    *h.model.fail_with.lock().unwrap() = None;
    let response = handle(&h.deps, batch(vec![job_record("m1", &job)])).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(h.t.store.messages(&chat).await.unwrap()[1].text(), REPLY);
}

#[tokio::test]
async fn a_refused_request_ends_the_turn_at_once_with_an_error_the_user_sees() {
    let h = harness().await;
    let job = send(&h, "chat-refused", "u1").await;
    *h.model.fail_with.lock().unwrap() = Some(ModelError::Rejected("status 400".into()));
    let response = handle(&h.deps, batch(vec![job_record("m1", &job)])).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "no retry loop for what cannot succeed"
    );
    let chunks: Vec<UIMessageChunk> = frames_of_type(&h, "events")
        .iter()
        .flat_map(|f| serde_json::from_value::<Vec<UIMessageChunk>>(f["chunks"].clone()).unwrap())
        .collect();
    assert!(chunks.iter().any(
        |c| matches!(c, UIMessageChunk::Error { error_text } if error_text.contains("status 400"))
    ));
    let chat = ChatId::parse("chat-refused").unwrap();
    let session = h.t.store.get_session(&chat).await.unwrap().unwrap();
    assert!(!session.streaming, "the user can send again");
    assert_eq!(frames_of_type(&h, "turn-complete").len(), 1);
}

#[tokio::test]
async fn a_model_silent_past_the_stall_limit_is_cancelled_and_retried() {
    let mut settings = settings();
    settings.model_stall = Duration::from_millis(200);
    let h = harness_with(settings, Some(Arc::new(SilentModel))).await;
    let job = send(&h, "chat-stalled", "u1").await;
    let started = Instant::now();
    let response = handle(&h.deps, batch(vec![job_record("m1", &job)])).await;
    assert_eq!(failed_ids(&response), ["m1"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    let changes = h.visibility.changes.lock().unwrap().clone();
    assert_eq!(
        changes.last().map(|c| c.2),
        Some(Duration::from_secs(2)),
        "put back after the first backoff: {changes:?}"
    );
}

#[tokio::test]
async fn the_same_job_delivered_two_and_three_times_at_once_stores_one_reply() {
    for copies in [2usize, 3] {
        let h = harness().await;
        let chat_id = format!("chat-copies-{copies}");
        let job = send(&h, &chat_id, "u1").await;
        let deliveries = (0..copies).map(|i| {
            let deps = h.deps.clone();
            let record = job_record(&format!("m{i}"), &job);
            tokio::spawn(async move { handle(&deps, batch(vec![record])).await })
        });
        for delivery in futures::future::join_all(deliveries).await {
            assert!(delivery.unwrap().batch_item_failures.is_empty());
        }
        let chat = ChatId::parse(&chat_id).unwrap();
        let messages = h.t.store.messages(&chat).await.unwrap();
        assert_eq!(messages.len(), 2, "{copies} deliveries, one reply");
        assert_eq!(messages[1].text(), REPLY);
        assert_eq!(frames_of_type(&h, "turn-complete").len(), 1);
        // Whatever the copies did, the events a client replays build exactly one reply.
        let events = h.t.store.events_after(&job.run_id, 0, 0).await.unwrap();
        let starts = events
            .iter()
            .flat_map(|e| &e.chunks)
            .filter(|c| matches!(c, UIMessageChunk::Start { .. }))
            .count();
        assert_eq!(starts, 1);
    }
}

#[tokio::test]
async fn a_worker_whose_turn_was_taken_over_by_a_new_session_stops_appending() {
    let slow = Arc::new(SlowModel {
        per_token: Duration::from_millis(50),
        tokens: 40,
        first_token_at: Mutex::new(Vec::new()),
    });
    let h = harness_with(settings(), Some(slow)).await;
    let job = send(&h, "chat-stale", "u1").await;
    let chat = ChatId::parse("chat-stale").unwrap();
    let deps = h.deps.clone();
    let record = job_record("m1", &job);
    let started = Instant::now();
    let worker = tokio::spawn(async move { handle(&deps, batch(vec![record])).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The turn outlived the stale limit and a new message started a new session.
    let old = h.t.store.get_session(&chat).await.unwrap().unwrap();
    let mut replacement = old.clone();
    replacement.run_id = "run-new".into();
    replacement.assistant_message_id = Some("a-new".into());
    h.t.store
        .put_session(&replacement, Some(old.version))
        .await
        .unwrap();
    let response = worker.await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert!(
        started.elapsed() < Duration::from_millis(41 * 50),
        "the worker stopped before the model finished"
    );
    assert_eq!(
        h.t.store.messages(&chat).await.unwrap().len(),
        1,
        "no reply stored"
    );
    assert!(frames_of_type(&h, "turn-complete").is_empty());
    let after = h.t.store.last_event_id(&job.run_id, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        h.t.store.last_event_id(&job.run_id, 0).await.unwrap(),
        after,
        "nothing appended after it stopped"
    );
}

/// Kills the worker (aborts its invocation at whatever await it is at, as a crash would leave
/// the store) at pseudo-random points of a turn, then lets the queue redeliver the job.
/// 20 kills here; `CHATRUN_LONG=1` makes it 500.
#[tokio::test]
async fn a_worker_killed_at_random_points_never_loses_or_doubles_a_reply() {
    let kills: u64 = if std::env::var_os("CHATRUN_LONG").is_some() {
        500
    } else {
        20
    };
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let (mut mid_stream, mut before_stream, mut after_reply) = (0, 0, 0);
    for kill in 0..kills {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let at = Duration::from_millis((seed >> 33) % 90);
        let slow = Arc::new(SlowModel {
            per_token: Duration::from_millis(3),
            tokens: 20,
            first_token_at: Mutex::new(Vec::new()),
        });
        let h = harness_with(settings(), Some(slow)).await;
        let chat_id = format!("chat-kill-{kill}");
        let job = send(&h, &chat_id, "u1").await;
        let deps = h.deps.clone();
        let record = job_record("m1", &job);
        let worker = tokio::spawn(async move { handle(&deps, batch(vec![record])).await });
        tokio::time::sleep(at).await;
        worker.abort();
        let _ = worker.await;
        let chat = ChatId::parse(&chat_id).unwrap();
        let persisted = h.t.store.last_event_id(&job.run_id, 0).await.unwrap();
        let stored_before = h.t.store.messages(&chat).await.unwrap().len();
        match (persisted, stored_before) {
            (_, 2) => after_reply += 1,
            (0, _) => before_stream += 1,
            _ => mid_stream += 1,
        }
        // The job comes back after its lease; redeliver until it is acknowledged.
        let mut acknowledged = false;
        for _ in 0..3 {
            if handle(&h.deps, batch(vec![job_record("m1", &job)]))
                .await
                .batch_item_failures
                .is_empty()
            {
                acknowledged = true;
                break;
            }
        }
        assert!(
            acknowledged,
            "kill {kill} at {at:?}: the redelivery finished the turn"
        );
        let messages = h.t.store.messages(&chat).await.unwrap();
        assert_eq!(
            messages[0].id, "u1",
            "kill {kill}: the user's message stays"
        );
        let chunks: Vec<UIMessageChunk> =
            h.t.store
                .events_after(&job.run_id, 0, 0)
                .await
                .unwrap()
                .into_iter()
                .flat_map(|e| e.chunks)
                .collect();
        let starts = chunks
            .iter()
            .filter(|c| matches!(c, UIMessageChunk::Start { .. }))
            .count();
        let finishes = chunks.iter().filter(|c| c.is_finish()).count();
        assert_eq!(
            (starts, finishes),
            (1, 1),
            "kill {kill}: one reply streamed, never two"
        );
        let errored = chunks
            .iter()
            .any(|c| matches!(c, UIMessageChunk::Error { .. }));
        assert!(
            messages.len() == 2 || errored,
            "kill {kill}: a reply or a visible error: {messages:?}"
        );
        assert!(messages.len() <= 2, "kill {kill}: at most one reply");
        let seen_starts: usize = frames_of_type(&h, "events")
            .iter()
            .flat_map(|f| f["chunks"].as_array().unwrap().clone())
            .filter(|c| c["type"] == "start")
            .count();
        assert!(seen_starts <= 1, "kill {kill}: the client saw one reply");
        let session = h.t.store.get_session(&chat).await.unwrap().unwrap();
        assert!(
            !session.streaming,
            "kill {kill}: the chat takes a new message"
        );
    }
    println!(
        "{kills} kills survived: {before_stream} before the first frame, {mid_stream} mid-stream, {after_reply} after the reply was stored"
    );
}
