//! `resume` and `unsubscribe` (the stream-out function).

use super::Services;
use crate::config::MAX_CLIENT_FRAME_BYTES;
use crate::domain::{Connection, StreamEvent};
use crate::error::{ChatError, PostError};
use crate::protocol::{ChatRequest, Resume, ServerFrame};

/// A replay frame is cut at about this many bytes of chunks (API Gateway's frame size).
const REPLAY_FRAME_BYTES: usize = MAX_CLIENT_FRAME_BYTES - 1024;

/// Subscribes the connection to the chat first, then answers `subscribed` and replays the run's
/// persisted events after `lastEventId`. A client that does not name the current run gets the
/// running turn only, from its `start` (nothing when no turn runs): its completed turns are in
/// the history over HTTP (DESIGN §6.3), so a resume without a run can no longer ask for a
/// whole run's events. Live frames posted meanwhile may overtake the replay; clients order by
/// event id.
pub async fn resume(s: &Services, conn: &Connection, req: &Resume) -> Result<(), ChatError> {
    s.owned_chat(&conn.owner_id, &conn.grant, &req.chat_id)
        .await?;
    super::limits::admit_resume(s, &conn.connection_id).await?;
    let now = s.now();
    s.store
        .subscribe(&req.chat_id, &conn.connection_id, now, conn.expires_at)
        .await?;
    let Some(session) = s.store.get_session(&req.chat_id).await? else {
        s.post(
            &conn.connection_id,
            &ServerFrame::Subscribed {
                request_id: req.request_id.clone(),
                chat_id: req.chat_id.clone(),
                run_id: None,
                streaming: false,
                replay_from: 0,
                replay_through: 0,
            },
        )
        .await;
        return Ok(());
    };
    let replay_through = s.store.last_event_id(&session.run_id, now).await?;
    let from = if req.run_id.as_deref() == Some(session.run_id.as_str()) {
        req.last_event_id
    } else if session.streaming {
        session.turn_start_event_id.saturating_sub(1)
    } else {
        replay_through
    };
    let subscribed = ServerFrame::Subscribed {
        request_id: req.request_id.clone(),
        chat_id: req.chat_id.clone(),
        run_id: Some(session.run_id.clone()),
        streaming: session.streaming,
        replay_from: from.min(replay_through),
        replay_through,
    };
    if !post_paced(
        s,
        &conn.connection_id,
        &subscribed.to_json(),
        REPLAY_PATIENCE,
    )
    .await
    {
        return Ok(());
    }
    if from >= replay_through {
        return Ok(());
    }
    let events = s.store.events_after(&session.run_id, from, now).await?;
    for frame in replay_frames(&events, from, replay_through) {
        let frame = ServerFrame::Events {
            chat_id: req.chat_id.clone(),
            run_id: session.run_id.clone(),
            first_event_id: frame.0,
            chunks: frame.1,
            replay: true,
        };
        if !post_paced(s, &conn.connection_id, &frame.to_json(), REPLAY_PATIENCE).await {
            // Stop rather than skip: the client sees where the replay ended, and asks again
            // from there once its gap timer runs out (DESIGN §6.2).
            break;
        }
    }
    Ok(())
}

/// How long a replay waits, in all, for a connection's full send buffer to drain.
const REPLAY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Posts one replay frame, waiting with a growing pause while the connection answers
/// `Transient` (its send buffer is full, or API Gateway throttles), so that a replay larger
/// than the buffer is paced instead of losing frames from its middle.
///
/// # Returns
/// Whether the frame was delivered; `false` ends the replay (gone, refused, or still full
/// after `patience`).
async fn post_paced(
    s: &Services,
    connection_id: &str,
    text: &str,
    patience: std::time::Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match s.connections.post(connection_id, text).await {
            Ok(()) => return true,
            Err(PostError::Transient(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(250));
            }
            Err(PostError::Gone) => {
                if let Err(e) = s.store.delete_connection(connection_id).await {
                    tracing::warn!(connection_id, error = %e, "could not forget a gone connection");
                }
                return false;
            }
            Err(e) => {
                tracing::warn!(connection_id, error = %e, "replay stopped");
                return false;
            }
        }
    }
}

/// Groups the chunks with ids in `(after, through]` into frames of consecutive ids, each about
/// [`REPLAY_FRAME_BYTES`] at most.
fn replay_frames(
    events: &[StreamEvent],
    after: u64,
    through: u64,
) -> Vec<(u64, Vec<crate::chunk::UIMessageChunk>)> {
    let mut frames = Vec::new();
    let mut current: Option<(u64, Vec<_>)> = None;
    let mut bytes = 0;
    for event in events {
        for (offset, chunk) in event.chunks.iter().enumerate() {
            let id = event.first_event_id + offset as u64;
            if id <= after || id > through {
                continue;
            }
            let size = serde_json::to_string(chunk).map(|t| t.len()).unwrap_or(0);
            match &mut current {
                Some((first, chunks))
                    if *first + chunks.len() as u64 == id && bytes + size <= REPLAY_FRAME_BYTES =>
                {
                    chunks.push(chunk.clone());
                    bytes += size;
                }
                _ => {
                    if let Some(done) = current.take() {
                        frames.push(done);
                    }
                    current = Some((id, vec![chunk.clone()]));
                    bytes = size;
                }
            }
        }
    }
    frames.extend(current);
    frames
}

/// Ends the connection's subscription to the chat. Answers `unsubscribed` whether or not it was
/// subscribed, and for chats that are not the caller's, so that no existence is revealed.
pub async fn unsubscribe(
    s: &Services,
    conn: &Connection,
    req: &ChatRequest,
) -> Result<(), ChatError> {
    s.store
        .unsubscribe(&req.chat_id, &conn.connection_id)
        .await?;
    s.post(
        &conn.connection_id,
        &ServerFrame::Unsubscribed {
            request_id: req.request_id.clone(),
            chat_id: req.chat_id.clone(),
        },
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::UIMessageChunk;

    /// A connection whose send buffer holds `room` frames and drains one every few posts.
    struct SmallBuffer {
        delivered: std::sync::Mutex<Vec<String>>,
        refusals: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl crate::ports::Connections for SmallBuffer {
        async fn post(&self, _connection_id: &str, frame: &str) -> Result<(), PostError> {
            // Every other post finds the buffer full.
            let n = self
                .refusals
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n.is_multiple_of(2) {
                return Err(PostError::Transient("buffer full".into()));
            }
            self.delivered.lock().unwrap().push(frame.to_owned());
            Ok(())
        }

        async fn close(&self, _connection_id: &str) -> Result<(), PostError> {
            Ok(())
        }
    }

    /// A chat `c1` of user `u1` whose run `r1` has `events` persisted events, one chunk each,
    /// and whose current turn started at `turn_start_event_id`; and a connection of `u1`.
    async fn seed_run(
        s: &crate::engine::Services,
        turn_start_event_id: u64,
        streaming: bool,
        events: u64,
        text: &str,
    ) -> Connection {
        use crate::domain::{Chat, ChatSession, Grant};
        let now = s.now();
        let chat_id = crate::domain::ChatId::parse("c1").unwrap();
        s.store
            .create_chat(&Chat {
                id: chat_id.clone(),
                owner_id: "u1".into(),
                title: "t".into(),
                model: "m".into(),
                created_at: now,
                updated_at: now,
                message_count: 0,
            })
            .await
            .unwrap();
        s.store
            .put_session(
                &serde_json::from_value::<ChatSession>(serde_json::json!({
                    "chatId": "c1", "runId": "r1", "accessToken": "a", "lastEventId": 0,
                    "turns": 0, "status": "active", "endedReason": null, "streaming": streaming,
                    "turnStartEventId": turn_start_event_id, "assistantMessageId": "a1",
                    "userMessageId": "m1", "stopRequested": false, "turnStartedAt": now,
                    "attempts": 1, "expiresAt": now + 3_600_000, "version": 0
                }))
                .unwrap(),
                None,
            )
            .await
            .unwrap();
        for i in 0..events {
            s.store
                .append_event(&StreamEvent {
                    run_id: "r1".into(),
                    first_event_id: i + 1,
                    chunks: vec![delta(text)],
                    expires_at: now + 86_400_000,
                })
                .await
                .unwrap();
        }
        let conn = Connection {
            connection_id: "k1".into(),
            owner_id: "u1".into(),
            grant: Grant::User,
            connected_at: now,
            expires_at: now + 3_600_000,
        };
        s.store.put_connection(&conn).await.unwrap();
        conn
    }

    /// What a resume of chat `c1` naming `run_id` and `last_event_id` delivers: the
    /// `subscribed` frame's replay bounds, and the ids of the replayed events.
    async fn replay_of(
        turn_start_event_id: u64,
        streaming: bool,
        run_id: Option<&str>,
        last_event_id: u64,
    ) -> ((u64, u64), Vec<u64>) {
        let t = crate::testkit::memory::services(crate::config::Settings::with_secret(
            "0123456789abcdef0123456789abcdef",
        ));
        let conn = seed_run(&t.services, turn_start_event_id, streaming, 40, "word ").await;
        let req = Resume {
            request_id: None,
            chat_id: crate::domain::ChatId::parse("c1").unwrap(),
            run_id: run_id.map(str::to_owned),
            last_event_id,
        };
        resume(&t.services, &conn, &req).await.unwrap();
        let frames = t.connections.frames_of("k1");
        let bounds = (
            frames[0]["replayFrom"].as_u64().unwrap(),
            frames[0]["replayThrough"].as_u64().unwrap(),
        );
        let mut ids = Vec::new();
        for frame in &frames[1..] {
            let first = frame["firstEventId"].as_u64().unwrap();
            let count = frame["chunks"].as_array().unwrap().len() as u64;
            ids.extend(first..first + count);
        }
        (bounds, ids)
    }

    #[tokio::test]
    async fn a_resume_that_does_not_name_the_run_gets_the_running_turn_only() {
        // Turn 3 of the run started at event 31; events 1-30 are earlier, completed turns.
        let ((from, through), ids) = replay_of(31, true, None, 0).await;
        assert_eq!((from, through), (30, 40));
        assert_eq!(
            ids,
            (31..=40).collect::<Vec<_>>(),
            "from the running turn's start"
        );
        let ((from, _), ids) = replay_of(31, true, Some("an-old-run"), 12).await;
        assert_eq!(from, 30, "another run's event id means nothing in this one");
        assert_eq!(ids.first(), Some(&31));
        // No turn running: the history over HTTP holds everything; nothing is replayed.
        let ((from, through), ids) = replay_of(31, false, None, 0).await;
        assert_eq!((from, through), (40, 40));
        assert!(ids.is_empty());
    }

    #[tokio::test]
    async fn a_resume_naming_the_run_gets_what_it_missed() {
        let ((from, through), ids) = replay_of(31, true, Some("r1"), 35).await;
        assert_eq!((from, through), (35, 40));
        assert_eq!(ids, (36..=40).collect::<Vec<_>>());
        // Asking from a turn boundary of the run (event 20 ended turn 2) replays from there.
        let (_, ids) = replay_of(31, true, Some("r1"), 20).await;
        assert_eq!(ids, (21..=40).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn resumes_on_one_connection_are_limited_per_minute() {
        let mut settings = crate::config::Settings::with_secret("0123456789abcdef0123456789abcdef");
        settings.connection_resumes_per_minute = 3;
        let t = crate::testkit::memory::services(settings);
        let conn = seed_run(&t.services, 1, true, 2, "word ").await;
        let req = Resume {
            request_id: None,
            chat_id: crate::domain::ChatId::parse("c1").unwrap(),
            run_id: Some("r1".into()),
            last_event_id: 0,
        };
        for _ in 0..3 {
            resume(&t.services, &conn, &req)
                .await
                .expect("within the limit");
        }
        let delivered = t.connections.frames_of("k1").len();
        match resume(&t.services, &conn, &req).await {
            Err(ChatError::RateLimited { retry_after_ms, .. }) => {
                assert!(retry_after_ms > 0 && retry_after_ms <= 60_000);
            }
            other => panic!("the fourth resume in a minute is refused: {other:?}"),
        }
        assert_eq!(
            t.connections.frames_of("k1").len(),
            delivered,
            "a refused resume replays nothing"
        );
        t.clock.advance(61_000);
        resume(&t.services, &conn, &req)
            .await
            .expect("a new minute, a new window");
    }

    #[tokio::test]
    async fn a_replay_bigger_than_the_send_buffer_is_paced_not_gapped() {
        use crate::config::Settings;
        let mut t = crate::testkit::memory::services(Settings::with_secret(
            "0123456789abcdef0123456789abcdef",
        ));
        let buffer = std::sync::Arc::new(SmallBuffer {
            delivered: Default::default(),
            refusals: Default::default(),
        });
        t.services.connections = buffer.clone();
        let s = &t.services;
        let chat_id = crate::domain::ChatId::parse("c1").unwrap();
        let conn = seed_run(s, 1, true, 30, &"x".repeat(20_000)).await;
        let req = Resume {
            request_id: None,
            chat_id: chat_id.clone(),
            run_id: None,
            last_event_id: 0,
        };
        resume(s, &conn, &req).await.unwrap();
        let delivered = buffer.delivered.lock().unwrap().clone();
        let frames: Vec<serde_json::Value> = delivered
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        assert_eq!(
            frames[0]["type"], "subscribed",
            "first, and not lost either"
        );
        let mut next = 1;
        for frame in &frames[1..] {
            assert_eq!(frame["firstEventId"], next, "no gap");
            next += frame["chunks"].as_array().unwrap().len() as u64;
        }
        assert_eq!(next, 31, "every event arrived");
        assert!(
            buffer.refusals.load(std::sync::atomic::Ordering::SeqCst) > delivered.len(),
            "the buffer was full along the way"
        );
    }

    fn delta(t: &str) -> UIMessageChunk {
        UIMessageChunk::TextDelta {
            id: "t".into(),
            delta: t.into(),
            provider_metadata: None,
        }
    }

    #[test]
    fn replay_slices_the_first_event_and_stops_at_replay_through() {
        let events = vec![
            StreamEvent {
                run_id: "r".into(),
                first_event_id: 1,
                chunks: vec![delta("a"), delta("b"), delta("c")],
                expires_at: 0,
            },
            StreamEvent {
                run_id: "r".into(),
                first_event_id: 4,
                chunks: vec![delta("d"), delta("e")],
                expires_at: 0,
            },
        ];
        let frames = replay_frames(&events, 2, 4);
        assert_eq!(frames, vec![(3, vec![delta("c"), delta("d")])]);
    }

    #[test]
    fn replay_frames_stay_under_the_frame_size() {
        let big = "x".repeat(10_000);
        let events: Vec<_> = (0..10)
            .map(|i| StreamEvent {
                run_id: "r".into(),
                first_event_id: i + 1,
                chunks: vec![delta(&big)],
                expires_at: 0,
            })
            .collect();
        let frames = replay_frames(&events, 0, 10);
        assert!(frames.len() >= 4);
        let mut next = 1;
        for (first, chunks) in &frames {
            assert_eq!(*first, next);
            next += chunks.len() as u64;
            assert!(serde_json::to_string(chunks).unwrap().len() <= MAX_CLIENT_FRAME_BYTES);
        }
        assert_eq!(next, 11);
    }
}
