//! The `api` function: the HTTP API of DESIGN §8 on `lambda_http`.
//!
//! The local gateway converts its axum requests into the same `lambda_http::Request` and calls
//! [`handle`], so one router serves both.

#[cfg(feature = "lambda")]
pub mod wiring;

use chatrun_core::domain::ChatId;
use chatrun_core::engine::{Services, api};
use chatrun_core::error::ChatError;
use lambda_http::http::{Method, StatusCode, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;

/// The largest request body accepted (a rename is a few bytes).
const MAX_BODY_BYTES: usize = 16 * 1024;

/// What the api function works with.
#[derive(Clone)]
pub struct ApiDeps {
    pub services: Services,
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::Text(serde_json::to_string(value).unwrap_or_default()))
        .expect("a static response always builds")
}

fn error(e: &ChatError) -> Response<Body> {
    if let ChatError::Internal { message, .. } = e {
        tracing::error!(error = %message, "api request failed");
    }
    let status =
        StatusCode::from_u16(e.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = serde_json::json!({"error": {"code": e.code(), "message": e.client_message()}});
    let Some(retry_after_ms) = e.retry_after_ms() else {
        return json(status, &body);
    };
    body["error"]["retryAfterMs"] = retry_after_ms.into();
    let mut response = json(status, &body);
    // HTTP's Retry-After is in whole seconds: round up, so a client never retries too early.
    response.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from(retry_after_ms.div_ceil(1000)),
    );
    response
}

/// The caller's address as API Gateway's HTTP API saw it (`requestContext.http.sourceIp`); the
/// local gateway sets the same field from the TCP peer.
fn source_ip(request: &Request) -> Option<&str> {
    match request.request_context_ref()? {
        RequestContext::ApiGatewayV2(context) => context.http.source_ip.as_deref(),
        _ => None,
    }
}

fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn query_param(request: &Request, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn body_text(request: &Request) -> Result<&[u8], ChatError> {
    let bytes: &[u8] = match request.body() {
        Body::Empty => b"",
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => b"",
    };
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ChatError::TooLarge(format!(
            "body over {MAX_BODY_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rename {
    title: String,
}

/// Routes one request.
pub async fn handle(deps: &ApiDeps, request: Request) -> Response<Body> {
    match route(deps, &request).await {
        Ok(response) => response,
        Err(e) => error(&e),
    }
}

async fn route(deps: &ApiDeps, request: &Request) -> Result<Response<Body>, ChatError> {
    let s = &deps.services;
    let path = request.uri().path().trim_end_matches('/');
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = request.method();
    match (method, segments.as_slice()) {
        (&Method::GET, ["api", "health"]) => {
            Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
        }
        (&Method::POST, ["api", "session"]) => Ok(json(
            StatusCode::OK,
            &api::create_session(s, bearer(request), source_ip(request)).await?,
        )),
        (&Method::POST, ["api", "session", "revoke"]) => {
            let principal = api::authenticate(s, bearer(request)).await?;
            Ok(json(
                StatusCode::OK,
                &api::revoke_sessions(s, &principal).await?,
            ))
        }
        (&Method::GET, ["api", "models"]) => {
            api::authenticate(s, bearer(request)).await?;
            Ok(json(StatusCode::OK, &api::models(&s.models)))
        }
        (&Method::GET, ["api", "chats"]) => {
            let principal = api::authenticate(s, bearer(request)).await?;
            let cursor = query_param(request, "cursor");
            let list = api::list_chats(s, &principal, cursor.as_deref()).await?;
            Ok(json(StatusCode::OK, &list))
        }
        (_, ["api", "chats", id]) => {
            let principal = api::authenticate(s, bearer(request)).await?;
            let chat_id = ChatId::parse(*id)?;
            match *method {
                Method::GET => {
                    let limit = api::HistoryLimit::parse(query_param(request, "limit").as_deref())?;
                    Ok(json(
                        StatusCode::OK,
                        &api::get_chat(s, &principal, &chat_id, limit).await?,
                    ))
                }
                Method::PATCH => {
                    let rename: Rename =
                        serde_json::from_slice(body_text(request)?).map_err(|e| {
                            ChatError::BadRequest(format!("expected {{\"title\": string}}: {e}"))
                        })?;
                    let summary = api::rename_chat(s, &principal, &chat_id, &rename.title).await?;
                    Ok(json(StatusCode::OK, &summary))
                }
                Method::DELETE => {
                    api::delete_chat(s, &principal, &chat_id).await?;
                    Ok(Response::builder()
                        .status(StatusCode::NO_CONTENT)
                        .body(Body::Empty)
                        .expect("a static response always builds"))
                }
                _ => Err(method_not_allowed()),
            }
        }
        (_, ["api", "chats", id, "messages"]) => {
            let principal = api::authenticate(s, bearer(request)).await?;
            let chat_id = ChatId::parse(*id)?;
            if method != Method::GET {
                return Err(method_not_allowed());
            }
            let limit = api::HistoryLimit::parse(query_param(request, "limit").as_deref())?;
            let before = query_param(request, "before");
            let page = api::message_page(s, &principal, &chat_id, before.as_deref(), limit).await?;
            Ok(json(StatusCode::OK, &page))
        }
        (_, ["api", "health" | "session" | "models" | "chats"] | ["api", "session", "revoke"]) => {
            Err(method_not_allowed())
        }
        _ => Err(ChatError::NotFound(format!("no route for {method} {path}"))),
    }
}

fn method_not_allowed() -> ChatError {
    ChatError::BadRequest("method not allowed".into())
}
