//! The Lambda wiring of `stream-out` (feature `lambda`): the adapters it needs, built once per
//! execution environment. It reads the table and posts frames; it never queues a turn, so it
//! does not link SQS, and a missing `@connections` endpoint fails the cold start.

use std::sync::Arc;

use chatrun_aws::lambda::{self as cold_start, NotWired, required};
use chatrun_aws::{ApiGwConnections, DynamoChatStore};
use chatrun_core::config::AwsSettings;
use chatrun_core::engine::Services;
use lambda_runtime::Error;

/// Reads every setting and builds stream-out's services.
/// # Errors
/// A missing or malformed setting, or a secret that cannot be read.
pub async fn services_from_env() -> Result<Services, Error> {
    let aws = AwsSettings::from_env()?;
    let endpoint = required(&aws.management_endpoint, "CHAT_WS_MANAGEMENT_ENDPOINT")?;
    let sdk = cold_start::sdk_config().await;
    let settings = cold_start::settings(&sdk, &aws).await?;
    let models = cold_start::model_catalog(&aws)?;
    let store = DynamoChatStore::new(aws_sdk_dynamodb::Client::new(&sdk), aws.table_name);
    let connections = ApiGwConnections::for_endpoint(&sdk, &endpoint);
    let queue = Arc::new(NotWired {
        function: "stream-out",
    });
    Ok(cold_start::services(
        settings,
        models,
        Arc::new(store),
        queue,
        Arc::new(connections),
    ))
}
