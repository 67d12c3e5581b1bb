//! `resume` and `unsubscribe` (the stream-out function).

use super::Services;
use crate::config::MAX_CLIENT_FRAME_BYTES;
use crate::domain::{Connection, StreamEvent};
use crate::error::ChatError;
use crate::protocol::{ChatRequest, Resume, ServerFrame};

/// A replay frame is cut at about this many bytes of chunks (API Gateway's frame size).
const REPLAY_FRAME_BYTES: usize = MAX_CLIENT_FRAME_BYTES - 1024;

/// Subscribes the connection to the chat first, then answers `subscribed` and replays the run's
/// persisted events after `lastEventId` (from event 1 when `runId` is not the current run).
/// Live frames posted meanwhile may overtake the replay; clients order by event id.
pub async fn resume(s: &Services, conn: &Connection, req: &Resume) -> Result<(), ChatError> {
    s.owned_chat(&conn.owner_id, &conn.grant, &req.chat_id)
        .await?;
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
                replay_through: 0,
            },
        )
        .await;
        return Ok(());
    };
    let from = if req.run_id.as_deref() == Some(session.run_id.as_str()) {
        req.last_event_id
    } else {
        0
    };
    let replay_through = s.store.last_event_id(&session.run_id, now).await?;
    s.post(
        &conn.connection_id,
        &ServerFrame::Subscribed {
            request_id: req.request_id.clone(),
            chat_id: req.chat_id.clone(),
            run_id: Some(session.run_id.clone()),
            streaming: session.streaming,
            replay_through,
        },
    )
    .await;
    if from >= replay_through {
        return Ok(());
    }
    let events = s.store.events_after(&session.run_id, from, now).await?;
    for frame in replay_frames(&events, from, replay_through) {
        s.post(
            &conn.connection_id,
            &ServerFrame::Events {
                chat_id: req.chat_id.clone(),
                run_id: session.run_id.clone(),
                first_event_id: frame.0,
                chunks: frame.1,
                replay: true,
            },
        )
        .await;
    }
    Ok(())
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
