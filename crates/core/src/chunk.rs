//! The AI SDK's UI message stream chunks, and the accumulator that turns them into a message.
//!
//! The browser hands these chunks to `useChat` unchanged, and the server stores the message
//! [`MessageAccumulator`] builds from the very chunks it streamed, so the stored reply is by
//! construction what the client showed. `../shared/fixtures/ai-sdk/` is the ground truth.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::message::{
    DataPart, FilePart, PartState, ReasoningPart, Role, TextPart, UIMessage, UIPart,
};

/// One chunk of the UI message stream (`ai` 6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum UIMessageChunk {
    #[serde(rename_all = "camelCase")]
    Start {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_metadata: Option<Value>,
    },
    StartStep,
    FinishStep,
    #[serde(rename_all = "camelCase")]
    TextStart {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider_metadata: Option<Value>,
    },
    #[serde(rename_all = "camelCase")]
    TextDelta {
        id: String,
        delta: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider_metadata: Option<Value>,
    },
    #[serde(rename_all = "camelCase")]
    TextEnd {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider_metadata: Option<Value>,
    },
    #[serde(rename_all = "camelCase")]
    ReasoningStart {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider_metadata: Option<Value>,
    },
    #[serde(rename_all = "camelCase")]
    ReasoningDelta {
        id: String,
        delta: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider_metadata: Option<Value>,
    },
    #[serde(rename_all = "camelCase")]
    ReasoningEnd {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider_metadata: Option<Value>,
    },
    #[serde(rename_all = "camelCase")]
    Error {
        error_text: String,
    },
    Abort {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    Finish {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        finish_reason: Option<FinishReason>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_metadata: Option<Value>,
    },
    #[serde(rename_all = "camelCase")]
    MessageMetadata {
        message_metadata: Value,
    },
    #[serde(rename_all = "camelCase")]
    File {
        url: String,
        media_type: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider_metadata: Option<Value>,
    },
    /// Tool, source and data chunks, and types of later SDK versions, kept as they came.
    #[serde(untagged)]
    Other(Value),
}

/// Why a model stopped (`finishReason` of the `finish` chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinishReason {
    Stop,
    Length,
    ContentFilter,
    ToolCalls,
    Error,
    Other,
}

impl UIMessageChunk {
    /// Whether this chunk ends a turn's stream (`finish`; `abort` and `error` are followed by one).
    pub fn is_finish(&self) -> bool {
        matches!(self, UIMessageChunk::Finish { .. })
    }

    /// The text delta this chunk carries, if any (used to size frames).
    pub fn delta_len(&self) -> usize {
        match self {
            UIMessageChunk::TextDelta { delta, .. }
            | UIMessageChunk::ReasoningDelta { delta, .. } => delta.len(),
            _ => 0,
        }
    }
}

/// Deep-merges `update` into `base`, as the SDK's `mergeObjects` does for message metadata.
fn merge_metadata(base: &mut Option<Value>, update: &Value) {
    fn merge(base: &mut Value, update: &Value) {
        match (base, update) {
            (Value::Object(b), Value::Object(u)) => {
                for (k, v) in u {
                    match b.get_mut(k) {
                        Some(existing) if existing.is_object() && v.is_object() => {
                            merge(existing, v)
                        }
                        _ => {
                            b.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            (b, u) => *b = u.clone(),
        }
    }
    match base {
        Some(b) => merge(b, update),
        None => *base = Some(update.clone()),
    }
}

fn with_provider_metadata(provider_metadata: &Option<Value>) -> Map<String, Value> {
    let mut extra = Map::new();
    if let Some(pm) = provider_metadata {
        extra.insert("providerMetadata".into(), pm.clone());
    }
    extra
}

/// Builds the assistant `UIMessage` from a stream of chunks, as `readUIMessageStream` does.
#[derive(Debug, Clone)]
pub struct MessageAccumulator {
    message: UIMessage,
    /// Index in `parts` of the open text part for each text id.
    open_text: Vec<(String, usize)>,
    open_reasoning: Vec<(String, usize)>,
    finished: bool,
}

impl MessageAccumulator {
    /// Starts an empty assistant message with the id it will keep unless `start` names another.
    pub fn new(message_id: impl Into<String>) -> Self {
        MessageAccumulator {
            message: UIMessage {
                id: message_id.into(),
                role: Role::Assistant,
                metadata: None,
                parts: Vec::new(),
            },
            open_text: Vec::new(),
            open_reasoning: Vec::new(),
            finished: false,
        }
    }

    fn find(open: &[(String, usize)], id: &str) -> Option<usize> {
        open.iter().rev().find(|(k, _)| k == id).map(|(_, i)| *i)
    }

    /// Applies one chunk.
    pub fn apply(&mut self, chunk: &UIMessageChunk) {
        use UIMessageChunk as C;
        let parts = &mut self.message.parts;
        match chunk {
            C::Start {
                message_id,
                message_metadata,
            } => {
                if let Some(id) = message_id {
                    self.message.id = id.clone();
                }
                if let Some(m) = message_metadata {
                    merge_metadata(&mut self.message.metadata, m);
                }
            }
            C::StartStep => parts.push(UIPart::StepStart),
            C::FinishStep => {
                self.open_text.clear();
                self.open_reasoning.clear();
            }
            C::TextStart {
                id,
                provider_metadata,
            } => {
                parts.push(UIPart::Text(TextPart {
                    text: String::new(),
                    state: Some(PartState::Streaming),
                    extra: with_provider_metadata(provider_metadata),
                }));
                self.open_text.push((id.clone(), parts.len() - 1));
            }
            C::TextDelta {
                id,
                delta,
                provider_metadata,
            } => {
                if let Some(i) = Self::find(&self.open_text, id)
                    && let UIPart::Text(p) = &mut parts[i]
                {
                    p.text.push_str(delta);
                    if let Some(pm) = provider_metadata {
                        p.extra.insert("providerMetadata".into(), pm.clone());
                    }
                }
            }
            C::TextEnd {
                id,
                provider_metadata,
            } => {
                if let Some(i) = Self::find(&self.open_text, id)
                    && let UIPart::Text(p) = &mut parts[i]
                {
                    p.state = Some(PartState::Done);
                    if let Some(pm) = provider_metadata {
                        p.extra.insert("providerMetadata".into(), pm.clone());
                    }
                    self.open_text.retain(|(k, _)| k != id);
                }
            }
            C::ReasoningStart {
                id,
                provider_metadata,
            } => {
                parts.push(UIPart::Reasoning(ReasoningPart {
                    id: Some(id.clone()),
                    text: String::new(),
                    state: Some(PartState::Streaming),
                    extra: with_provider_metadata(provider_metadata),
                }));
                self.open_reasoning.push((id.clone(), parts.len() - 1));
            }
            C::ReasoningDelta {
                id,
                delta,
                provider_metadata,
            } => {
                if let Some(i) = Self::find(&self.open_reasoning, id)
                    && let UIPart::Reasoning(p) = &mut parts[i]
                {
                    p.text.push_str(delta);
                    if let Some(pm) = provider_metadata {
                        p.extra.insert("providerMetadata".into(), pm.clone());
                    }
                }
            }
            C::ReasoningEnd {
                id,
                provider_metadata,
            } => {
                if let Some(i) = Self::find(&self.open_reasoning, id)
                    && let UIPart::Reasoning(p) = &mut parts[i]
                {
                    p.state = Some(PartState::Done);
                    if let Some(pm) = provider_metadata {
                        p.extra.insert("providerMetadata".into(), pm.clone());
                    }
                    self.open_reasoning.retain(|(k, _)| k != id);
                }
            }
            C::File {
                url,
                media_type,
                provider_metadata,
            } => {
                parts.push(UIPart::File(FilePart {
                    media_type: media_type.clone(),
                    url: url.clone(),
                    filename: None,
                    extra: with_provider_metadata(provider_metadata),
                }));
            }
            C::Finish {
                message_metadata, ..
            } => {
                if let Some(m) = message_metadata {
                    merge_metadata(&mut self.message.metadata, m);
                }
                self.finished = true;
            }
            C::MessageMetadata { message_metadata } => {
                merge_metadata(&mut self.message.metadata, message_metadata)
            }
            C::Error { .. } | C::Abort { .. } => {}
            C::Other(value) => self.apply_other(value),
        }
    }

    /// `data-*` chunks become parts (a chunk with the id of an existing part replaces its data;
    /// transient ones are not kept). Tool and source chunks are not produced by chatrun's models.
    fn apply_other(&mut self, value: &Value) {
        let Some(kind) = value.get("type").and_then(Value::as_str) else {
            return;
        };
        if !kind.starts_with("data-") || value.get("transient") == Some(&Value::Bool(true)) {
            return;
        }
        let id = value.get("id").and_then(Value::as_str).map(str::to_owned);
        let data = value.get("data").cloned().unwrap_or(Value::Null);
        if let Some(id) = &id {
            for part in self.message.parts.iter_mut() {
                if let UIPart::Data(d) = part
                    && d.data_type == kind
                    && d.id.as_deref() == Some(id)
                {
                    d.data = data;
                    return;
                }
            }
        }
        self.message.parts.push(UIPart::Data(DataPart {
            data_type: kind.to_owned(),
            id,
            data,
        }));
    }

    /// Applies every chunk of a slice.
    pub fn apply_all<'a>(&mut self, chunks: impl IntoIterator<Item = &'a UIMessageChunk>) {
        for c in chunks {
            self.apply(c);
        }
    }

    pub fn message(&self) -> &UIMessage {
        &self.message
    }

    /// Whether a `finish` chunk has been applied.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn into_message(self) -> UIMessage {
        self.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> Value {
        // A copy of ../shared/fixtures/ai-sdk, kept in the repository so the tests run anywhere.
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/ai-sdk");
        let text = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("reading fixture {name}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    const CASES: [&str; 4] = ["text", "reasoning-then-text", "error-mid-stream", "stopped"];

    #[test]
    fn every_fixture_chunk_round_trips_unchanged_as_a_known_chunk() {
        for case in CASES {
            let raw = fixture(&format!("{case}.chunks.json"));
            let chunks: Vec<UIMessageChunk> = serde_json::from_value(raw.clone()).unwrap();
            assert!(
                chunks
                    .iter()
                    .all(|c| !matches!(c, UIMessageChunk::Other(_))),
                "{case}: every chunk type is known"
            );
            assert_eq!(serde_json::to_value(&chunks).unwrap(), raw, "{case}");
        }
    }

    #[test]
    fn the_accumulator_builds_the_sdk_message_from_each_fixture() {
        for case in CASES {
            let chunks: Vec<UIMessageChunk> =
                serde_json::from_value(fixture(&format!("{case}.chunks.json"))).unwrap();
            let expected = fixture(&format!("{case}.message.json"));
            let mut acc = MessageAccumulator::new("placeholder");
            acc.apply_all(&chunks);
            assert_eq!(
                serde_json::to_value(acc.message()).unwrap(),
                expected,
                "{case}"
            );
            let stored: UIMessage = serde_json::from_value(expected.clone()).unwrap();
            assert_eq!(
                serde_json::to_value(&stored).unwrap(),
                expected,
                "{case} message round trip"
            );
        }
    }

    #[test]
    fn data_chunks_become_parts_and_replace_by_id() {
        let mut acc = MessageAccumulator::new("m");
        let chunk = |v: Value| serde_json::from_value::<UIMessageChunk>(v).unwrap();
        acc.apply(&chunk(
            serde_json::json!({"type": "data-weather", "id": "w", "data": 1}),
        ));
        acc.apply(&chunk(
            serde_json::json!({"type": "data-weather", "id": "w", "data": 2}),
        ));
        acc.apply(&chunk(
            serde_json::json!({"type": "data-note", "data": "x", "transient": true}),
        ));
        assert_eq!(
            serde_json::to_value(&acc.message().parts).unwrap(),
            serde_json::json!([{"type": "data-weather", "id": "w", "data": 2}])
        );
    }
}
