//! Model events to UI message stream chunks, with no I/O: what the AI SDK's `streamText` emits
//! for a reply (`start`, `start-step`, text and reasoning parts, `finish-step`, `finish`), kept
//! here as a pure builder so it can be tested chunk by chunk.
//!
//! Consecutive deltas of one part are merged into one chunk while they wait for the next
//! frame: fewer event ids, smaller frames, and the client builds the same text.

use serde_json::json;

use crate::chunk::{FinishReason, UIMessageChunk};

/// Builds the chunks of one assistant message and holds those not yet taken for a frame.
#[derive(Debug)]
pub struct ChunkBuilder {
    message_id: String,
    model_id: String,
    started: bool,
    open_text: Option<String>,
    open_reasoning: Option<String>,
    part_counter: u32,
    pending: Vec<UIMessageChunk>,
    pending_bytes: usize,
}

impl ChunkBuilder {
    /// A builder for the message `message_id`, produced by `model_id` (stored in its metadata).
    pub fn new(message_id: impl Into<String>, model_id: impl Into<String>) -> Self {
        ChunkBuilder {
            message_id: message_id.into(),
            model_id: model_id.into(),
            started: false,
            open_text: None,
            open_reasoning: None,
            part_counter: 0,
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// Continues a message whose `start` an earlier attempt already sent.
    pub fn already_started(mut self) -> Self {
        self.started = true;
        self
    }

    pub fn set_model(&mut self, model_id: impl Into<String>) {
        self.model_id = model_id.into();
    }

    /// Whether chunks wait to be taken.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// About how many bytes the waiting chunks weigh (deltas by their text, others as 16).
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Takes the waiting chunks, for one frame.
    pub fn take(&mut self) -> Vec<UIMessageChunk> {
        self.pending_bytes = 0;
        std::mem::take(&mut self.pending)
    }

    /// Drops the waiting chunks (never seen by anyone: a stop discards them).
    pub fn discard(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
    }

    fn push(&mut self, chunk: UIMessageChunk) {
        self.pending_bytes += chunk.delta_len().max(16);
        if let (
            Some(UIMessageChunk::TextDelta {
                id: last_id,
                delta: last,
                ..
            }),
            UIMessageChunk::TextDelta {
                id,
                delta,
                provider_metadata: None,
            },
        )
        | (
            Some(UIMessageChunk::ReasoningDelta {
                id: last_id,
                delta: last,
                ..
            }),
            UIMessageChunk::ReasoningDelta {
                id,
                delta,
                provider_metadata: None,
            },
        ) = (self.pending.last_mut(), &chunk)
            && last_id == id
        {
            last.push_str(delta);
            return;
        }
        self.pending.push(chunk);
    }

    fn ensure_started(&mut self) {
        if !self.started {
            self.started = true;
            self.push(UIMessageChunk::Start {
                message_id: Some(self.message_id.clone()),
                message_metadata: None,
            });
            self.push(UIMessageChunk::StartStep);
        }
    }

    fn close_reasoning(&mut self) {
        if let Some(id) = self.open_reasoning.take() {
            self.push(UIMessageChunk::ReasoningEnd {
                id,
                provider_metadata: None,
            });
        }
    }

    fn close_text(&mut self) {
        if let Some(id) = self.open_text.take() {
            self.push(UIMessageChunk::TextEnd {
                id,
                provider_metadata: None,
            });
        }
    }

    /// The id of the open part of this kind, opening one (and closing the other kind) if needed.
    fn open_part(&mut self, reasoning: bool) -> String {
        self.ensure_started();
        if reasoning {
            self.close_text();
        } else {
            self.close_reasoning();
        }
        let open = if reasoning {
            &self.open_reasoning
        } else {
            &self.open_text
        };
        if let Some(id) = open {
            return id.clone();
        }
        self.part_counter += 1;
        let id = format!("{}{}", if reasoning { "r" } else { "t" }, self.part_counter);
        let start = if reasoning {
            self.open_reasoning = Some(id.clone());
            UIMessageChunk::ReasoningStart {
                id: id.clone(),
                provider_metadata: None,
            }
        } else {
            self.open_text = Some(id.clone());
            UIMessageChunk::TextStart {
                id: id.clone(),
                provider_metadata: None,
            }
        };
        self.push(start);
        id
    }

    /// Text from the model.
    pub fn text(&mut self, delta: String) {
        if delta.is_empty() {
            return;
        }
        let id = self.open_part(false);
        self.push(UIMessageChunk::TextDelta {
            id,
            delta,
            provider_metadata: None,
        });
    }

    /// Reasoning from the model.
    pub fn reasoning(&mut self, delta: String) {
        if delta.is_empty() {
            return;
        }
        let id = self.open_part(true);
        self.push(UIMessageChunk::ReasoningDelta {
            id,
            delta,
            provider_metadata: None,
        });
    }

    fn metadata(&self, usage: Option<serde_json::Value>) -> serde_json::Value {
        let mut metadata = json!({ "model": self.model_id });
        if let Some(usage) = usage {
            metadata["usage"] = usage;
        }
        metadata
    }

    /// Closes open parts and the step, and ends the stream with `finish`.
    pub fn finish(&mut self, reason: Option<FinishReason>, usage: Option<serde_json::Value>) {
        self.ensure_started();
        self.close_reasoning();
        self.close_text();
        self.push(UIMessageChunk::FinishStep);
        let message_metadata = Some(self.metadata(usage));
        self.push(UIMessageChunk::Finish {
            finish_reason: reason,
            message_metadata,
        });
    }

    /// Ends the stream as the AI SDK does on an error: `error`, `finish-step`, `finish` (error),
    /// leaving an open text part as it was.
    pub fn error(&mut self, text: &str) {
        self.ensure_started();
        self.push(UIMessageChunk::Error {
            error_text: text.into(),
        });
        self.push(UIMessageChunk::FinishStep);
        let message_metadata = Some(self.metadata(None));
        self.push(UIMessageChunk::Finish {
            finish_reason: Some(FinishReason::Error),
            message_metadata,
        });
    }

    /// Ends the stream on the user's stop: what waits was never seen, so it is dropped and the
    /// stored text is exactly what streamed; then `abort` and `finish`.
    pub fn abort(&mut self) {
        self.discard();
        self.ensure_started();
        self.push(UIMessageChunk::Abort {
            reason: Some("stopped by the user".into()),
        });
        let message_metadata = Some(self.metadata(None));
        self.push(UIMessageChunk::Finish {
            finish_reason: None,
            message_metadata,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::MessageAccumulator;

    fn kinds(chunks: &[UIMessageChunk]) -> Vec<String> {
        chunks
            .iter()
            .map(|c| {
                serde_json::to_value(c).expect("chunk")["type"]
                    .as_str()
                    .expect("type")
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn a_reply_opens_merges_and_closes_its_parts() {
        let mut b = ChunkBuilder::new("a1", "m");
        b.reasoning("think".into());
        b.text("Hel".into());
        b.text("lo".into());
        b.finish(Some(FinishReason::Stop), None);
        let chunks = b.take();
        assert_eq!(
            kinds(&chunks),
            [
                "start",
                "start-step",
                "reasoning-start",
                "reasoning-delta",
                "reasoning-end",
                "text-start",
                "text-delta",
                "text-end",
                "finish-step",
                "finish"
            ]
        );
        let mut acc = MessageAccumulator::new("a1");
        acc.apply_all(&chunks);
        assert!(acc.is_finished());
        assert_eq!(acc.message().text(), "Hello");
        assert!(b.is_empty());
        assert_eq!(b.pending_bytes(), 0);
    }

    #[test]
    fn deltas_taken_in_separate_frames_stay_separate_chunks_of_one_part() {
        let mut b = ChunkBuilder::new("a1", "m");
        b.text("one ".into());
        let first = b.take();
        b.text("two".into());
        let second = b.take();
        assert_eq!(
            kinds(&first),
            ["start", "start-step", "text-start", "text-delta"]
        );
        assert_eq!(kinds(&second), ["text-delta"]);
        let mut acc = MessageAccumulator::new("a1");
        acc.apply_all(first.iter().chain(&second));
        assert_eq!(acc.message().text(), "one two");
    }

    #[test]
    fn abort_drops_what_was_not_taken() {
        let mut b = ChunkBuilder::new("a1", "m");
        b.text("seen ".into());
        let seen = b.take();
        b.text("never seen".into());
        b.abort();
        let end = b.take();
        assert_eq!(kinds(&end), ["abort", "finish"]);
        let mut acc = MessageAccumulator::new("a1");
        acc.apply_all(seen.iter().chain(&end));
        assert_eq!(acc.message().text(), "seen ");
        assert!(acc.is_finished());
    }

    #[test]
    fn an_error_after_an_earlier_attempt_does_not_start_again() {
        let mut b = ChunkBuilder::new("a1", "m").already_started();
        b.error("interrupted");
        assert_eq!(kinds(&b.take()), ["error", "finish-step", "finish"]);
        let mut fresh = ChunkBuilder::new("a1", "m");
        fresh.error("refused");
        assert_eq!(
            kinds(&fresh.take()),
            ["start", "start-step", "error", "finish-step", "finish"]
        );
    }

    #[test]
    fn empty_deltas_change_nothing() {
        let mut b = ChunkBuilder::new("a1", "m");
        b.text(String::new());
        b.reasoning(String::new());
        assert!(b.is_empty());
    }
}
