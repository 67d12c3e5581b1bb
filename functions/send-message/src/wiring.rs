//! The Lambda wiring of `send-message` (feature `lambda`): table, turn queue and
//! `@connections`, each required at cold start.

use std::sync::Arc;

use chatrun_aws::lambda::{self as cold_start, required};
use chatrun_aws::{ApiGwConnections, DynamoChatStore, SqsTurnQueue};
use chatrun_core::config::AwsSettings;
use chatrun_core::engine::Services;
use lambda_runtime::Error;

/// Reads every setting and builds the services send-message uses.
/// # Errors
/// A missing or malformed setting, or a secret that cannot be read.
pub async fn services_from_env() -> Result<Services, Error> {
    let aws = AwsSettings::from_env()?;
    let queue_url = required(&aws.turn_queue_url, "CHAT_TURN_QUEUE_URL")?;
    let endpoint = required(&aws.management_endpoint, "CHAT_WS_MANAGEMENT_ENDPOINT")?;
    let sdk = cold_start::sdk_config().await;
    let settings = cold_start::settings(&sdk, &aws).await?;
    let models = cold_start::model_catalog(&aws)?;
    let store = DynamoChatStore::new(aws_sdk_dynamodb::Client::new(&sdk), aws.table_name);
    let queue = SqsTurnQueue::producer(aws_sdk_sqs::Client::new(&sdk), queue_url);
    let connections = ApiGwConnections::for_endpoint(&sdk, &endpoint);
    Ok(cold_start::services(
        settings,
        models,
        Arc::new(store),
        Arc::new(queue),
        Arc::new(connections),
    ))
}
