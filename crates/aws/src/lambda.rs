//! What every Lambda `main` does at cold start, once: JSON logs for CloudWatch, settings from the
//! environment (failing with a clear message), secrets from Secrets Manager, clients built once.

use std::sync::Arc;

use chatrun_core::auth::TokenIssuer;
use chatrun_core::config::{AwsSettings, ConfigError, ModelSettings, Settings};
use chatrun_core::engine::Services;
use chatrun_core::hooks::NoHooks;
use chatrun_core::ports::{SystemClock, UuidIds};

use crate::{ApiGwConnections, DynamoChatStore, SqsTurnQueue};

/// A cold start that cannot work: the function fails to initialise, and the log says why.
#[derive(Debug, thiserror::Error)]
pub enum ColdStartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reading secret {arn}: {message}")]
    Secret { arn: String, message: String },
}

/// Structured JSON logs (one object a line), as CloudWatch Logs Insights reads them.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_current_span(false)
        .without_time()
        .init();
}

/// What the functions share, built once per execution environment.
pub struct Wiring {
    pub services: Services,
    pub sdk: aws_config::SdkConfig,
    pub aws: AwsSettings,
}

async fn secret(sdk: &aws_config::SdkConfig, arn: &str) -> Result<String, ColdStartError> {
    aws_sdk_secretsmanager::Client::new(sdk)
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| ColdStartError::Secret {
            arn: arn.into(),
            message: format!("{e:?}"),
        })?
        .secret_string
        .ok_or_else(|| ColdStartError::Secret {
            arn: arn.into(),
            message: "not a string secret".into(),
        })
}

/// Reads the settings and secrets and builds the adapters.
/// # Errors
/// A missing or malformed setting, or a secret that cannot be read.
pub async fn cold_start() -> Result<Wiring, ColdStartError> {
    let aws = AwsSettings::from_env()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let mut settings = Settings::from_env(aws.token_secret_arn.is_none())?;
    if let Some(arn) = &aws.token_secret_arn {
        settings.token_secret = secret(&sdk, arn).await?;
    }
    let endpoint = aws.management_endpoint.clone().ok_or(ConfigError {
        name: "CHAT_WS_MANAGEMENT_ENDPOINT",
        problem: "must name the WebSocket API's management endpoint".into(),
    })?;
    let store = DynamoChatStore::new(aws_sdk_dynamodb::Client::new(&sdk), aws.table_name.clone());
    let queue = SqsTurnQueue::producer(
        aws_sdk_sqs::Client::new(&sdk),
        aws.turn_queue_url.clone().unwrap_or_default(),
    );
    let services = Services {
        store: Arc::new(store),
        queue: Arc::new(queue),
        connections: Arc::new(ApiGwConnections::for_endpoint(&sdk, &endpoint)),
        hooks: Arc::new(NoHooks),
        clock: Arc::new(SystemClock),
        ids: Arc::new(UuidIds),
        tokens: TokenIssuer::new(&settings.token_secret),
        settings: Arc::new(settings),
    };
    Ok(Wiring { services, sdk, aws })
}

/// The model settings, with the API key from Secrets Manager when
/// `CHAT_MODEL_API_KEY_SECRET_ARN` names one (never from a plain environment variable there).
pub async fn model_settings(wiring: &Wiring) -> Result<ModelSettings, ColdStartError> {
    match &wiring.aws.model_api_key_secret_arn {
        Some(arn) => {
            let api_key = secret(&wiring.sdk, arn).await?;
            let base_url = std::env::var("OPENAI_BASE_URL")
                .ok()
                .filter(|v| !v.is_empty());
            let model = std::env::var("CHAT_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
            Ok(ModelSettings::OpenAi {
                api_key,
                base_url,
                model,
            })
        }
        None => Ok(ModelSettings::from_env()?),
    }
}
