//! What the WebSocket route handlers share: reading an API Gateway WebSocket event's frame and
//! answering with frames posted back to the connection.

use super::Services;
use crate::auth::RevocationFloor;
use crate::domain::{Connection, Grant};
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
) -> Option<(ClientFrame, Connection)> {
    let frame = match ClientFrame::parse(body.unwrap_or("")) {
        Ok(frame) => frame,
        Err(rejected) => {
            s.post(connection_id, &rejected.to_frame()).await;
            return None;
        }
    };
    let checked = match s.connection(connection_id).await {
        Ok(connection) => authorize(s, &connection, &frame).await.map(|()| connection),
        Err(error) => Err(error),
    };
    match checked {
        Ok(connection) => Some((frame, connection)),
        Err(error) => {
            reply_error(s, connection_id, &frame, &error).await;
            if is_revoked_error(&error) {
                // A revoked connection is closed, as its `$connect` would now be refused.
                let _ = s.connections.close(connection_id).await;
            }
            None
        }
    }
}

const REVOKED: &str = "this connection's tokens were revoked; reconnect";

fn is_revoked_error(error: &ChatError) -> bool {
    matches!(error, ChatError::Unauthorized(m) if m == REVOKED)
}

/// What a connection's token lets it do with a frame, checked before any route runs.
///
/// - A connection opened before its user revoked their tokens is refused (and closed).
/// - A run-scoped connection (DESIGN §5) may `resume` and `stop` its own run of its own chat
///   only: another chat, or the same chat once a new run (session) has replaced its run, answers
///   `not_found`, the same answer as a chat that does not exist. `send-message` is `forbidden`.
///   `unsubscribe` and `ping` reveal nothing and stay allowed.
/// # Errors
/// `unauthorized`, `forbidden` or `not_found` as above.
pub async fn authorize(
    s: &Services,
    connection: &Connection,
    frame: &ClientFrame,
) -> Result<(), ChatError> {
    if let Some(record) = s
        .store
        .get_connection(&RevocationFloor::key(&connection.owner_id), s.now())
        .await?
        && let Some(floor) = RevocationFloor::from_record(&record)
        && floor.refuses(connection.connected_at)
    {
        return Err(ChatError::Unauthorized(REVOKED.into()));
    }
    let Grant::Run {
        chat_id: scoped,
        run_id: granted_run,
    } = &connection.grant
    else {
        return Ok(());
    };
    let (chat_id, named_run) = match frame {
        ClientFrame::SendMessage(_) => {
            return Err(ChatError::Forbidden(
                "an access token cannot send messages".into(),
            ));
        }
        ClientFrame::Resume(r) => (&r.chat_id, None),
        ClientFrame::Stop(r) => (&r.chat_id, r.run_id.as_deref()),
        ClientFrame::Unsubscribe(_) | ClientFrame::Ping(_) => return Ok(()),
    };
    if chat_id != scoped || named_run.is_some_and(|run| run != granted_run) {
        return Err(ChatError::chat_not_found());
    }
    match s.store.get_session(chat_id).await? {
        Some(session) if &session.run_id == granted_run => Ok(()),
        _ => Err(ChatError::chat_not_found()),
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
