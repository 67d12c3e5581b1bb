//! Lambda entry point of `api` (API Gateway HTTP API, payload v2): wiring in `wiring.rs`, the
//! router in lib.rs.

use lambda_http::{Error, Request, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    chatrun_aws::lambda::init_tracing();
    let deps = &chatrun_api::wiring::deps_from_env().await?;
    lambda_http::run(service_fn(|request: Request| async move {
        Ok::<_, Error>(chatrun_api::handle(deps, request).await)
    }))
    .await
}
