//! What the WebSocket route handlers share: reading an API Gateway WebSocket event's frame and
//! answering with frames posted back to the connection.

use super::Services;
use crate::error::ChatError;
use crate::protocol::{ClientFrame, ServerFrame};

/// Parses a frame and checks the connection, answering refusals with an `error` frame.
///
/// # Returns
/// The frame and the connection, or `None` when an error frame was sent instead.
pub async fn accept_frame(
    s: &Services,
    connection_id: &str,
    body: Option<&str>,
) -> Option<(ClientFrame, crate::domain::Connection)> {
    let frame = match ClientFrame::parse(body.unwrap_or("")) {
        Ok(frame) => frame,
        Err(rejected) => {
            s.post(connection_id, &rejected.to_frame()).await;
            return None;
        }
    };
    match s.connection(connection_id).await {
        Ok(connection) => Some((frame, connection)),
        Err(error) => {
            reply_error(s, connection_id, &frame, &error).await;
            None
        }
    }
}

/// Sends an `error` frame echoing the request's `requestId` and `chatId`.
pub async fn reply_error(
    s: &Services,
    connection_id: &str,
    frame: &ClientFrame,
    error: &ChatError,
) {
    if let ChatError::Internal { message, .. } = error {
        tracing::error!(connection_id, error = %message, "request failed");
    }
    let chat_id = match frame {
        ClientFrame::SendMessage(f) => Some(f.chat_id.to_string()),
        ClientFrame::Resume(f) => Some(f.chat_id.to_string()),
        ClientFrame::Stop(f) | ClientFrame::Unsubscribe(f) => Some(f.chat_id.to_string()),
        ClientFrame::Ping(_) => None,
    };
    let request_id = frame.request_id().map(str::to_owned);
    s.post(
        connection_id,
        &ServerFrame::error(request_id, chat_id, error),
    )
    .await;
}
