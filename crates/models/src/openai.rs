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
use chatrun_core::config::ModelCatalog;
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
    /// The models it offers when more than `model` are configured (`CHAT_MODELS`).
    catalog: Option<ModelCatalog>,
}

impl OpenAiModel {
    /// `base_url` defaults to OpenAI's (`https://api.openai.com/v1`).
    pub fn new(api_key: &str, base_url: Option<&str>, model: &str, provider: &str) -> Self {
        install_ring_provider();
        let mut config = OpenAIConfig::new().with_api_key(api_key);
        if let Some(base) = base_url {
            config = config.with_api_base(base.trim_end_matches('/'));
        }
        OpenAiModel {
            client: Client::build(http_client(), config),
            model: model.to_owned(),
            provider: provider.to_owned(),
            catalog: None,
        }
    }

    /// Offers the catalog's models (the same server serves them all) instead of `model` alone.
    #[must_use]
    pub fn with_models(mut self, catalog: ModelCatalog) -> Self {
        self.model = catalog.default_model().to_owned();
        self.catalog = Some(catalog);
        self
    }
}

/// The model's HTTP client: reqwest's defaults (what async-openai's `Client::with_config` builds),
/// trusting Mozilla's roots, compiled in (`webpki-root-certs`), unless `SSL_CERT_FILE` or
/// `SSL_CERT_DIR` is set. reqwest's own default, the platform verifier, reads the system's
/// certificate files whenever a client is built: at run-turn's cold start, 4 to 16 ms of it on
/// this machine (BENCHMARKS.md, "Lambda bootstraps and cold init"). With either variable set it
/// trusts exactly what they name, as before: how to trust a private CA or a local server's own.
/// The AWS SDK's client makes the same choice (`chatrun_aws::sdk_config_loader`).
fn http_client() -> reqwest_openai::Client {
    let mut builder = reqwest_openai::Client::builder();
    if !chatrun_core::config::certificates_named_in_env() {
        builder =
            builder.tls_certs_only(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().map(|cert| {
                reqwest_openai::Certificate::from_der(cert)
                    .expect("with rustls, a certificate is only parsed when the client is built")
            }));
    }
    // As reqwest's `Client::new`, which async-openai called: fails only if no TLS backend can
    // start, here if a root does not parse (a broken `webpki-root-certs`).
    builder.build().expect("the model's HTTP client builds")
}

/// Makes `ring` the process's rustls crypto provider, which the model's reqwest client uses:
/// async-openai is built with `rustls-no-provider`, since reqwest's own default provider is
/// aws-lc-rs, a second (and large) crypto library next to the `ring` the AWS SDK's client uses.
/// Without a provider, building the client would panic. Idempotent; a provider the process
/// installed before is kept.
fn install_ring_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only if another thread installed one meanwhile, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
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

/// A provider's error code worth showing (`invalid_api_key`, `context_length_exceeded`): a short
/// identifier, never free text that could carry a key, a URL or the prompt.
fn safe_code(code: Option<&str>) -> Option<&str> {
    code.filter(|c| {
        (1..=48).contains(&c.len())
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
    })
}

/// What a user is told about a failed model call: the provider, the HTTP status and code when
/// there are some, and a reference that finds the full error in the log. The full error (which
/// may quote the API key, the base URL or the request) goes to the log only.
fn reported(
    provider: &str,
    status: Option<u16>,
    code: Option<&str>,
    full: &dyn std::fmt::Display,
) -> String {
    let reference = format!("{:08x}", rand_u32());
    tracing::warn!(
        provider,
        status,
        reference = %reference,
        error = %full,
        "model call failed"
    );
    let mut text = format!("{provider} error");
    if let Some(status) = status {
        text.push_str(&format!(" (HTTP {status})"));
    }
    if let Some(code) = safe_code(code) {
        text.push_str(&format!(": {code}"));
    }
    text.push_str(&format!(", reference {reference}"));
    text
}

/// A reference id; uniqueness across a log is all it needs.
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish() as u32
}

/// An `{"error": ...}` event in the stream.
fn stream_error_event(provider: &str, error: &Value) -> ModelError {
    let code = error
        .get("code")
        .and_then(Value::as_str)
        .or_else(|| error.get("type").and_then(Value::as_str));
    ModelError::Stream(reported(provider, None, code, error))
}

/// Errors before any streaming: a request the server refuses (4xx but rate limits and
/// timeouts) is `Rejected` (retrying cannot help); everything else is `Unavailable`. Either
/// way the message is [`reported`]'s short, safe one.
fn start_error(provider: &str, e: OpenAIError) -> ModelError {
    match &e {
        OpenAIError::ApiError(api) => {
            let status = api.status_code.as_u16();
            let code = api
                .api_error
                .code
                .as_deref()
                .or(api.api_error.r#type.as_deref());
            let text = reported(provider, Some(status), code, &e);
            if (400..500).contains(&status) && status != 408 && status != 429 {
                ModelError::Rejected(text)
            } else {
                ModelError::Unavailable(text)
            }
        }
        OpenAIError::InvalidArgument(_) => ModelError::Rejected(reported(provider, None, None, &e)),
        OpenAIError::Reqwest(r) => {
            let status = r.status().map(|s| s.as_u16());
            ModelError::Unavailable(reported(provider, status, None, &e))
        }
        _ => ModelError::Unavailable(reported(provider, None, None, &e)),
    }
}

struct StreamState {
    provider: String,
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
                .push_back(Err(stream_error_event(&self.provider, &error)));
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
            .map_err(|e| start_error(&self.provider, e))?;
        let state = StreamState {
            provider: self.provider.clone(),
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
                        let error = ModelError::Stream(reported(&state.provider, None, None, &e));
                        return Some((Err(error), state));
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
        if let Some(catalog) = &self.catalog {
            return catalog.models().to_vec();
        }
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
