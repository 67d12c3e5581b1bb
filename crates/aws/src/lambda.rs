//! What a Lambda `main` needs from AWS at cold start, whichever adapters it picks: JSON logs for
//! CloudWatch, the SDK configuration, settings that must be present, and secrets from Secrets
//! Manager. Choosing the adapters is each function's own `main` (`functions/*/src/main.rs`), so
//! a function builds, and links, only the SDK clients it calls.

use std::sync::Arc;

use async_trait::async_trait;
use aws_config::environment::{
    EnvironmentVariableCredentialsProvider, EnvironmentVariableRegionProvider,
};
use chatrun_core::auth::TokenIssuer;
use chatrun_core::config::{
    AwsSettings, ConfigError, ModelCatalog, ModelSettings, Settings, check_token_secret,
};
use chatrun_core::domain::TurnJob;
use chatrun_core::engine::Services;
use chatrun_core::error::{PostError, QueueError};
use chatrun_core::hooks::NoHooks;
use chatrun_core::ports::{ChatStore, Connections, SystemClock, TurnQueue, UsageCounters, UuidIds};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// A cold start that cannot work: the function fails to initialise, and the log says why.
#[derive(Debug, thiserror::Error)]
pub enum ColdStartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reading secret {arn}: {message}")]
    Secret { arn: String, message: String },
}

/// Structured JSON logs (one object a line), as CloudWatch Logs Insights reads them, filtered by
/// `RUST_LOG` (`info`, or `info,chatrun_core=debug`: levels per target, default `info`). The
/// filter is `Targets`, not `EnvFilter`, which would link a regex engine into every function.
pub fn init_tracing() {
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(false)
                .without_time(),
        )
        .with(filter)
        .init();
}

/// The SDK configuration of the execution environment: region and credentials from the
/// variables Lambda sets (`AWS_REGION`, `AWS_ACCESS_KEY_ID`...), so neither the instance
/// metadata client nor the STS-backed credential providers of the default chains are built or
/// linked; `AWS_ENDPOINT_URL*` still point the clients at emulators.
pub async fn sdk_config() -> aws_config::SdkConfig {
    crate::sdk_config_loader()
        .region(EnvironmentVariableRegionProvider::new())
        .credentials_provider(EnvironmentVariableCredentialsProvider::new())
        .load()
        .await
}

/// A setting this function cannot run without.
/// # Errors
/// `name` is unset or empty.
pub fn required(value: &Option<String>, name: &'static str) -> Result<String, ConfigError> {
    value.clone().ok_or(ConfigError {
        name,
        problem: "must be set for this function".into(),
    })
}

/// The value of a string secret.
/// # Errors
/// The secret cannot be read, or holds binary data.
pub async fn read_secret(sdk: &aws_config::SdkConfig, arn: &str) -> Result<String, ColdStartError> {
    let failed = |message: String| ColdStartError::Secret {
        arn: arn.into(),
        message,
    };
    aws_sdk_secretsmanager::Client::new(sdk)
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| failed(format!("{e:?}")))?
        .secret_string
        .ok_or_else(|| failed("not a string secret".into()))
}

/// The engine's settings, with the token key from Secrets Manager when `CHAT_TOKEN_SECRET_ARN`
/// names it (it never sits in the function's environment then).
/// # Errors
/// A malformed setting, a secret that cannot be read, or a token key that is too short.
pub async fn settings(
    sdk: &aws_config::SdkConfig,
    aws: &AwsSettings,
) -> Result<Settings, ColdStartError> {
    let mut settings = Settings::from_env(aws.token_secret_arn.is_none())?;
    if let Some(arn) = &aws.token_secret_arn {
        settings.token_secret = read_secret(sdk, arn).await?;
        check_token_secret(&settings.token_secret)?;
    }
    Ok(settings)
}

/// The model settings, with the API key from Secrets Manager when
/// `CHAT_MODEL_API_KEY_SECRET_ARN` names one (never from a plain environment variable there).
/// # Errors
/// A malformed model setting, or a secret that cannot be read.
pub async fn model_settings(
    sdk: &aws_config::SdkConfig,
    aws: &AwsSettings,
) -> Result<ModelSettings, ColdStartError> {
    let mut settings = keyless_model_settings(aws)?;
    if let (Some(arn), ModelSettings::OpenAi { api_key, .. }) =
        (&aws.model_api_key_secret_arn, &mut settings)
    {
        *api_key = read_secret(sdk, arn).await?;
    }
    Ok(settings)
}

/// The model settings without reading the API key secret (its `api_key` is empty when a secret
/// holds it): enough to know the provider and its models.
fn keyless_model_settings(aws: &AwsSettings) -> Result<ModelSettings, ConfigError> {
    if aws.model_api_key_secret_arn.is_none() {
        return ModelSettings::from_env();
    }
    let base_url = std::env::var("OPENAI_BASE_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let model = std::env::var("CHAT_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
    Ok(ModelSettings::OpenAi {
        api_key: String::new(),
        base_url,
        model,
    })
}

/// The models users may pick (`CHAT_MODEL`, `CHAT_MODELS`), read without the API key, so that
/// `send-message` and `api` know them with no access to the key's secret.
/// # Errors
/// A malformed model setting.
pub fn model_catalog(aws: &AwsSettings) -> Result<ModelCatalog, ConfigError> {
    ModelCatalog::from_env(&keyless_model_settings(aws)?)
}

/// The engine's services on the given store (which also keeps the limits' counters), queue
/// and connections, with the system clock, UUID ids and no lifecycle hooks.
pub fn services<S: ChatStore + UsageCounters + 'static>(
    settings: Settings,
    models: ModelCatalog,
    store: Arc<S>,
    queue: Arc<dyn TurnQueue>,
    connections: Arc<dyn Connections>,
) -> Services {
    Services {
        store: store.clone(),
        limits: store,
        queue,
        // DynamoDB and SQS take no write together: the job is queued after the claim.
        outbox: None,
        connections,
        hooks: Arc::new(NoHooks),
        clock: Arc::new(SystemClock),
        ids: Arc::new(UuidIds),
        tokens: TokenIssuer::new(&settings.token_secret),
        settings: Arc::new(settings),
        models: Arc::new(models),
    }
}

/// The port a function's routes never use (`connect` neither queues turns nor posts frames):
/// wiring it instead of a real client keeps that client out of the function's binary. A call
/// reaching it is a bug in the wiring and fails loudly.
#[derive(Debug, Clone, Copy)]
pub struct NotWired {
    /// The function, for the error message.
    pub function: &'static str,
}

#[async_trait]
impl TurnQueue for NotWired {
    async fn enqueue(&self, _job: &TurnJob) -> Result<(), QueueError> {
        tracing::error!(
            function = self.function,
            "enqueue on a function without the turn queue"
        );
        Err(QueueError::Backend(format!(
            "{} is not wired to the turn queue",
            self.function
        )))
    }
}

#[async_trait]
impl Connections for NotWired {
    async fn post(&self, _connection_id: &str, _frame: &str) -> Result<(), PostError> {
        tracing::error!(
            function = self.function,
            "post on a function without @connections"
        );
        Err(PostError::Backend(format!(
            "{} is not wired to @connections",
            self.function
        )))
    }

    async fn close(&self, connection_id: &str) -> Result<(), PostError> {
        self.post(connection_id, "").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn not_wired_ports_refuse_every_call() {
        let port = NotWired {
            function: "connect",
        };
        let job = TurnJob {
            chat_id: chatrun_core::domain::ChatId::parse("chat-1").expect("a valid id"),
            run_id: "run-1".into(),
            user_message_id: "u1".into(),
            assistant_message_id: "a1".into(),
            trigger: chatrun_core::domain::Trigger::SubmitMessage,
        };
        let err = TurnQueue::enqueue(&port, &job).await.unwrap_err();
        assert!(err.to_string().contains("connect is not wired"), "{err}");
        assert!(matches!(
            Connections::post(&port, "id", "{}").await,
            Err(PostError::Backend(_))
        ));
        assert!(matches!(
            Connections::close(&port, "id").await,
            Err(PostError::Backend(_))
        ));
    }

    #[test]
    fn a_missing_required_setting_names_itself() {
        let err = required(&None, "CHAT_TURN_QUEUE_URL").unwrap_err();
        assert_eq!(err.name, "CHAT_TURN_QUEUE_URL");
        assert_eq!(
            required(&Some("u".into()), "CHAT_TURN_QUEUE_URL").unwrap(),
            "u"
        );
    }
}
