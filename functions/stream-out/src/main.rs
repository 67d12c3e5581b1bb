//! Lambda entry point of `stream-out` (`resume`, `unsubscribe`, `ping`, `$default`): wiring in
//! `wiring.rs`, the handler in lib.rs.

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    chatrun_aws::lambda::init_tracing();
    let services = &chatrun_stream_out::wiring::services_from_env().await?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
            Ok::<_, Error>(chatrun_stream_out::handle(services, event.payload).await)
        },
    ))
    .await
}
