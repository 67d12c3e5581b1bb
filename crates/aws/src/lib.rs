//! # chatrun-aws
//!
//! The production adapters, on the real `aws-sdk-*` clients, and the cold-start steps the Lambda
//! `main`s share. Which adapters a function uses is chosen in its own `main`.
//!
//! # Layout
//! - [`dynamo`]: `DynamoChatStore`, the single table of DESIGN §3.
//! - [`sqs`]: `SqsTurnQueue`, the FIFO turn queue and its dead-letter queue.
//! - [`apigw`]: `ApiGwConnections`, API Gateway's `@connections` management API.
//! - `emulators` (feature `emulators`): DynamoDB Local and moto, started for tests.
//! - [`lambda`]: cold-start steps every Lambda `main` shares (JSON logs, SDK configuration,
//!   required settings, Secrets Manager), and `NotWired` for the ports a function never uses.

pub mod apigw;
pub mod dynamo;
#[cfg(feature = "emulators")]
pub mod emulators;
pub mod lambda;
pub mod sqs;

pub use apigw::ApiGwConnections;
pub use dynamo::DynamoChatStore;
pub use sqs::SqsTurnQueue;

/// Where every chatrun `SdkConfig` starts (the Lambda functions, the `chatrun` binary's AWS
/// backend, tests): the latest behaviour version and the SDK's HTTPS client on rustls with
/// `ring`, trusting the system's root certificates (`rustls-native-certs`, as the SDK's default
/// client does). The SDK is built without its `default-https-client` feature, which would link
/// aws-lc-rs as a second crypto library next to reqwest's `ring`, so a loader without this
/// client has none and every request fails.
pub fn sdk_config_loader() -> aws_config::ConfigLoader {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https)
}

/// Whether an SDK error is worth retrying (throttling, timeouts, 5xx).
fn is_transient<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(
    error: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> bool {
    use aws_sdk_dynamodb::error::SdkError;
    match error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(e) => matches!(
            e.err().code(),
            Some(
                "ThrottlingException"
                    | "ProvisionedThroughputExceededException"
                    | "RequestLimitExceeded"
                    | "InternalServerError"
                    | "ServiceUnavailable"
                    | "TransactionInProgressException"
            )
        ),
        _ => false,
    }
}
