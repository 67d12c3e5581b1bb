//! Lambda entry point of `send-message` (routes `send-message` and `stop`): wiring only; the
//! handler is in lib.rs. It stores the user's message, queues the turn and acknowledges on the
//! connection: table, turn queue and `@connections`, each required at cold start.

use std::sync::Arc;

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use chatrun_aws::lambda::{self as cold_start, required};
use chatrun_aws::{ApiGwConnections, DynamoChatStore, SqsTurnQueue};
use chatrun_core::config::AwsSettings;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    cold_start::init_tracing();
    let aws = AwsSettings::from_env()?;
    let queue_url = required(&aws.turn_queue_url, "CHAT_TURN_QUEUE_URL")?;
    let endpoint = required(&aws.management_endpoint, "CHAT_WS_MANAGEMENT_ENDPOINT")?;
    let sdk = cold_start::sdk_config().await;
    let settings = cold_start::settings(&sdk, &aws).await?;
    let store = DynamoChatStore::new(aws_sdk_dynamodb::Client::new(&sdk), aws.table_name);
    let queue = SqsTurnQueue::producer(aws_sdk_sqs::Client::new(&sdk), queue_url);
    let connections = ApiGwConnections::for_endpoint(&sdk, &endpoint);
    let services = cold_start::services(
        settings,
        Arc::new(store),
        Arc::new(queue),
        Arc::new(connections),
    );
    let services = &services;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
            Ok::<_, Error>(chatrun_send_message::handle(services, event.payload).await)
        },
    ))
    .await
}
