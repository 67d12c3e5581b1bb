//! Lambda entry point of `api` (API Gateway HTTP API, payload v2): wiring only; the router is
//! in lib.rs. It uses the table and the model list (no API key): no queue, no `@connections`.

use std::sync::Arc;

use chatrun_api::ApiDeps;
use chatrun_aws::DynamoChatStore;
use chatrun_aws::lambda::{self as cold_start, NotWired};
use chatrun_core::config::AwsSettings;
use lambda_http::{Error, Request, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    cold_start::init_tracing();
    let aws = AwsSettings::from_env()?;
    let sdk = cold_start::sdk_config().await;
    let settings = cold_start::settings(&sdk, &aws).await?;
    let models = cold_start::model_catalog(&aws)?;
    let store = DynamoChatStore::new(aws_sdk_dynamodb::Client::new(&sdk), aws.table_name);
    let unused = Arc::new(NotWired { function: "api" });
    let deps = ApiDeps {
        services: cold_start::services(settings, models, Arc::new(store), unused.clone(), unused),
    };
    let deps = &deps;
    lambda_http::run(service_fn(|request: Request| async move {
        Ok::<_, Error>(chatrun_api::handle(deps, request).await)
    }))
    .await
}
