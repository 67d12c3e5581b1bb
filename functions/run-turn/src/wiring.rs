//! The Lambda wiring of `run-turn` (feature `lambda`): the adapters it needs, built once per
//! execution environment. It holds the jobs it works on with `ChangeMessageVisibility`, so both
//! queue URLs are required, and a missing one fails the cold start.

use std::sync::Arc;

use chatrun_aws::lambda::{self as cold_start, required};
use chatrun_aws::{ApiGwConnections, DynamoChatStore, SqsTurnQueue};
use chatrun_core::config::AwsSettings;
use lambda_runtime::Error;

use crate::RunTurnDeps;

/// Reads every setting and builds run-turn's dependencies.
/// # Errors
/// A missing or malformed setting, or a secret that cannot be read.
pub async fn deps_from_env() -> Result<RunTurnDeps, Error> {
    let aws = AwsSettings::from_env()?;
    let queue_url = required(&aws.turn_queue_url, "CHAT_TURN_QUEUE_URL")?;
    let dead_letter_url = required(&aws.dead_letter_queue_url, "CHAT_DEAD_LETTER_QUEUE_URL")?;
    let dead_letter_arn = required(&aws.dead_letter_queue_arn, "CHAT_DEAD_LETTER_QUEUE_ARN")?;
    let endpoint = required(&aws.management_endpoint, "CHAT_WS_MANAGEMENT_ENDPOINT")?;
    let sdk = cold_start::sdk_config().await;
    let settings = cold_start::settings(&sdk, &aws).await?;
    let model = cold_start::model_settings(&sdk, &aws).await?;
    let catalog = cold_start::model_catalog(&aws)?;
    let store = DynamoChatStore::new(aws_sdk_dynamodb::Client::new(&sdk), aws.table_name);
    let queue = Arc::new(
        SqsTurnQueue::producer(aws_sdk_sqs::Client::new(&sdk), queue_url)
            .with_dead_letter_url(dead_letter_url),
    );
    let connections = ApiGwConnections::for_endpoint(&sdk, &endpoint);
    Ok(RunTurnDeps {
        services: cold_start::services(
            settings,
            catalog.clone(),
            Arc::new(store),
            queue.clone(),
            Arc::new(connections),
        ),
        model: chatrun_models::model_from_settings(&model, &catalog),
        visibility: queue,
        dead_letter_source_arn: Some(dead_letter_arn),
    })
}
