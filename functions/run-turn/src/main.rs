//! Lambda entry point of `run-turn` (fed by the turn queue and its dead-letter queue): wiring
//! only; the handler is in lib.rs. Partial batch failures go back to SQS for redelivery.

use aws_lambda_events::sqs::SqsEvent;
use chatrun_run_turn::RunTurnDeps;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    chatrun_aws::lambda::init_tracing();
    let wiring = chatrun_aws::lambda::cold_start().await?;
    let model =
        chatrun_models::model_from_settings(&chatrun_aws::lambda::model_settings(&wiring).await?);
    let deps = RunTurnDeps {
        services: wiring.services.clone(),
        model,
        dead_letter_source_arn: wiring.aws.dead_letter_queue_arn.clone(),
    };
    let deps = &deps;
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(chatrun_run_turn::handle(deps, event.payload).await)
    }))
    .await
}
