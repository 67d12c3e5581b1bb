//! `OpenAiModel`: streaming chat completions on `async-openai`.
//!
//! The request and the stream's chunks use our own serde types through async-openai's
//! bring-your-own-types calls: its typed delta has no field for the reasoning that DeepSeek,
//! vLLM, Ollama and OpenRouter stream (`reasoning_content` / `reasoning`), and mid-stream error
//! events (`{"error": ...}`) would otherwise fail to parse instead of reporting the error.

use std::collections::VecDeque;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_trait::async_trait;
use chatrun_core::chunk::FinishReason;
use chatrun_core::error::ModelError;
use chatrun_core::message::{Role, UIMessage, UIPart};
use chatrun_core::ports::{LanguageModel, ModelEvent, ModelInfo, ModelRequest, ModelStream, Usage};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

/// A chat model behind an OpenAI-compatible `chat/completions` endpoint.
pub struct OpenAiModel {
    client: Client<OpenAIConfig>,
    model: String,
    provider: String,
}

impl OpenAiModel {
    /// `base_url` defaults to OpenAI's (`https://api.openai.com/v1`).
    pub fn new(api_key: &str, base_url: Option<&str>, model: &str, provider: &str) -> Self {
        let mut config = OpenAIConfig::new().with_api_key(api_key);
        if let Some(base) = base_url {
            config = config.with_api_base(base.trim_end_matches('/'));
        }
        OpenAiModel {
            client: Client::with_config(config),
            model: model.to_owned(),
            provider: provider.to_owned(),
        }
    }
}

/// The history as chat messages: text parts only (reasoning is not sent back, files are named).
fn to_chat_messages(messages: &[UIMessage]) -> Vec<Value> {
    messages
        .iter()
        .filter_map(|m| {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            let mut content = String::new();
            for part in &m.parts {
                match part {
                    UIPart::Text(t) => content.push_str(&t.text),
                    UIPart::File(f) => content.push_str(&format!(
                        "\n[attached file: {}]",
                        f.filename.as_deref().unwrap_or(&f.media_type)
                    )),
                    _ => {}
                }
            }
            (!content.is_empty()).then(|| json!({"role": role, "content": content}))
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<StreamChoice>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: Delta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens_details: Option<Value>,
    #[serde(default)]
    prompt_tokens_details: Option<Value>,
}

impl From<RawUsage> for Usage {
    fn from(raw: RawUsage) -> Self {
        let detail = |v: &Option<Value>, key: &str| {
            v.as_ref().and_then(|d| d.get(key)).and_then(Value::as_u64)
        };
        Usage {
            input_tokens: raw.prompt_tokens,
            output_tokens: raw.completion_tokens,
            total_tokens: raw.total_tokens,
            reasoning_tokens: detail(&raw.completion_tokens_details, "reasoning_tokens"),
            cached_input_tokens: detail(&raw.prompt_tokens_details, "cached_tokens"),
        }
    }
}

fn finish_reason(raw: &str) -> FinishReason {
    match raw {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "content_filter" => FinishReason::ContentFilter,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        _ => FinishReason::Other,
    }
}

fn error_text(error: &Value) -> String {
    error
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| error.to_string())
}

/// Errors before any streaming: a request the server refuses (4xx but rate limits and
/// timeouts) is `Rejected` (retrying cannot help); everything else is `Unavailable`.
fn start_error(e: OpenAIError) -> ModelError {
    match &e {
        OpenAIError::ApiError(api) => {
            let status = api.status_code.as_u16();
            if (400..500).contains(&status) && status != 408 && status != 429 {
                ModelError::Rejected(e.to_string())
            } else {
                ModelError::Unavailable(e.to_string())
            }
        }
        OpenAIError::InvalidArgument(_) => ModelError::Rejected(e.to_string()),
        _ => ModelError::Unavailable(e.to_string()),
    }
}

struct StreamState {
    upstream:
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<StreamChunk, OpenAIError>> + Send>>,
    ready: VecDeque<Result<ModelEvent, ModelError>>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    done: bool,
}

impl StreamState {
    fn absorb(&mut self, chunk: StreamChunk) {
        if let Some(error) = chunk.error {
            self.ready
                .push_back(Err(ModelError::Stream(error_text(&error))));
            self.done = true;
            return;
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into());
        }
        for choice in chunk.choices {
            if let Some(r) = choice
                .delta
                .reasoning_content
                .or(choice.delta.reasoning)
                .filter(|r| !r.is_empty())
            {
                self.ready.push_back(Ok(ModelEvent::ReasoningDelta(r)));
            }
            if let Some(c) = choice.delta.content.filter(|c| !c.is_empty()) {
                self.ready.push_back(Ok(ModelEvent::TextDelta(c)));
            }
            if let Some(reason) = choice.finish_reason {
                self.finish = Some(finish_reason(&reason));
            }
        }
    }
}

#[async_trait]
impl LanguageModel for OpenAiModel {
    async fn stream(&self, request: ModelRequest) -> Result<ModelStream, ModelError> {
        let body = json!({
            "model": request.model,
            "messages": to_chat_messages(&request.messages),
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let upstream = self
            .client
            .chat()
            .create_stream_byot::<Value, StreamChunk>(body)
            .await
            .map_err(start_error)?;
        let state = StreamState {
            upstream: Box::pin(upstream),
            ready: VecDeque::new(),
            finish: None,
            usage: None,
            done: false,
        };
        Ok(futures::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(event) = state.ready.pop_front() {
                    return Some((event, state));
                }
                if state.done {
                    return None;
                }
                match state.upstream.next().await {
                    Some(Ok(chunk)) => state.absorb(chunk),
                    Some(Err(e)) => {
                        state.done = true;
                        return Some((Err(ModelError::Stream(e.to_string())), state));
                    }
                    None => {
                        state.done = true;
                        let event = match state.finish {
                            Some(reason) => Ok(ModelEvent::Finish {
                                reason,
                                usage: state.usage.take(),
                            }),
                            None => Err(ModelError::Stream(
                                "the model's stream ended before it finished".into(),
                            )),
                        };
                        return Some((event, state));
                    }
                }
            }
        })
        .boxed())
    }

    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: self.model.clone(),
            label: format!("{} ({})", self.model, self.provider),
            offline: false,
        }]
    }

    fn default_model(&self) -> String {
        self.model.clone()
    }
}
