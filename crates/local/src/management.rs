//! The `@connections` management API, as API Gateway serves it to the functions: POST a frame,
//! GET a connection's details, DELETE to close it. Unknown ids answer 410 with the
//! `GoneException` shape AWS SDK clients parse (the `x-amzn-ErrorType` header and `__type`).
//!
//! On AWS, IAM (`ManageConnections`) guards it. Here [`guard`] does: a caller on loopback (the
//! functions of this process, `--backend aws`'s SDK client) is let in; any other caller must send
//! `CHAT_MANAGEMENT_SECRET` in the `x-chatrun-management-secret` header, and without that
//! setting nobody off loopback is. So `--host 0.0.0.0` does not let the network post frames into
//! other people's sockets.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
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

/// The header a caller off loopback presents `CHAT_MANAGEMENT_SECRET` in.
pub const SECRET_HEADER: &str = "x-chatrun-management-secret";

/// Whether a caller may use the management API: from this host always (loopback, or the
/// address the gateway is bound to when that is a specific one: its own `--backend aws` client
/// posts from there); from elsewhere only with the configured secret (compared in constant time).
pub fn caller_allowed(
    peer: IpAddr,
    bound: IpAddr,
    presented: Option<&[u8]>,
    secret: Option<&str>,
) -> bool {
    let peer = peer.to_canonical();
    if peer.is_loopback() || (!bound.is_unspecified() && peer == bound.to_canonical()) {
        return true;
    }
    match (presented, secret) {
        (Some(presented), Some(secret)) if !secret.is_empty() => {
            let secret = secret.as_bytes();
            presented.len() == secret.len()
                && presented
                    .iter()
                    .zip(secret)
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }
        _ => false,
    }
}

/// Middleware on `/@connections`: refuses callers [`caller_allowed`] does not let in, with the
/// 403 `ForbiddenException` API Gateway gives a request without valid IAM credentials.
pub async fn guard(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes().to_vec());
    let secret = gateway.options.settings.management_secret.as_deref();
    if caller_allowed(
        peer.ip(),
        gateway.options.host,
        presented.as_deref(),
        secret,
    ) {
        return next.run(request).await;
    }
    tracing::warn!(peer = %peer, "refused a management API call from off loopback");
    aws_error(StatusCode::FORBIDDEN, "ForbiddenException", "Forbidden")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_or_the_secret_gets_in() {
        let lan: IpAddr = "192.168.1.20".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let mapped_loopback: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        for peer in ["127.0.0.1", "::1"] {
            assert!(caller_allowed(peer.parse().unwrap(), any, None, None));
        }
        assert!(caller_allowed(mapped_loopback, any, None, None));
        assert!(
            !caller_allowed(lan, any, None, None),
            "no secret configured"
        );
        assert!(!caller_allowed(lan, any, Some(b"s3cret"), None));
        assert!(!caller_allowed(lan, any, None, Some("s3cret")));
        assert!(!caller_allowed(lan, any, Some(b"s3cre"), Some("s3cret")));
        assert!(!caller_allowed(lan, any, Some(b"s3creT"), Some("s3cret")));
        assert!(!caller_allowed(lan, any, Some(b""), Some("")));
        assert!(caller_allowed(lan, any, Some(b"s3cret"), Some("s3cret")));
        // Bound to a specific address, a caller from that address is this host.
        assert!(caller_allowed(lan, lan, None, None));
        let other: IpAddr = "192.168.1.21".parse().unwrap();
        assert!(!caller_allowed(other, lan, None, None));
    }
}
