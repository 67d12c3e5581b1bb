//! Lambda entry point of `run-turn` (fed by the turn queue and its dead-letter queue): wiring
//! in `wiring.rs`, the handler in lib.rs. Partial batch failures go back to SQS.

use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    chatrun_aws::lambda::init_tracing();
    let deps = &chatrun_run_turn::wiring::deps_from_env().await?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(chatrun_run_turn::handle(deps, event.payload).await)
    }))
    .await
}
