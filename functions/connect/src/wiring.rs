//! The Lambda wiring of `connect` (feature `lambda`): the adapters it needs, built once per
//! execution environment. It uses the table alone, so it links neither SQS nor `@connections`.

use std::sync::Arc;

use chatrun_aws::DynamoChatStore;
use chatrun_aws::lambda::{self as cold_start, NotWired};
use chatrun_core::config::AwsSettings;
use chatrun_core::engine::Services;
use lambda_runtime::Error;

/// Reads every setting and builds connect's services.
/// # Errors
/// A missing or malformed setting, or a secret that cannot be read.
pub async fn services_from_env() -> Result<Services, Error> {
    let aws = AwsSettings::from_env()?;
    let sdk = cold_start::sdk_config().await;
    let settings = cold_start::settings(&sdk, &aws).await?;
    let models = cold_start::model_catalog(&aws)?;
    let store = DynamoChatStore::new(aws_sdk_dynamodb::Client::new(&sdk), aws.table_name);
    let unused = Arc::new(NotWired {
        function: "connect",
    });
    Ok(cold_start::services(
        settings,
        models,
        Arc::new(store),
        unused.clone(),
        unused,
    ))
}
