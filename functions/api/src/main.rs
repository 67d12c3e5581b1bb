//! Lambda entry point of `api` (API Gateway HTTP API, payload v2): wiring only; the router is
//! in lib.rs.

use chatrun_api::ApiDeps;
use lambda_http::{Error, Request, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    chatrun_aws::lambda::init_tracing();
    let wiring = chatrun_aws::lambda::cold_start().await?;
    let model =
        chatrun_models::model_from_settings(&chatrun_aws::lambda::model_settings(&wiring).await?);
    let deps = ApiDeps {
        services: wiring.services.clone(),
        model,
    };
    let deps = &deps;
    lambda_http::run(service_fn(|request: Request| async move {
        Ok::<_, Error>(chatrun_api::handle(deps, request).await)
    }))
    .await
}
