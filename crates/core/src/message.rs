//! `UIMessage`, the unit of chat history, exactly as the AI SDK (`ai` 6) defines it.
//!
//! Parts the engine understands (`text`, `reasoning`, `step-start`, `file`, `data-*`) are typed;
//! any other part (tool calls, sources, types added by later SDK versions) is kept as it came,
//! so that history written by a newer client is never silently rewritten.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// A chat message as `useChat` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UIMessage {
    pub id: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    pub parts: Vec<UIPart>,
}

impl UIMessage {
    /// The concatenated text of all `text` parts.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                UIPart::Text(t) => Some(t.text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// A user message with a single text part (convenient for clients and tests).
    pub fn user_text(id: impl Into<String>, text: impl Into<String>) -> Self {
        UIMessage {
            id: id.into(),
            role: Role::User,
            metadata: None,
            parts: vec![UIPart::Text(TextPart {
                text: text.into(),
                state: None,
                extra: Map::new(),
            })],
        }
    }
}

/// Whether a text or reasoning part is still streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartState {
    Streaming,
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextPart {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PartState>,
    /// Fields this version does not interpret (`providerMetadata`, ...), kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasoningPart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PartState>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilePart {
    pub media_type: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A `data-{name}` part: application data streamed alongside the text.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPart {
    /// The full type, including the `data-` prefix.
    pub data_type: String,
    pub id: Option<String>,
    pub data: Value,
}

/// One part of a [`UIMessage`].
#[derive(Debug, Clone, PartialEq)]
pub enum UIPart {
    Text(TextPart),
    Reasoning(ReasoningPart),
    StepStart,
    File(FilePart),
    Data(DataPart),
    /// Any other part type, kept exactly as received.
    Other(Value),
}

impl UIPart {
    /// The part's `type` field.
    pub fn part_type(&self) -> &str {
        match self {
            UIPart::Text(_) => "text",
            UIPart::Reasoning(_) => "reasoning",
            UIPart::StepStart => "step-start",
            UIPart::File(_) => "file",
            UIPart::Data(d) => &d.data_type,
            UIPart::Other(v) => v.get("type").and_then(Value::as_str).unwrap_or(""),
        }
    }
}

fn tagged(kind: &str, body: Value) -> Value {
    let mut map = Map::new();
    map.insert("type".into(), Value::String(kind.into()));
    if let Value::Object(fields) = body {
        map.extend(fields);
    }
    Value::Object(map)
}

impl Serialize for UIPart {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let value = match self {
            UIPart::Text(p) => tagged("text", serde_json::to_value(p).map_err(S::Error::custom)?),
            UIPart::Reasoning(p) => tagged(
                "reasoning",
                serde_json::to_value(p).map_err(S::Error::custom)?,
            ),
            UIPart::StepStart => tagged("step-start", Value::Null),
            UIPart::File(p) => tagged("file", serde_json::to_value(p).map_err(S::Error::custom)?),
            UIPart::Data(d) => {
                let mut map = Map::new();
                map.insert("type".into(), Value::String(d.data_type.clone()));
                if let Some(id) = &d.id {
                    map.insert("id".into(), Value::String(id.clone()));
                }
                map.insert("data".into(), d.data.clone());
                Value::Object(map)
            }
            UIPart::Other(v) => v.clone(),
        };
        value.serialize(s)
    }
}

impl<'de> Deserialize<'de> for UIPart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut value = Value::deserialize(d)?;
        let Some(obj) = value.as_object_mut() else {
            return Err(D::Error::custom("a message part must be an object"));
        };
        let kind = match obj.get("type") {
            Some(Value::String(k)) => k.clone(),
            _ => return Err(D::Error::custom("a message part needs a string `type`")),
        };
        let known = |obj: &mut Map<String, Value>| {
            obj.remove("type");
            Value::Object(std::mem::take(obj))
        };
        Ok(match kind.as_str() {
            "text" => UIPart::Text(serde_json::from_value(known(obj)).map_err(D::Error::custom)?),
            "reasoning" => {
                UIPart::Reasoning(serde_json::from_value(known(obj)).map_err(D::Error::custom)?)
            }
            "step-start" => UIPart::StepStart,
            "file" => UIPart::File(serde_json::from_value(known(obj)).map_err(D::Error::custom)?),
            k if k.starts_with("data-") && obj.contains_key("data") => UIPart::Data(DataPart {
                data_type: kind.clone(),
                id: obj.get("id").and_then(Value::as_str).map(str::to_owned),
                data: obj.get("data").cloned().unwrap_or(Value::Null),
            }),
            _ => UIPart::Other(value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_parts_round_trip_unchanged() {
        let raw = serde_json::json!({
            "id": "m1", "role": "assistant",
            "parts": [
                {"type": "step-start"},
                {"type": "tool-weather", "toolCallId": "c1", "state": "output-available", "input": {"city": "Oslo"}, "output": 3},
                {"type": "data-weather", "id": "d1", "data": {"t": 1}},
                {"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,AA=="},
                {"type": "text", "text": "hi", "state": "done", "providerMetadata": {"x": {"y": 1}}}
            ]
        });
        let message: UIMessage = serde_json::from_value(raw.clone()).unwrap();
        assert!(matches!(message.parts[1], UIPart::Other(_)));
        assert!(matches!(message.parts[2], UIPart::Data(_)));
        assert_eq!(serde_json::to_value(&message).unwrap(), raw);
        assert_eq!(message.text(), "hi");
    }

    #[test]
    fn a_part_without_type_is_rejected() {
        let raw = serde_json::json!({"id": "m1", "role": "user", "parts": [{"text": "x"}]});
        assert!(serde_json::from_value::<UIMessage>(raw).is_err());
    }
}
