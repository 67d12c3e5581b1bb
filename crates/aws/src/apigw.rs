//! `ApiGwConnections`: posting frames through API Gateway's `@connections` management API.
//!
//! A 410 (`GoneException`) means the client is gone for good: the caller drops the subscription
//! and never retries. Throttling is retried a few times with backoff.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_apigatewaymanagement::Client;
use aws_sdk_apigatewaymanagement::config::http::HttpResponse;
use aws_sdk_apigatewaymanagement::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_apigatewaymanagement::primitives::Blob;
use chatrun_core::error::PostError;
use chatrun_core::ports::Connections;

const ATTEMPTS: u32 = 4;

/// `Connections` on API Gateway's management API.
#[derive(Clone, Debug)]
pub struct ApiGwConnections {
    client: Client,
}

impl ApiGwConnections {
    /// A client for one API stage's management endpoint:
    /// `https://{api}.execute-api.{region}.amazonaws.com/{stage}` (or the local gateway's URL).
    pub fn for_endpoint(config: &aws_config::SdkConfig, endpoint: &str) -> Self {
        let conf = aws_sdk_apigatewaymanagement::config::Builder::from(config)
            .endpoint_url(endpoint.trim_end_matches('/'))
            .build();
        ApiGwConnections {
            client: Client::from_conf(conf),
        }
    }

    /// The management endpoint of the API that sent a WebSocket event.
    pub fn endpoint_from_event(domain_name: &str, stage: &str) -> String {
        format!("https://{domain_name}/{stage}")
    }
}

fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    error: &SdkError<E, HttpResponse>,
) -> PostError {
    match error {
        SdkError::ServiceError(e) => match e.err().code() {
            Some("GoneException") => PostError::Gone,
            Some("PayloadTooLargeException") => PostError::TooLarge,
            Some("LimitExceededException" | "TooManyRequestsException" | "ThrottlingException") => {
                PostError::Transient(error.to_string())
            }
            _ => {
                let status = e.raw().status().as_u16();
                if status == 410 {
                    PostError::Gone
                } else if status == 429 || status >= 500 {
                    PostError::Transient(format!("{error:?}"))
                } else {
                    PostError::Backend(format!("{error:?}"))
                }
            }
        },
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            PostError::Transient(format!("{error:?}"))
        }
        other => PostError::Backend(format!("{other:?}")),
    }
}

#[async_trait]
impl Connections for ApiGwConnections {
    async fn post(&self, connection_id: &str, frame: &str) -> Result<(), PostError> {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            let result = self
                .client
                .post_to_connection()
                .connection_id(connection_id)
                .data(Blob::new(frame.as_bytes()))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e) => match classify(&e) {
                    PostError::Transient(_) if attempt < ATTEMPTS => {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                        attempt += 1;
                    }
                    other => return Err(other),
                },
            }
        }
    }

    async fn close(&self, connection_id: &str) -> Result<(), PostError> {
        self.client
            .delete_connection()
            .connection_id(connection_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(&e))
    }
}
