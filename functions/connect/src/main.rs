//! Lambda entry point of `connect` (`$connect`, `$disconnect`): wiring only; the handler is in
//! lib.rs. It uses the table alone, so it links neither SQS nor `@connections`.

use std::sync::Arc;

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use chatrun_aws::DynamoChatStore;
use chatrun_aws::lambda::{self as cold_start, NotWired};
use chatrun_core::config::AwsSettings;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    cold_start::init_tracing();
    let aws = AwsSettings::from_env()?;
    let sdk = cold_start::sdk_config().await;
    let settings = cold_start::settings(&sdk, &aws).await?;
    let models = cold_start::model_catalog(&aws)?;
    let store = DynamoChatStore::new(aws_sdk_dynamodb::Client::new(&sdk), aws.table_name);
    let unused = Arc::new(NotWired {
        function: "connect",
    });
    let services = cold_start::services(settings, models, Arc::new(store), unused.clone(), unused);
    let services = &services;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
            Ok::<_, Error>(chatrun_connect::handle(services, event.payload).await)
        },
    ))
    .await
}
