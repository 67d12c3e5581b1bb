//! The WebSocket API, behaving as API Gateway's does: each connection gets an id; `$connect`
//! runs before the upgrade and a refusal answers the HTTP request (401) so the socket never
//! opens; each message is routed on its `action` (`$request.body.action`) to the function that
//! owns the route, `$default` otherwise; `$disconnect` runs when the socket ends. Frames to the
//! client go through the same `@connections` path the functions use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use aws_lambda_events::apigw::{
    ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest,
    ApiGatewayWebsocketProxyRequestContext,
};
use aws_lambda_events::query_map::QueryMap;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatrun_core::config::MAX_WEBSOCKET_MESSAGE_BYTES;
use chatrun_core::protocol::ACTIONS;
use chatrun_embedded::{ConnectionInfo, Outbound, Outbox};
use futures::{SinkExt, StreamExt};

use crate::gateway::Gateway;

/// Connection ids in the shape of API Gateway's (16 base64 characters), URL-safe so that they
/// need no escaping in `/@connections/{id}`.
fn new_connection_id() -> String {
    use std::fmt::Write;
    let bytes: [u8; 12] = rand::random();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut id = String::with_capacity(16);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            let _ = id.write_char(ALPHABET[((n >> shift) & 63) as usize] as char);
        }
    }
    id
}

/// Builds the event API Gateway hands a WebSocket route's Lambda.
fn event(
    gateway: &Gateway,
    route_key: &str,
    event_type: &str,
    connection_id: &str,
    body: Option<String>,
    query: QueryMap,
) -> ApiGatewayWebsocketProxyRequest {
    let mut context = ApiGatewayWebsocketProxyRequestContext::default();
    context.route_key = Some(route_key.into());
    context.event_type = Some(event_type.into());
    context.connection_id = Some(connection_id.into());
    context.domain_name = Some(gateway.domain.clone());
    context.stage = Some(gateway.stage.clone());
    context.request_time_epoch = chrono::Utc::now().timestamp_millis();
    context.request_id = Some(uuid::Uuid::new_v4().to_string());
    let mut event = ApiGatewayWebsocketProxyRequest::default();
    event.request_context = context;
    event.body = body;
    event.query_string_parameters = query;
    event
}

/// `GET /ws?token=...`: runs `$connect`, and upgrades only when it answered 2xx.
pub async fn upgrade(
    State(gateway): State<Arc<Gateway>>,
    ws: WebSocketUpgrade,
    Query(query): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let connection_id = new_connection_id();
    let query_map: QueryMap = query
        .into_iter()
        .map(|(k, v)| (k, vec![v]))
        .collect::<HashMap<_, _>>()
        .into();
    let connect = event(
        &gateway,
        "$connect",
        "CONNECT",
        &connection_id,
        None,
        query_map,
    );
    let answer = chatrun_connect::handle(&gateway.services, connect).await;
    if !(200..300).contains(&answer.status_code) {
        return refusal(answer);
    }
    let now = chrono::Utc::now().timestamp_millis();
    let info = ConnectionInfo {
        source_ip: peer.ip().to_string(),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        connected_at: now,
        last_active_at: now,
    };
    ws.read_buffer_size(4096)
        .max_message_size(MAX_WEBSOCKET_MESSAGE_BYTES)
        .max_frame_size(MAX_WEBSOCKET_MESSAGE_BYTES)
        .on_upgrade(move |socket| run_socket(gateway, socket, connection_id, info))
}

fn refusal(answer: ApiGatewayProxyResponse) -> Response {
    let status =
        StatusCode::from_u16(answer.status_code as u16).unwrap_or(StatusCode::UNAUTHORIZED);
    let body = match answer.body {
        Some(aws_lambda_events::encodings::Body::Text(text)) => text,
        _ => String::new(),
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The route a message takes: its `action` when that names a route, else `$default`.
fn select_route(body: &str) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        action: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_str::<Probe>(body) {
        Ok(Probe {
            action: Some(action),
        }) => ACTIONS
            .iter()
            .find(|a| **a == action)
            .copied()
            .unwrap_or("$default"),
        _ => "$default",
    }
}

async fn dispatch(gateway: &Gateway, connection_id: &str, body: String) {
    let route = select_route(&body);
    let event = event(
        gateway,
        route,
        "MESSAGE",
        connection_id,
        Some(body),
        QueryMap::default(),
    );
    tracing::debug!(connection_id, route, "frame");
    match route {
        "send-message" | "stop" => {
            chatrun_send_message::handle(&gateway.services, event).await;
        }
        _ => {
            chatrun_stream_out::handle(&gateway.services, event).await;
        }
    }
}

/// Why the socket task closes the connection itself.
fn close_frame(code: u16, reason: &'static str) -> Option<CloseFrame> {
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

/// Writes `first` and every other frame already waiting, with one flush.
/// # Returns
/// Whether the connection stays open (false once a close was sent).
async fn write_waiting(
    socket: &mut WebSocket,
    outbox: &mut Outbox,
    first: Outbound,
) -> Result<bool, axum::Error> {
    let mut next = Some(first);
    while let Some(frame) = next {
        match frame {
            Outbound::Text(text) => socket.feed(Message::Text(text.into())).await?,
            Outbound::Close => {
                outbox.close();
                socket
                    .send(Message::Close(close_frame(close_code::NORMAL, "closed")))
                    .await?;
                return Ok(false);
            }
        }
        next = outbox.try_recv();
    }
    socket.flush().await?;
    Ok(true)
}

/// One task per connection, as a bare server has: it writes what is posted to the connection,
/// and reads and handles the client's messages one at a time, in order. Frames posted while a
/// message is being handled (its `ack`, a resume's replay) are written as they come.
async fn run_socket(
    gateway: Arc<Gateway>,
    mut socket: WebSocket,
    connection_id: String,
    info: ConnectionInfo,
) {
    let mut outbox = gateway.sockets.register(connection_id.clone(), info);
    let mut closing = gateway.closing.subscribe();
    // Made once, not per turn of the loop below: the loop turns once per frame written, and a
    // fresh `wait_for` each time would take the watch's lock and join its waiters each time.
    let shutdown = async move {
        let _ = closing.wait_for(|c| *c).await;
    };
    let lifetime = tokio::time::sleep(gateway.options.max_connection_age);
    let idle = tokio::time::sleep(gateway.options.idle_timeout);
    tokio::pin!(shutdown, lifetime, idle);
    // The message being handled. Reading waits for it, and nothing ends the connection under
    // it: a handler cut off half way could save a message and never queue its turn.
    let mut handling = None;
    // Set once a close was sent: the task then reads until the client answers it.
    let mut open = true;
    let close = loop {
        tokio::select! {
            biased;
            frame = outbox.recv(), if open => match write_waiting(&mut socket, &mut outbox, frame).await {
                Ok(still_open) => open = still_open,
                Err(error) => {
                    tracing::debug!(connection_id, %error, "websocket write failed");
                    break None;
                }
            },
            () = async { handling.as_mut().expect("a message is being handled").await }, if handling.is_some() => {
                handling = None;
                idle.as_mut().reset(tokio::time::Instant::now() + gateway.options.idle_timeout);
            }
            next = socket.next(), if handling.is_none() => {
                idle.as_mut().reset(tokio::time::Instant::now() + gateway.options.idle_timeout);
                let message = match next {
                    None => break None,
                    Some(Err(error)) => {
                        // tungstenite reports a message past the size limit as a read error.
                        let text = error.to_string().to_lowercase();
                        let too_big = text.contains("too long")
                            || text.contains("too big")
                            || text.contains("limit");
                        tracing::info!(connection_id, %error, "websocket read failed");
                        break if too_big { close_frame(close_code::SIZE, "message too big") } else { None };
                    }
                    Some(Ok(message)) => message,
                };
                if !open {
                    // Closing: only the client's answer to the close matters now.
                    if matches!(message, Message::Close(_)) { break None; }
                    continue;
                }
                gateway
                    .sockets
                    .touch(&connection_id, chrono::Utc::now().timestamp_millis());
                // Boxed: the handlers' state lives only while a message is handled, not inline
                // in every idle connection's task (it made each one about 8 KB).
                handling = match message {
                    Message::Text(text) => Some(Box::pin(dispatch(&gateway, &connection_id, text.to_string()))),
                    // API Gateway cannot select a route in a binary frame: it goes to $default.
                    Message::Binary(bytes) => Some(Box::pin(dispatch(
                        &gateway,
                        &connection_id,
                        String::from_utf8_lossy(&bytes).into_owned(),
                    ))),
                    Message::Close(_) => break None,
                    Message::Ping(_) | Message::Pong(_) => None,
                };
            }
            () = &mut idle, if handling.is_none() => break close_frame(close_code::AWAY, "idle timeout"),
            () = &mut lifetime, if handling.is_none() => break close_frame(close_code::AWAY, "connection lifetime reached"),
            () = &mut shutdown, if handling.is_none() => break close_frame(close_code::AWAY, "server shutting down"),
        }
    };
    // A write failed under a message being handled: let it finish (see `handling`).
    if let Some(handling) = handling {
        handling.await;
    }
    gateway.sockets.unregister(&connection_id);
    if let (Some(frame), true) = (close, open) {
        let _ = socket.send(Message::Close(Some(frame))).await;
    }
    let _ = socket.close().await;
    let disconnect = event(
        &gateway,
        "$disconnect",
        "DISCONNECT",
        &connection_id,
        None,
        QueryMap::default(),
    );
    Box::pin(chatrun_connect::handle(&gateway.services, disconnect)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_selected_on_action() {
        assert_eq!(
            select_route(r#"{"action":"send-message","x":1}"#),
            "send-message"
        );
        assert_eq!(select_route(r#"{"action":"ping"}"#), "ping");
        assert_eq!(select_route(r#"{"action":"dance"}"#), "$default");
        assert_eq!(select_route("not json"), "$default");
        assert_eq!(select_route(r#"{"action":7}"#), "$default");
    }

    #[test]
    fn connection_ids_look_like_api_gateways() {
        let id = new_connection_id();
        assert_eq!(id.len(), 16);
        assert_ne!(id, new_connection_id());
    }
}
