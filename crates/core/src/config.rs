//! Every setting of chatrun, read from the environment in this one place.
//!
//! Lambda `main`s and the `chatrun` binary call the `from_env` functions once at start-up, so a
//! bad value fails the cold start with a clear message instead of a request later.

use std::time::Duration;

use crate::ports::ModelInfo;

/// A setting that is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {name}: {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: String,
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse_var<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|e: T::Err| ConfigError {
            name,
            problem: format!("cannot parse {raw:?}: {e}"),
        }),
    }
}

/// Settings of the engine (sessions, streaming, tokens, limits).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `CHAT_MAX_TURNS` (100): a session ends after this many turns.
    pub max_turns: u32,
    /// `CHAT_SESSION_IDLE_SECS` (3600): a session with no turn for this long has ended.
    pub session_idle: Duration,
    /// `CHAT_TOKEN_SECRET`: the HS256 key of every token. Required in production; the local
    /// gateway makes and keeps one in its data directory when unset.
    pub token_secret: String,
    /// `CHAT_USER_TOKEN_SECS` (30 days): lifetime of a user token.
    pub user_token_ttl: Duration,
    /// `CHAT_FRAME_INTERVAL_MS` (50), `CHAT_FRAME_INTERVAL_MAX_MS` (the same) and
    /// `CHAT_FRAME_RAMP_MS` (1000): how long deltas are coalesced into one frame, by how far
    /// the reply has come (see [`FrameCadence`]).
    pub frame_cadence: FrameCadence,
    /// `CHAT_FRAME_MAX_BYTES` (4096): a frame is sent early once its deltas reach this size.
    pub frame_max_bytes: usize,
    /// `CHAT_STALE_TURN_SECS` (960): a turn still marked streaming after this long has lost its
    /// worker (Lambda's 15-minute cap has passed), so a new message may start another.
    pub stale_turn_after: Duration,
    /// `CHAT_MAX_RECEIVES` (3): receives of a turn job before it goes to the dead-letter queue.
    pub max_receives: u32,
    /// `CHAT_MODEL_STALL_SECS` (60): a model stream silent this long is cancelled; before its
    /// first token that is retried like any passing model failure.
    pub model_stall: Duration,
    /// `CHAT_TURN_LEASE_SECS` (45): run-turn holds a job it works on invisible for this long,
    /// renewed every third of it (a heartbeat), so a crashed worker's turn comes back within
    /// it whatever the queue's own visibility timeout.
    pub turn_lease: Duration,
    /// `CHAT_RETRY_BACKOFF_SECS` (2): a turn that failed for a passing reason comes back after
    /// this long, doubled for every earlier receive (capped at 30 s).
    pub retry_backoff: Duration,
    /// `CHAT_CONTEXT_TOKENS` (16000): the model gets the most recent messages that fit this
    /// many tokens (counted approximately, four bytes a token), so a long chat never fails
    /// every later turn for being longer than the model's context.
    pub context_tokens: usize,
    /// `CHAT_MANAGEMENT_SECRET`: the local gateway's `/@connections` answers callers off
    /// loopback only when they send it in the `x-chatrun-management-secret` header. Unset:
    /// loopback only.
    pub management_secret: Option<String>,
    /// `CHAT_USER_MAX_CONCURRENT_TURNS` (3): how many turns of one user may stream or wait in
    /// the queue at once; one more is refused with `rate_limited`.
    pub user_max_concurrent_turns: u32,
    /// `CHAT_USER_MESSAGES_PER_MINUTE` (20): messages (sends, edits, regenerations) one user may
    /// start per minute; one more is refused with `rate_limited` and its `retryAfterMs`.
    pub user_messages_per_minute: u32,
    /// `CHAT_GUEST_SESSIONS_PER_IP_PER_HOUR` (30): new guest users one source address may create
    /// per hour (`POST /api/session` without a token); one more answers 429. High enough that a
    /// household or office behind one address never meets it, low enough that a script cannot
    /// mint users to escape the per-user limits.
    pub guest_sessions_per_ip_per_hour: u32,
    /// `CHAT_CONNECTION_RESUMES_PER_MINUTE` (60): `resume` requests one connection may make per
    /// minute; one more is refused with `rate_limited`. A page resumes each chat it follows once
    /// per connection and again only for a gap, so it stays far below; a client asking for a
    /// run's replay in a loop (an amplifier: small request, large answer) does not.
    pub connection_resumes_per_minute: u32,
}

/// A client frame may be at most this large (API Gateway's WebSocket frame size).
pub const MAX_CLIENT_FRAME_BYTES: usize = 32 * 1024;
/// API Gateway's WebSocket message limit; the gateway closes the connection past it.
pub const MAX_WEBSOCKET_MESSAGE_BYTES: usize = 128 * 1024;
/// Stream events are kept this long after they are written.
pub const STREAM_EVENT_TTL: Duration = Duration::from_secs(24 * 3600);
/// API Gateway closes every WebSocket connection after two hours.
pub const CONNECTION_TTL: Duration = Duration::from_secs(2 * 3600);
/// How many chats a page of the chat list holds.
pub const CHAT_PAGE_SIZE: usize = 20;
/// How many messages `GET /api/chats/{id}` returns when the request names no `limit`.
pub const HISTORY_PAGE_DEFAULT: usize = 100;
/// The largest `limit` a history request may ask for.
pub const HISTORY_PAGE_MAX: usize = 500;
/// A history page holds at most this much message JSON (unless one message is larger): with
/// messages of up to 128 KB, a full page of them still answers within Lambda's 6 MB response
/// limit, with room for the rest of the body.
pub const HISTORY_PAGE_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Longest title kept, in characters.
pub const MAX_TITLE_CHARS: usize = 80;
/// The shortest token secret accepted: HS256 with less than 32 bytes of key is guessable.
pub const MIN_TOKEN_SECRET_BYTES: usize = 32;

/// Refuses a token secret shorter than [`MIN_TOKEN_SECRET_BYTES`]. Every start-up path calls it,
/// whatever the secret's source (environment, Secrets Manager, the local data directory).
/// # Errors
/// A secret under 32 bytes, with what to do about it.
pub fn check_token_secret(secret: &str) -> Result<(), ConfigError> {
    if secret.len() < MIN_TOKEN_SECRET_BYTES {
        return Err(ConfigError {
            name: "CHAT_TOKEN_SECRET",
            problem: format!(
                "is {} bytes; it must be at least {MIN_TOKEN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                secret.len()
            ),
        });
    }
    Ok(())
}

impl Settings {
    /// Reads the settings.
    /// # Errors
    /// A setting that does not parse, no `CHAT_TOKEN_SECRET` when `require_secret` is set, or a
    /// configured one under 32 bytes.
    pub fn from_env(require_secret: bool) -> Result<Self, ConfigError> {
        let token_secret = var("CHAT_TOKEN_SECRET").unwrap_or_default();
        // A configured secret is checked even where one is optional: a short one is a mistake.
        if require_secret || !token_secret.is_empty() {
            check_token_secret(&token_secret)?;
        }
        let secs = |name, default| parse_var::<u64>(name, default).map(Duration::from_secs);
        Ok(Settings {
            max_turns: parse_var("CHAT_MAX_TURNS", 100)?,
            session_idle: secs("CHAT_SESSION_IDLE_SECS", 3600)?,
            token_secret,
            user_token_ttl: secs("CHAT_USER_TOKEN_SECS", 30 * 24 * 3600)?,
            frame_cadence: FrameCadence::from_env()?,
            frame_max_bytes: parse_var("CHAT_FRAME_MAX_BYTES", 4096)?,
            stale_turn_after: secs("CHAT_STALE_TURN_SECS", 960)?,
            max_receives: parse_var("CHAT_MAX_RECEIVES", 3)?,
            model_stall: secs("CHAT_MODEL_STALL_SECS", 60)?,
            turn_lease: secs("CHAT_TURN_LEASE_SECS", 45)?,
            retry_backoff: secs("CHAT_RETRY_BACKOFF_SECS", 2)?,
            context_tokens: parse_var("CHAT_CONTEXT_TOKENS", 16_000)?,
            management_secret: var("CHAT_MANAGEMENT_SECRET"),
            user_max_concurrent_turns: positive("CHAT_USER_MAX_CONCURRENT_TURNS", 3)?,
            user_messages_per_minute: positive("CHAT_USER_MESSAGES_PER_MINUTE", 20)?,
            guest_sessions_per_ip_per_hour: positive("CHAT_GUEST_SESSIONS_PER_IP_PER_HOUR", 30)?,
            connection_resumes_per_minute: positive("CHAT_CONNECTION_RESUMES_PER_MINUTE", 60)?,
        })
    }

    /// Defaults with the given secret (tests and tools).
    pub fn with_secret(secret: impl Into<String>) -> Self {
        Settings {
            max_turns: 100,
            session_idle: Duration::from_secs(3600),
            token_secret: secret.into(),
            user_token_ttl: Duration::from_secs(30 * 24 * 3600),
            frame_cadence: FrameCadence::fixed(Duration::from_millis(50)),
            frame_max_bytes: 4096,
            stale_turn_after: Duration::from_secs(960),
            max_receives: 3,
            model_stall: Duration::from_secs(60),
            turn_lease: Duration::from_secs(45),
            retry_backoff: Duration::from_secs(2),
            context_tokens: 16_000,
            management_secret: None,
            user_max_concurrent_turns: 3,
            user_messages_per_minute: 20,
            guest_sessions_per_ip_per_hour: 30,
            connection_resumes_per_minute: 60,
        }
    }
}

/// How long a turn coalesces deltas into one frame, by the time since its first token went out.
///
/// The first token always goes out at once. For `ramp` the interval is `base` (the reader waits
/// for the first words and watches them arrive); after that it widens by a quarter of the time
/// since the ramp ended, up to `max`. Every frame costs the same on AWS (a `PutItem`, a `Query`
/// and an API Gateway message), so a long reply at the widened interval costs a fraction of one
/// at 50 ms, while the page smooths the larger frames into a steady reveal.
///
/// The widening is gradual, not a step: at a quarter per millisecond, each frame waits about a
/// quarter longer than the one before, so a page that spreads a frame's words over 1.25 times the
/// gap that frame covered never runs dry while the frames grow. A step from 50 ms to 500 ms would
/// leave the page with nothing to show for 450 ms once, mid-sentence. The cost of the gradual way
/// is small: from 50 ms to 500 ms takes 1.8 s and about nine frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCadence {
    /// The interval at first.
    pub base: Duration,
    /// The widest interval.
    pub max: Duration,
    /// How long a reply streams at `base` before the interval widens.
    pub ramp: Duration,
}

/// The ramp when `CHAT_FRAME_RAMP_MS` is unset: the first second of a reply streams at the base
/// interval.
const DEFAULT_FRAME_RAMP: Duration = Duration::from_millis(1000);

impl FrameCadence {
    /// The same interval for the whole reply (the local gateway: no price per message).
    pub fn fixed(interval: Duration) -> Self {
        FrameCadence {
            base: interval,
            max: interval,
            ramp: DEFAULT_FRAME_RAMP,
        }
    }

    /// `base` for `ramp`, then widening to `max`.
    /// # Errors
    /// A `max` below `base` (named as `CHAT_FRAME_INTERVAL_MAX_MS`, where it comes from).
    pub fn adaptive(base: Duration, max: Duration, ramp: Duration) -> Result<Self, ConfigError> {
        if max < base {
            return Err(ConfigError {
                name: "CHAT_FRAME_INTERVAL_MAX_MS",
                problem: format!(
                    "is {} ms, below CHAT_FRAME_INTERVAL_MS ({} ms); it must be at least that",
                    max.as_millis(),
                    base.as_millis()
                ),
            });
        }
        Ok(FrameCadence { base, max, ramp })
    }

    /// Reads `CHAT_FRAME_INTERVAL_MS` (50), `CHAT_FRAME_INTERVAL_MAX_MS` (the base: a fixed
    /// cadence) and `CHAT_FRAME_RAMP_MS` (1000).
    /// # Errors
    /// A value that is not a whole number of milliseconds, or a max below the base.
    pub fn from_env() -> Result<Self, ConfigError> {
        let millis = |name, default| parse_var::<u64>(name, default).map(Duration::from_millis);
        let base = millis("CHAT_FRAME_INTERVAL_MS", 50)?;
        let max = millis("CHAT_FRAME_INTERVAL_MAX_MS", base.as_millis() as u64)?;
        let ramp = millis("CHAT_FRAME_RAMP_MS", DEFAULT_FRAME_RAMP.as_millis() as u64)?;
        Self::adaptive(base, max, ramp)
    }

    /// How long deltas that begin to wait `elapsed` after the turn's first frame are coalesced.
    pub fn interval_at(&self, elapsed: Duration) -> Duration {
        let widening = elapsed.saturating_sub(self.ramp) / 4;
        (self.base + widening).min(self.max).max(self.base)
    }
}

/// A limit of at least one: a limit of zero would refuse everything, which no one means.
fn positive(name: &'static str, default: u32) -> Result<u32, ConfigError> {
    match parse_var(name, default)? {
        0 => Err(ConfigError {
            name,
            problem: "must be at least 1".into(),
        }),
        n => Ok(n),
    }
}

/// Which model answers, from `OPENAI_API_KEY`, `OPENAI_BASE_URL`, `ANTHROPIC_API_KEY`,
/// `CHAT_MODEL` and `CHAT_OFFLINE_TOKENS_PER_SEC`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSettings {
    /// Any OpenAI-compatible server (OpenAI, Ollama, vLLM, llama.cpp, OpenRouter).
    OpenAi {
        api_key: String,
        base_url: Option<String>,
        model: String,
    },
    /// Anthropic through its OpenAI-compatible endpoint.
    Anthropic { api_key: String, model: String },
    /// The built-in offline model (no key set).
    Offline { tokens_per_sec: f64 },
}

/// Anthropic's OpenAI-compatible endpoint.
pub const ANTHROPIC_OPENAI_BASE_URL: &str = "https://api.anthropic.com/v1";

/// The id of the built-in offline model.
pub const OFFLINE_MODEL_ID: &str = "offline";

/// Longest model id accepted in `CHAT_MODELS` and in a `send-message`.
pub const MAX_MODEL_ID_CHARS: usize = 100;

impl ModelSettings {
    /// The model a chat uses when it names none: `CHAT_MODEL` (or the provider's usual one),
    /// [`OFFLINE_MODEL_ID`] for the offline model.
    pub fn default_model(&self) -> &str {
        match self {
            ModelSettings::OpenAi { model, .. } | ModelSettings::Anthropic { model, .. } => model,
            ModelSettings::Offline { .. } => OFFLINE_MODEL_ID,
        }
    }

    /// # Errors
    /// `CHAT_OFFLINE_TOKENS_PER_SEC` that is not a positive number.
    pub fn from_env() -> Result<Self, ConfigError> {
        if let Some(api_key) = var("OPENAI_API_KEY") {
            return Ok(ModelSettings::OpenAi {
                api_key,
                base_url: var("OPENAI_BASE_URL"),
                model: var("CHAT_MODEL").unwrap_or_else(|| "gpt-4o-mini".into()),
            });
        }
        if let Some(api_key) = var("ANTHROPIC_API_KEY") {
            return Ok(ModelSettings::Anthropic {
                api_key,
                model: var("CHAT_MODEL").unwrap_or_else(|| "claude-sonnet-4-5".into()),
            });
        }
        // A keyless local server (Ollama, llama.cpp) is named by its base URL alone.
        if let Some(base_url) = var("OPENAI_BASE_URL") {
            return Ok(ModelSettings::OpenAi {
                api_key: "none".into(),
                base_url: Some(base_url),
                model: var("CHAT_MODEL").unwrap_or_else(|| "llama3.2".into()),
            });
        }
        let tokens_per_sec: f64 = parse_var("CHAT_OFFLINE_TOKENS_PER_SEC", 40.0)?;
        if !tokens_per_sec.is_finite() || tokens_per_sec <= 0.0 {
            return Err(ConfigError {
                name: "CHAT_OFFLINE_TOKENS_PER_SEC",
                problem: "must be a positive number".into(),
            });
        }
        offline_reply_tokens_from_env()?;
        Ok(ModelSettings::Offline { tokens_per_sec })
    }
}

/// The models a user can pick (`GET /api/models`), all served by the one configured provider:
/// its default model, then the ids `CHAT_MODELS` lists. It holds no credentials, so
/// `send-message` reads it too, to refuse an unknown model before anything is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCatalog {
    models: Vec<ModelInfo>,
    default: String,
}

impl ModelCatalog {
    /// The provider's default model and the `extra` ids (duplicates dropped), in that order.
    /// # Errors
    /// An extra id that is empty, longer than [`MAX_MODEL_ID_CHARS`] or holds a comma,
    /// whitespace or a control character (named as `CHAT_MODELS`, where they come from).
    pub fn new(settings: &ModelSettings, extra: &[String]) -> Result<Self, ConfigError> {
        if let Some(bad) = extra.iter().find(|id| !is_valid_model_id(id)) {
            return Err(ConfigError {
                name: "CHAT_MODELS",
                problem: format!(
                    "{bad:?} is not a model id (1-{MAX_MODEL_ID_CHARS} characters, no spaces or commas)"
                ),
            });
        }
        Ok(Self::build(settings, extra))
    }

    /// The settings' default model alone.
    pub fn single(settings: &ModelSettings) -> Self {
        Self::build(settings, &[])
    }

    fn build(settings: &ModelSettings, extra: &[String]) -> Self {
        let (provider, offline) = match settings {
            ModelSettings::OpenAi { .. } => ("OpenAI-compatible", false),
            ModelSettings::Anthropic { .. } => ("Anthropic", false),
            ModelSettings::Offline { .. } => ("offline", true),
        };
        // The default is the operator's own `CHAT_MODEL` (or a built-in name): offered as is.
        let default = settings.default_model().to_owned();
        let mut models: Vec<ModelInfo> = Vec::new();
        for id in std::iter::once(&default).chain(extra) {
            if models.iter().any(|m| &m.id == id) {
                continue;
            }
            let label = if offline && id == OFFLINE_MODEL_ID {
                "Offline (built-in)".to_owned()
            } else {
                format!("{id} ({provider})")
            };
            models.push(ModelInfo {
                id: id.clone(),
                label,
                offline,
            });
        }
        ModelCatalog { models, default }
    }

    /// The catalog of the settings with the models `CHAT_MODELS` adds: a comma-separated list
    /// of model ids the same provider serves (`gpt-4o-mini,gpt-4o`; the offline model answers
    /// as any id, and says which in its reply). Unset: the provider's default model alone.
    /// # Errors
    /// A listed id that is not a model id.
    pub fn from_env(settings: &ModelSettings) -> Result<Self, ConfigError> {
        Self::new(settings, &listed_models_from_env())
    }

    /// A catalog as a provider describes it (tests, and providers that list their own).
    pub fn from_parts(models: Vec<ModelInfo>, default: String) -> Self {
        ModelCatalog { models, default }
    }

    /// Every model, the default first.
    pub fn models(&self) -> &[ModelInfo] {
        &self.models
    }

    /// The model a chat uses when it names none.
    pub fn default_model(&self) -> &str {
        &self.default
    }

    /// Whether users may pick `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.models.iter().any(|m| m.id == id)
    }
}

/// The ids `CHAT_MODELS` lists (see [`ModelCatalog::from_env`]), unchecked.
pub fn listed_models_from_env() -> Vec<String> {
    var("CHAT_MODELS")
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A model id as a setting or a request may carry it: 1-100 characters, none of them
/// whitespace or control characters (ids such as `meta-llama/llama-3.1-8b:free` pass).
pub fn is_valid_model_id(id: &str) -> bool {
    (1..=MAX_MODEL_ID_CHARS).contains(&id.chars().count())
        && !id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
}

/// `CHAT_OFFLINE_REPLY_TOKENS`: when set, every reply of the built-in offline model is exactly
/// this many tokens, so a benchmark fixes both the rate and the length of a turn. Kept apart
/// from `ModelSettings::Offline` so code that builds that variant needs no change.
/// # Errors
/// A value that is not a positive whole number.
pub fn offline_reply_tokens_from_env() -> Result<Option<usize>, ConfigError> {
    match parse_var::<usize>("CHAT_OFFLINE_REPLY_TOKENS", 0)? {
        0 if var("CHAT_OFFLINE_REPLY_TOKENS").is_some() => Err(ConfigError {
            name: "CHAT_OFFLINE_REPLY_TOKENS",
            problem: "must be a positive whole number".into(),
        }),
        0 => Ok(None),
        n => Ok(Some(n)),
    }
}

/// Whether `SSL_CERT_FILE` or `SSL_CERT_DIR` is set. The HTTPS clients (the AWS SDK's and the
/// model's) then trust exactly what those name, as rustls-native-certs reads them, instead of
/// Mozilla's roots compiled in: how to trust a private CA or a local server's own certificate.
pub fn certificates_named_in_env() -> bool {
    std::env::var_os("SSL_CERT_FILE").is_some() || std::env::var_os("SSL_CERT_DIR").is_some()
}

/// Names of the AWS resources, for the Lambda functions and `chatrun serve --backend aws`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AwsSettings {
    /// `CHAT_TABLE_NAME`: the single DynamoDB table.
    pub table_name: String,
    /// `CHAT_TURN_QUEUE_URL`: the FIFO turn queue.
    pub turn_queue_url: Option<String>,
    /// `CHAT_DEAD_LETTER_QUEUE_URL`: its dead-letter queue (the local gateway polls it).
    pub dead_letter_queue_url: Option<String>,
    /// `CHAT_DEAD_LETTER_QUEUE_ARN`: run-turn treats records from this queue as dead letters.
    pub dead_letter_queue_arn: Option<String>,
    /// `CHAT_TOKEN_SECRET_ARN`: Secrets Manager secret holding the token secret, read at cold
    /// start so the secret never sits in the function's environment.
    pub token_secret_arn: Option<String>,
    /// `CHAT_MODEL_API_KEY_SECRET_ARN`: Secrets Manager secret holding the model API key.
    pub model_api_key_secret_arn: Option<String>,
    /// `CHAT_WS_MANAGEMENT_ENDPOINT`: `https://{api}.execute-api.{region}.amazonaws.com/{stage}`;
    /// when unset, handlers derive it from the event's domain and stage.
    pub management_endpoint: Option<String>,
}

impl AwsSettings {
    /// # Errors
    /// No `CHAT_TABLE_NAME`.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(AwsSettings {
            table_name: var("CHAT_TABLE_NAME").ok_or(ConfigError {
                name: "CHAT_TABLE_NAME",
                problem: "must name the DynamoDB table".into(),
            })?,
            turn_queue_url: var("CHAT_TURN_QUEUE_URL"),
            dead_letter_queue_url: var("CHAT_DEAD_LETTER_QUEUE_URL"),
            dead_letter_queue_arn: var("CHAT_DEAD_LETTER_QUEUE_ARN"),
            token_secret_arn: var("CHAT_TOKEN_SECRET_ARN"),
            model_api_key_secret_arn: var("CHAT_MODEL_API_KEY_SECRET_ARN"),
            management_endpoint: var("CHAT_WS_MANAGEMENT_ENDPOINT"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_offers_the_default_first_then_the_listed_models_once() {
        let offline = ModelSettings::Offline {
            tokens_per_sec: 40.0,
        };
        let extra = ["offline-large", "offline", "offline-large"].map(String::from);
        let catalog = ModelCatalog::new(&offline, &extra).expect("valid ids");
        let ids: Vec<&str> = catalog.models().iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["offline", "offline-large"]);
        assert_eq!(catalog.default_model(), "offline");
        assert_eq!(catalog.models()[0].label, "Offline (built-in)");
        assert_eq!(catalog.models()[1].label, "offline-large (offline)");
        assert!(catalog.models().iter().all(|m| m.offline));
        assert!(catalog.contains("offline-large"));
        assert!(!catalog.contains("gpt-4o"));

        let openai = ModelSettings::OpenAi {
            api_key: "k".into(),
            base_url: None,
            model: "gpt-4o-mini".into(),
        };
        let single = ModelCatalog::single(&openai);
        assert_eq!(single.default_model(), "gpt-4o-mini");
        assert_eq!(single.models().len(), 1);
        assert_eq!(single.models()[0].label, "gpt-4o-mini (OpenAI-compatible)");
        assert!(!single.models()[0].offline);
    }

    #[test]
    fn the_frame_interval_holds_for_the_ramp_then_widens_by_a_quarter_up_to_the_max() {
        let ms = Duration::from_millis;
        let cadence = FrameCadence::adaptive(ms(50), ms(500), ms(1000)).expect("max above base");
        assert_eq!(cadence.interval_at(ms(0)), ms(50));
        assert_eq!(cadence.interval_at(ms(1000)), ms(50));
        assert_eq!(cadence.interval_at(ms(1400)), ms(150));
        assert_eq!(cadence.interval_at(ms(2800)), ms(500));
        assert_eq!(cadence.interval_at(ms(60_000)), ms(500));
        let fixed = FrameCadence::fixed(ms(50));
        assert_eq!(fixed.interval_at(ms(60_000)), ms(50));
        let err = FrameCadence::adaptive(ms(50), ms(20), ms(1000)).unwrap_err();
        assert_eq!(err.name, "CHAT_FRAME_INTERVAL_MAX_MS");
    }

    #[test]
    fn a_listed_model_id_must_be_one() {
        let offline = ModelSettings::Offline {
            tokens_per_sec: 40.0,
        };
        for bad in ["", "two words", "a\tb", &"x".repeat(MAX_MODEL_ID_CHARS + 1)] {
            let err = ModelCatalog::new(&offline, &[bad.to_owned()]).unwrap_err();
            assert_eq!(err.name, "CHAT_MODELS", "{bad:?}");
        }
        assert!(is_valid_model_id("meta-llama/llama-3.1-8b:free"));
    }
}
