//! The `@connections` management API, as API Gateway serves it to the functions: POST a frame,
//! GET a connection's details, DELETE to close it. Unknown ids answer 410 with the
//! `GoneException` shape AWS SDK clients parse (the `x-amzn-ErrorType` header and `__type`).
//!
//! Locally it is unauthenticated and meant for loopback only; on AWS, IAM (`ManageConnections`)
//! guards it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatrun_core::config::MAX_WEBSOCKET_MESSAGE_BYTES;
use chatrun_core::error::PostError;
use chatrun_core::ports::Connections;
use chrono::{SecondsFormat, TimeZone, Utc};

use crate::gateway::Gateway;

fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::HeaderName::from_static("x-amzn-errortype"), kind),
        ],
        serde_json::json!({ "__type": kind, "message": message }).to_string(),
    )
        .into_response()
}

fn gone() -> Response {
    aws_error(StatusCode::GONE, "GoneException", "the connection is gone")
}

fn iso8601(millis: i64) -> String {
    Utc.timestamp_millis_opt(millis)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `POST /@connections/{id}`: the body is sent to the client as one text frame.
pub async fn post(
    State(gateway): State<Arc<Gateway>>,
    Path(connection_id): Path<String>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_WEBSOCKET_MESSAGE_BYTES {
        return aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeException",
            "payload too large",
        );
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "BadRequestException",
            "payload must be UTF-8 text",
        );
    };
    match gateway.sockets.post(&connection_id, text).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(PostError::Gone) => gone(),
        Err(PostError::TooLarge) => aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeException",
            "payload too large",
        ),
        Err(e) => aws_error(
            StatusCode::TOO_MANY_REQUESTS,
            "LimitExceededException",
            &e.to_string(),
        ),
    }
}

/// `GET /@connections/{id}`: when it connected, from where, and when it was last active.
pub async fn get(
    State(gateway): State<Arc<Gateway>>,
    Path(connection_id): Path<String>,
) -> Response {
    match gateway.sockets.info(&connection_id) {
        Some(info) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({
                "ConnectedAt": iso8601(info.connected_at),
                "Identity": { "SourceIp": info.source_ip, "UserAgent": info.user_agent },
                "LastActiveAt": iso8601(info.last_active_at),
            })
            .to_string(),
        )
            .into_response(),
        None => gone(),
    }
}

/// `DELETE /@connections/{id}`: closes the connection (its `$disconnect` follows).
pub async fn delete(
    State(gateway): State<Arc<Gateway>>,
    Path(connection_id): Path<String>,
) -> Response {
    match gateway.sockets.close(&connection_id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => gone(),
    }
}
