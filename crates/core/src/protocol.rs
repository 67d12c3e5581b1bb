//! The WebSocket wire protocol (DESIGN §5): JSON text frames, validated at the edge.
//!
//! `web/src/protocol.ts` is the TypeScript twin of this module; `crates/core/fixtures/frames`
//! holds frames both sides must parse.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chunk::UIMessageChunk;
use crate::config::MAX_CLIENT_FRAME_BYTES;
use crate::domain::{ChatId, EndedReason, Trigger};
use crate::error::{ChatError, ErrorCode};
use crate::message::UIMessage;

/// `send-message`: a new user message (`submit-message`) or a new reply to the last one
/// (`regenerate-message`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendMessage {
    #[serde(default)]
    pub request_id: Option<String>,
    pub chat_id: ChatId,
    #[serde(default)]
    pub message: Option<UIMessage>,
    #[serde(default = "default_trigger")]
    pub trigger: Trigger,
    /// For `regenerate-message`: the assistant message to replace (the last one when absent).
    #[serde(default)]
    pub message_id: Option<String>,
    /// The model this turn and later ones use (an addition to DESIGN §5): a new chat's model,
    /// or a new one for an existing chat, which becomes the chat's once the turn is claimed.
    /// One of `GET /api/models`, else `bad_request`. Absent: the chat's own (a new chat: the
    /// default). Any trigger may carry it: a regeneration or an edit can change the model too.
    #[serde(default)]
    pub model: Option<String>,
}

fn default_trigger() -> Trigger {
    Trigger::SubmitMessage
}

/// `resume`: subscribe to a chat and replay its run from `lastEventId`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resume {
    #[serde(default)]
    pub request_id: Option<String>,
    pub chat_id: ChatId,
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub last_event_id: u64,
}

/// `stop` and `unsubscribe` name a chat. `stop` may also name the turn it stops, so that a
/// stop sent late (after that turn ended and the next began) cannot abort the next turn:
/// `assistantMessageId` (from `ack` or `turn-started`) and/or `runId`. A stop that names
/// neither stops whatever streams (the older form). `unsubscribe` names neither.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChatRequest {
    #[serde(default)]
    pub request_id: Option<String>,
    pub chat_id: ChatId,
    /// `stop` only: the run of the turn to stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// `stop` only: the assistant message id of the turn to stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assistant_message_id: Option<String>,
    /// `stop` only, with `runId`: the last event of that run the client had shown. The stored
    /// reply ends there, so it is exactly what was on screen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ping {
    #[serde(default)]
    pub request_id: Option<String>,
}

/// A frame from the client; `action` selects the route (`$request.body.action`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum ClientFrame {
    SendMessage(SendMessage),
    Resume(Resume),
    Stop(ChatRequest),
    Unsubscribe(ChatRequest),
    Ping(Ping),
}

/// The actions a client may send, i.e. the routes of the WebSocket API besides `$connect`,
/// `$disconnect` and `$default`.
pub const ACTIONS: [&str; 5] = ["send-message", "resume", "stop", "unsubscribe", "ping"];

/// A client frame that was refused, with what the error frame should echo.
#[derive(Debug)]
pub struct RejectedFrame {
    pub request_id: Option<String>,
    pub chat_id: Option<String>,
    pub error: ChatError,
}

impl RejectedFrame {
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::error(self.request_id.clone(), self.chat_id.clone(), &self.error)
    }
}

impl ClientFrame {
    /// Parses and validates a client frame.
    /// # Errors
    /// `too_large` past 32 KB, `bad_request` for malformed JSON, a missing or unknown
    /// `action`, or fields that do not fit the action's schema.
    pub fn parse(text: &str) -> Result<ClientFrame, RejectedFrame> {
        let value: Result<Value, _> = serde_json::from_str(text);
        let (request_id, chat_id) = match &value {
            Ok(v) => (string_field(v, "requestId"), string_field(v, "chatId")),
            Err(_) => (None, None),
        };
        let reject = |error| RejectedFrame {
            request_id: request_id.clone(),
            chat_id: chat_id.clone(),
            error,
        };
        if text.len() > MAX_CLIENT_FRAME_BYTES {
            return Err(reject(ChatError::TooLarge(format!(
                "frame is {} bytes; the limit is {MAX_CLIENT_FRAME_BYTES}",
                text.len()
            ))));
        }
        let value =
            value.map_err(|e| reject(ChatError::BadRequest(format!("malformed JSON: {e}"))))?;
        let Some(action) = value
            .get("action")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return Err(reject(ChatError::BadRequest(
                "a frame must be a JSON object with a string `action`".into(),
            )));
        };
        if !ACTIONS.contains(&action.as_str()) {
            return Err(reject(ChatError::BadRequest(format!(
                "unknown action: {}",
                excerpt(&action)
            ))));
        }
        let frame: ClientFrame = serde_json::from_value(value).map_err(|e| {
            // serde quotes the offending value (an unknown `trigger`, say), which may be as
            // long as the frame: the answer quotes only its start.
            reject(ChatError::BadRequest(format!(
                "invalid {action} frame: {}",
                excerpt(&e.to_string())
            )))
        })?;
        frame.validate().map_err(reject)?;
        Ok(frame)
    }

    /// Checks what serde cannot express.
    fn validate(&self) -> Result<(), ChatError> {
        match self {
            ClientFrame::Stop(r) => {
                for (name, id) in [
                    ("runId", &r.run_id),
                    ("assistantMessageId", &r.assistant_message_id),
                ] {
                    if id
                        .as_deref()
                        .is_some_and(|id| !crate::domain::is_valid_id(id))
                    {
                        return Err(ChatError::BadRequest(format!(
                            "{name} must be 1-64 characters of A-Z, a-z, 0-9, _ and -"
                        )));
                    }
                }
            }
            ClientFrame::Unsubscribe(r)
                if r.run_id.is_some()
                    || r.assistant_message_id.is_some()
                    || r.last_event_id.is_some() =>
            {
                return Err(ChatError::BadRequest(
                    "unsubscribe names only a chatId".into(),
                ));
            }
            _ => {}
        }
        if let ClientFrame::SendMessage(m) = self {
            match (m.trigger, &m.message) {
                (Trigger::SubmitMessage, None) => {
                    return Err(ChatError::BadRequest(
                        "submit-message needs a `message`".into(),
                    ));
                }
                (Trigger::SubmitMessage, Some(message)) => validate_user_message(message)?,
                (Trigger::RegenerateMessage, _) => {}
            }
        }
        Ok(())
    }

    /// The `requestId` a reply echoes.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ClientFrame::SendMessage(f) => f.request_id.as_deref(),
            ClientFrame::Resume(f) => f.request_id.as_deref(),
            ClientFrame::Stop(f) | ClientFrame::Unsubscribe(f) => f.request_id.as_deref(),
            ClientFrame::Ping(f) => f.request_id.as_deref(),
        }
    }
}

/// The start of a client-supplied text quoted in an error message, so that an answer never
/// echoes a whole 32 KB frame back (found by the `client_frame` fuzz target).
fn excerpt(text: &str) -> String {
    const MAX_QUOTED_CHARS: usize = 200;
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

fn string_field(v: &Value, name: &str) -> Option<String> {
    v.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// A user's message must be a user message with a valid id and at least one part, and
/// must not smuggle in parts only models write.
pub fn validate_user_message(message: &UIMessage) -> Result<(), ChatError> {
    use crate::message::{Role, UIPart};
    if message.role != Role::User {
        return Err(ChatError::BadRequest(
            "message.role must be \"user\"".into(),
        ));
    }
    if !crate::domain::is_valid_id(&message.id) {
        return Err(ChatError::BadRequest(
            "message.id must be 1-64 characters of A-Z, a-z, 0-9, _ and -".into(),
        ));
    }
    if message.parts.is_empty() {
        return Err(ChatError::BadRequest(
            "message.parts must not be empty".into(),
        ));
    }
    for part in &message.parts {
        match part {
            UIPart::Text(_) | UIPart::File(_) | UIPart::Data(_) => {}
            other => {
                return Err(ChatError::BadRequest(format!(
                    "a user message cannot carry a `{}` part",
                    other.part_type()
                )));
            }
        }
    }
    if message.text().trim().is_empty()
        && !message.parts.iter().any(|p| matches!(p, UIPart::File(_)))
    {
        return Err(ChatError::BadRequest("message has no text".into()));
    }
    Ok(())
}

/// A frame to the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerFrame {
    #[serde(rename_all = "camelCase")]
    Ack {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        request_id: Option<String>,
        chat_id: ChatId,
        run_id: String,
        access_token: String,
        user_message_id: String,
        assistant_message_id: String,
    },
    #[serde(rename_all = "camelCase")]
    TurnStarted {
        chat_id: ChatId,
        run_id: String,
        user_message: UIMessage,
        assistant_message_id: String,
        first_event_id: u64,
    },
    #[serde(rename_all = "camelCase")]
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        request_id: Option<String>,
        chat_id: ChatId,
        run_id: Option<String>,
        streaming: bool,
        /// The replay holds the events after this id, through `replay_through`: the client's
        /// `lastEventId` when it named the current run, else the start of the running turn.
        replay_from: u64,
        replay_through: u64,
    },
    #[serde(rename_all = "camelCase")]
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        request_id: Option<String>,
        chat_id: ChatId,
    },
    #[serde(rename_all = "camelCase")]
    Events {
        chat_id: ChatId,
        run_id: String,
        first_event_id: u64,
        chunks: Vec<UIMessageChunk>,
        replay: bool,
    },
    #[serde(rename_all = "camelCase")]
    TurnComplete {
        chat_id: ChatId,
        run_id: String,
        last_event_id: u64,
        access_token: String,
    },
    #[serde(rename_all = "camelCase")]
    SessionEnded {
        chat_id: ChatId,
        run_id: String,
        reason: EndedReason,
    },
    #[serde(rename_all = "camelCase")]
    Error {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        request_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        chat_id: Option<String>,
        code: ErrorCode,
        message: String,
        /// With `rate_limited` only: when the request would be accepted.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        retry_after_ms: Option<u64>,
    },
    #[serde(rename_all = "camelCase")]
    Pong {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        request_id: Option<String>,
    },
}

impl ServerFrame {
    pub fn error(request_id: Option<String>, chat_id: Option<String>, error: &ChatError) -> Self {
        ServerFrame::Error {
            request_id,
            chat_id,
            code: error.code(),
            message: error.client_message(),
            retry_after_ms: error.retry_after_ms(),
        }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> ErrorCode {
        ClientFrame::parse(text).unwrap_err().error.code()
    }

    #[test]
    fn valid_frames_parse() {
        let f = ClientFrame::parse(
            r#"{"action":"send-message","requestId":"r1","chatId":"c1","message":{"id":"m1","role":"user","parts":[{"type":"text","text":"hi"}]},"trigger":"submit-message"}"#,
        )
        .unwrap();
        assert_eq!(f.request_id(), Some("r1"));
        assert!(matches!(
            ClientFrame::parse(r#"{"action":"resume","chatId":"c1","runId":"r","lastEventId":17}"#)
                .unwrap(),
            ClientFrame::Resume(Resume {
                last_event_id: 17,
                ..
            })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"action":"ping"}"#).unwrap(),
            ClientFrame::Ping(_)
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"action":"send-message","chatId":"c1","trigger":"regenerate-message","messageId":"a1"}"#).unwrap(),
            ClientFrame::SendMessage(SendMessage { trigger: Trigger::RegenerateMessage, .. })
        ));
    }

    #[test]
    fn bad_frames_are_rejected_with_codes_and_echo_ids() {
        assert_eq!(code_of("{not json"), ErrorCode::BadRequest);
        assert_eq!(
            code_of(r#"{"action":"dance","requestId":"r9"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"action":"resume","requestId":"r9"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"action":"resume","chatId":"bad id"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code_of(r#"[1,2]"#), ErrorCode::BadRequest);
        assert_eq!(
            code_of(
                r#"{"action":"send-message","chatId":"c","message":{"id":"m","role":"assistant","parts":[{"type":"text","text":"x"}]}}"#
            ),
            ErrorCode::BadRequest
        );
        let big = format!(
            r#"{{"action":"ping","requestId":"r7","pad":"{}"}}"#,
            "x".repeat(40_000)
        );
        let rejected = ClientFrame::parse(&big).unwrap_err();
        assert_eq!(rejected.error.code(), ErrorCode::TooLarge);
        assert_eq!(rejected.request_id.as_deref(), Some("r7"));
        let rejected =
            ClientFrame::parse(r#"{"action":"stop","requestId":"r8","chatId":7}"#).unwrap_err();
        assert_eq!(
            (rejected.request_id.as_deref(), rejected.chat_id),
            (Some("r8"), None)
        );
    }

    #[test]
    fn stop_may_name_its_turn_and_unsubscribe_may_not() {
        let f = ClientFrame::parse(
            r#"{"action":"stop","requestId":"r4","chatId":"c1","runId":"run-1","assistantMessageId":"a-1"}"#,
        )
        .unwrap();
        let ClientFrame::Stop(stop) = f else {
            panic!("a stop")
        };
        assert_eq!(
            (stop.run_id.as_deref(), stop.assistant_message_id.as_deref()),
            (Some("run-1"), Some("a-1"))
        );
        let ClientFrame::Stop(bare) =
            ClientFrame::parse(r#"{"action":"stop","chatId":"c1"}"#).unwrap()
        else {
            panic!("a stop")
        };
        assert_eq!((bare.run_id, bare.assistant_message_id), (None, None));
        assert_eq!(
            code_of(r#"{"action":"stop","chatId":"c1","assistantMessageId":"a b"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"action":"stop","chatId":"c1","runId":7}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"action":"unsubscribe","chatId":"c1","runId":"r"}"#),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn server_frames_have_the_documented_shape() {
        let frame = ServerFrame::Subscribed {
            request_id: Some("r3".into()),
            chat_id: ChatId::parse("c").unwrap(),
            run_id: None,
            streaming: false,
            replay_from: 0,
            replay_through: 0,
        };
        assert_eq!(
            serde_json::to_value(&frame).unwrap(),
            serde_json::json!({"type":"subscribed","requestId":"r3","chatId":"c","runId":null,"streaming":false,"replayFrom":0,"replayThrough":0})
        );
        let err = ServerFrame::error(None, Some("c".into()), &ChatError::chat_not_found());
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            serde_json::json!({"type":"error","chatId":"c","code":"not_found","message":"chat not found"})
        );
    }
}
