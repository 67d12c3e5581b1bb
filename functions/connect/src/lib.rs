//! The `connect` function: API Gateway's `$connect` and `$disconnect` routes.
//!
//! `$connect` runs before the socket opens: a non-2xx answer refuses it (the browser sees the
//! socket fail, never the status), so the token is checked here and nowhere later.

#[cfg(feature = "lambda")]
pub mod wiring;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;
use chatrun_core::engine::{Services, connection};
use chatrun_core::error::ChatError;

fn response(status: u16, body: String) -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = status as i64;
    response.body = Some(Body::Text(body));
    response
}

fn error_response(error: &ChatError) -> ApiGatewayProxyResponse {
    let body =
        serde_json::json!({"error": {"code": error.code(), "message": error.client_message()}});
    response(error.code().http_status(), body.to_string())
}

/// Handles `$connect` (authenticate the `token` query parameter, record the connection) and
/// `$disconnect` (forget it and its subscriptions).
pub async fn handle(
    s: &Services,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let context = &event.request_context;
    let Some(connection_id) = context.connection_id.as_deref() else {
        return error_response(&ChatError::BadRequest(
            "no connection id in the event".into(),
        ));
    };
    let route = context.route_key.as_deref().unwrap_or_default();
    let result = match (route, context.event_type.as_deref()) {
        ("$connect", _) | (_, Some("CONNECT")) => {
            let token = event.query_string_parameters.first("token");
            connection::connect(s, connection_id, token)
                .await
                .map(|_| ())
        }
        ("$disconnect", _) | (_, Some("DISCONNECT")) => {
            connection::disconnect(s, connection_id).await
        }
        _ => Err(ChatError::BadRequest(format!(
            "connect does not handle route {route:?}"
        ))),
    };
    match result {
        Ok(()) => response(200, String::new()),
        Err(error) => {
            tracing::info!(connection_id, route, error = %error, "connection refused");
            error_response(&error)
        }
    }
}
