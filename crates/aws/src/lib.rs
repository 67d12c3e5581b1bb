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

use aws_sdk_dynamodb::config::ConfigBag;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

/// Where every chatrun `SdkConfig` starts (the Lambda functions, the `chatrun` binary's AWS
/// backend, tests): the latest behaviour version and the SDK's HTTPS client on rustls with
/// `ring`. The SDK is built without its `default-https-client` feature, which would link
/// aws-lc-rs as a second crypto library next to reqwest's `ring`, so a loader without this
/// client has none and every request fails.
///
/// The client trusts Mozilla's root certificates, compiled in, unless `SSL_CERT_FILE` or
/// `SSL_CERT_DIR` name others (`trust_store`), and builds its TLS connector at the first request
/// (`ConnectOnFirstRequest`): a cold start reads no certificate file and parses the roots once.
pub fn sdk_config_loader() -> aws_config::ConfigLoader {
    use aws_smithy_http_client::tls::{Provider, TlsContext, rustls_provider::CryptoMode};
    let tls = TlsContext::builder()
        .with_trust_store(trust_store())
        .build()
        .expect("a TLS context with a trust store and no other settings always builds");
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .tls_context(tls)
        .build_https();
    let https = SharedHttpClient::new(ConnectOnFirstRequest(https));
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https)
}

/// The SDK's HTTPS client, minus one step: aws-smithy-http-client builds a TLS connector (a
/// rustls configuration, its roots parsed again) in `validate_base_client_config`, i.e. for every
/// SDK client built, and drops it; it exists so that the system's roots are read before the
/// first request rather than during it. The connector requests use is built at the first request
/// and cached by the inner client: one for all the SDK clients of an `SdkConfig` (they share this
/// client and its timeouts). Those throwaway builds were most of a function's cold init
/// once the roots stopped being files (about 3.5 ms each at `opt-level = "z"`, one per client: up
/// to four before the first `next`; BENCHMARKS.md, "Lambda bootstraps and cold init"). Without
/// them, a function parses its roots once, at its first request (at init when that is the
/// Secrets Manager read of the token key).
#[derive(Debug)]
struct ConnectOnFirstRequest(SharedHttpClient);

impl HttpClient for ConnectOnFirstRequest {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    // `validate_base_client_config` is left at the trait's default (nothing): the step above.

    fn validate_final_config(
        &self,
        components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.validate_final_config(components, cfg)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

/// The roots the SDK's HTTPS client trusts. By default those of Mozilla's root program for TLS
/// servers, compiled in (`webpki-root-certs`, from the rustls project; Mozilla's program is also
/// where the bundles of Lambda's Amazon Linux images and Debian's `ca-certificates` come from),
/// so no certificate file is read at a cold start; they change when `webpki-root-certs` is
/// updated in `Cargo.lock`. The system's store (rustls-native-certs, the SDK's default) read
/// /etc/ssl/certs at every cold start, 4 to 16 ms of a function's init on this machine
/// (BENCHMARKS.md, "Lambda bootstraps and cold init").
///
/// When `SSL_CERT_FILE` or `SSL_CERT_DIR` is set, it trusts exactly what they name, and nothing
/// compiled in, as the SDK's default client does: how to trust a private CA (or a proxy's), and
/// how `tests/https_client.rs` trusts its throwaway one. chatrun-models' model client makes the
/// same choice (`chatrun_models::openai`).
fn trust_store() -> aws_smithy_http_client::tls::TrustStore {
    use aws_smithy_http_client::tls::TrustStore;
    if chatrun_core::config::certificates_named_in_env() {
        TrustStore::default()
    } else {
        TrustStore::empty().with_pem_certificate(mozilla_roots_pem())
    }
}

/// Mozilla's roots as one PEM bundle, the form the SDK's `TrustStore` takes.
fn mozilla_roots_pem() -> Vec<u8> {
    use base64::Engine;
    let mut pem = String::new();
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        pem.push_str(&base64::engine::general_purpose::STANDARD.encode(cert.as_ref()));
        pem.push_str("\n-----END CERTIFICATE-----\n");
    }
    pem.into_bytes()
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
