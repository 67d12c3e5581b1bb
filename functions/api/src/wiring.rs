//! The Lambda wiring of `api` (feature `lambda`): the adapters it needs, built once per
//! execution environment. It uses the table and the model list (no API key): no queue, no
//! `@connections`.

use std::sync::Arc;

use chatrun_aws::DynamoChatStore;
use chatrun_aws::lambda::{self as cold_start, NotWired};
use chatrun_core::config::AwsSettings;
use lambda_http::Error;

use crate::ApiDeps;

/// Reads every setting and builds the api's dependencies.
/// # Errors
/// A missing or malformed setting, or a secret that cannot be read.
pub async fn deps_from_env() -> Result<ApiDeps, Error> {
    let aws = AwsSettings::from_env()?;
    let sdk = cold_start::sdk_config().await;
    let settings = cold_start::settings(&sdk, &aws).await?;
    let models = cold_start::model_catalog(&aws)?;
    let store = DynamoChatStore::new(aws_sdk_dynamodb::Client::new(&sdk), aws.table_name);
    let unused = Arc::new(NotWired { function: "api" });
    Ok(ApiDeps {
        services: cold_start::services(settings, models, Arc::new(store), unused.clone(), unused),
    })
}
