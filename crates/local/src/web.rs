//! The web app and the HTTP API proxy.
//!
//! `/api/*` requests become `lambda_http` requests for the `api` function's handler, exactly
//! as API Gateway's HTTP API would deliver them. Everything else is the built web app, with
//! `index.html` for client-side routes such as `/c/{chatId}` (CloudFront does the same with an
//! error response), or a short page saying how to build it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use lambda_http::RequestExt;
use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext;
use lambda_http::request::RequestContext;
use tower_http::services::{ServeDir, ServeFile};

use crate::gateway::Gateway;

/// Request bodies of the HTTP API are small; API Gateway's own limit is 10 MB.
const MAX_API_BODY: usize = 1024 * 1024;

pub async fn api_proxy(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_API_BODY).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":{"code":"too_large","message":"request body too large"}}"#,
        )
            .into_response();
    };
    let body = if bytes.is_empty() {
        lambda_http::Body::Empty
    } else {
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) => lambda_http::Body::Text(text),
            Err(e) => lambda_http::Body::Binary(e.into_bytes()),
        }
    };
    let request =
        lambda_http::Request::from_parts(parts, body).with_request_context(http_api_context(peer));
    let response = chatrun_api::handle(&gateway.api, request).await;
    let (parts, body) = response.into_parts();
    let body = match body {
        lambda_http::Body::Text(text) => Body::from(text),
        lambda_http::Body::Binary(bytes) => Body::from(bytes),
        _ => Body::empty(),
    };
    Response::from_parts(parts, body)
}

/// The request context API Gateway's HTTP API gives the function, as far as the api function
/// reads it: the caller's address (what the guest-sessions-per-address limit counts).
fn http_api_context(peer: SocketAddr) -> RequestContext {
    let mut context = ApiGatewayV2httpRequestContext::default();
    context.http.source_ip = Some(peer.ip().to_string());
    RequestContext::ApiGatewayV2(context)
}

const NOT_BUILT: &str = r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>chatrun</title></head>
<body style="font-family: system-ui; max-width: 40rem; margin: 4rem auto">
<h1>chatrun is running</h1>
<p>The web app is not built. Run <code>make run</code> (it builds <code>web/</code> first), or
<code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code> and restart.</p>
<p>The WebSocket API is at <code>/ws?token=…</code> and the HTTP API at <code>/api</code>.</p>
</body></html>"#;

/// Adds the web app from `web_dir` as the router's fallback, or the notice page when it has not
/// been built.
pub fn attach(router: Router<Arc<Gateway>>, web_dir: &Path) -> Router<Arc<Gateway>> {
    let index = web_dir.join("index.html");
    if index.exists() {
        router.fallback_service(ServeDir::new(web_dir).fallback(ServeFile::new(index)))
    } else {
        router.fallback(|| async { Html(NOT_BUILT) })
    }
}
