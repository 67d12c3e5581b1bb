//! Lambda entry point of `stream-out` (`resume`, `unsubscribe`, `ping`, `$default`): wiring
//! only; the handler is in lib.rs. It reads the table and posts frames; it never queues a turn,
//! so it does not link SQS.

use std::sync::Arc;

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use chatrun_aws::lambda::{self as cold_start, NotWired, required};
use chatrun_aws::{ApiGwConnections, DynamoChatStore};
use chatrun_core::config::AwsSettings;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    cold_start::init_tracing();
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
    let services = cold_start::services(
        settings,
        models,
        Arc::new(store),
        queue,
        Arc::new(connections),
    );
    let services = &services;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
            Ok::<_, Error>(chatrun_stream_out::handle(services, event.payload).await)
        },
    ))
    .await
}
