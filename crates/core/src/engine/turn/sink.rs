//! The frame sink: each frame is persisted as a StreamEvent *before* it is posted to the chat's
//! subscribers, so a client that resumes (subscribe, then replay) can never miss a frame that
//! was posted before it subscribed.
//!
//! After persisting, the sink reads the session and the subscribers once (the embedded store
//! answers from memory; DynamoDB with one Query): that read says whether the user asked to
//! stop, who to post to, and whether this worker still owns the turn at all.

use std::sync::Arc;

use tokio::time::Instant;

use super::super::Services;
use super::session::runs;
use crate::chunk::{MessageAccumulator, UIMessageChunk};
use crate::config::STREAM_EVENT_TTL;
use crate::domain::{StreamEvent, TurnJob};
use crate::error::{ChatError, StoreError};
use crate::ports::TurnSignals;
use crate::protocol::ServerFrame;

/// What the session said after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Continue,
    /// The user asked to stop this turn, having seen its events up to this id (when the stop
    /// said).
    StopRequested(Option<u64>),
    /// This worker no longer owns the turn: another attempt persisted these event ids first,
    /// or the session moved on (a new session replaced a stale turn). Nothing was posted.
    Lost,
}

/// Persists and posts the frames of one turn.
pub struct FrameSink<'a> {
    s: &'a Services,
    job: &'a TurnJob,
    /// The id of the turn's first chunk.
    turn_start: u64,
    /// The id the next chunk will carry.
    next_event_id: u64,
    /// What has been persisted, as clients build it.
    acc: MessageAccumulator,
    /// The session and subscribers as last read (who the next frame goes to).
    signals: Arc<TurnSignals>,
    pending_since: Option<Instant>,
    /// When this attempt sent its first frame: the frame cadence widens with the time since.
    first_frame_at: Option<Instant>,
    /// Whether this attempt persisted any frame.
    wrote: bool,
}

impl<'a> FrameSink<'a> {
    /// A sink whose first chunk carries `first_event_id`.
    pub fn new(s: &'a Services, job: &'a TurnJob, first_event_id: u64) -> Self {
        FrameSink {
            s,
            job,
            turn_start: first_event_id,
            next_event_id: first_event_id,
            acc: MessageAccumulator::new(job.assistant_message_id.clone()),
            signals: Arc::default(),
            pending_since: None,
            first_frame_at: None,
            wrote: false,
        }
    }

    /// Takes over the frames an earlier attempt persisted for this turn.
    /// # Returns
    /// Whether there were any.
    pub fn adopt(&mut self, events: &[StreamEvent]) -> bool {
        let mut any = false;
        for event in events {
            for (offset, chunk) in event.chunks.iter().enumerate() {
                let id = event.first_event_id + offset as u64;
                if id >= self.next_event_id {
                    self.acc.apply(chunk);
                    self.next_event_id = id + 1;
                    any = true;
                }
            }
        }
        any
    }

    /// The id of the last persisted chunk.
    pub fn last_event_id(&self) -> u64 {
        self.next_event_id - 1
    }

    /// The reply as persisted so far.
    pub fn accumulated(&self) -> &MessageAccumulator {
        &self.acc
    }

    pub fn into_accumulated(self) -> MessageAccumulator {
        self.acc
    }

    /// Whether this attempt has persisted (and so maybe posted) a frame.
    pub fn wrote(&self) -> bool {
        self.wrote
    }

    pub fn subscribers(&self) -> &[String] {
        &self.signals.subscribers
    }

    pub fn set_signals(&mut self, signals: Arc<TurnSignals>) {
        self.signals = signals;
    }

    /// Notes that chunks are waiting for a frame (starts the frame interval).
    pub fn note_pending(&mut self) {
        self.pending_since.get_or_insert_with(Instant::now);
    }

    /// When the waiting chunks must go out: the frame interval after the first of them came,
    /// an interval that widens as the reply goes on (`Settings::frame_cadence`).
    pub fn deadline(&self) -> Option<Instant> {
        self.pending_since.map(|at| {
            let elapsed = self
                .first_frame_at
                .map_or(std::time::Duration::ZERO, |first| {
                    at.saturating_duration_since(first)
                });
            at + self.s.settings.frame_cadence.interval_at(elapsed)
        })
    }

    /// Persists `chunks` as one StreamEvent, then posts them to the subscribers, unless this
    /// worker lost the turn.
    pub async fn send(&mut self, chunks: Vec<UIMessageChunk>) -> Result<Signal, ChatError> {
        self.pending_since = None;
        if chunks.is_empty() {
            return Ok(Signal::Continue);
        }
        self.first_frame_at.get_or_insert_with(Instant::now);
        let now = self.s.now();
        let event = StreamEvent {
            run_id: self.job.run_id.clone(),
            first_event_id: self.next_event_id,
            chunks,
            expires_at: now + STREAM_EVENT_TTL.as_millis() as i64,
        };
        match self.s.store.append_event(&event).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Ok(Signal::Lost),
            Err(e) => return Err(e.into()),
        }
        self.wrote = true;
        self.next_event_id += event.chunks.len() as u64;
        self.acc.apply_all(&event.chunks);
        // Read *after* persisting: a connection that subscribes too late to be seen here
        // subscribed after the event was persisted, so its replay holds the event.
        let signal = self.read_signal().await?;
        if signal == Signal::Lost {
            return Ok(signal);
        }
        let frame = ServerFrame::Events {
            chat_id: self.job.chat_id.clone(),
            run_id: event.run_id,
            first_event_id: event.first_event_id,
            chunks: event.chunks,
            replay: false,
        };
        self.s
            .fan_out(&self.job.chat_id, &self.signals.subscribers, &frame)
            .await;
        Ok(signal)
    }

    /// Cuts the reply back to the events up to `last_shown`: what the client that pressed Stop
    /// had on screen. Later events stay in the log (they were posted), but the stored reply
    /// ends where the user saw it end.
    pub async fn cut_back_to(&mut self, last_shown: u64) -> Result<(), ChatError> {
        if last_shown >= self.last_event_id() {
            return Ok(());
        }
        let events = self
            .s
            .store
            .events_after(
                &self.job.run_id,
                self.turn_start.saturating_sub(1),
                self.s.now(),
            )
            .await?;
        let mut acc = MessageAccumulator::new(self.job.assistant_message_id.clone());
        for event in &events {
            for (offset, chunk) in event.chunks.iter().enumerate() {
                let id = event.first_event_id + offset as u64;
                if (self.turn_start..=last_shown).contains(&id) {
                    acc.apply(chunk);
                }
            }
        }
        self.acc = acc;
        Ok(())
    }

    /// Reads the session and subscribers: what the next frame needs, and whether to go on.
    pub async fn read_signal(&mut self) -> Result<Signal, ChatError> {
        self.signals = self
            .s
            .store
            .session_and_subscribers(&self.job.chat_id, self.s.now())
            .await?;
        Ok(match &self.signals.session {
            Some(session) if runs(session, self.job) => {
                if session.stop_requested {
                    Signal::StopRequested(session.stop_after_event_id)
                } else {
                    Signal::Continue
                }
            }
            _ => Signal::Lost,
        })
    }
}
