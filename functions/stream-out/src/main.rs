//! Lambda entry point of `stream-out`: wiring only; the handler is in lib.rs.

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    chatrun_aws::lambda::init_tracing();
    let wiring = chatrun_aws::lambda::cold_start().await?;
    let services = &wiring.services;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
            Ok::<_, Error>(chatrun_stream_out::handle(services, event.payload).await)
        },
    ))
    .await
}
