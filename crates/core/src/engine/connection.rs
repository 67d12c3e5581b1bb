//! `$connect` and `$disconnect`.

use super::{Services, api};
use crate::config::CONNECTION_TTL;
use crate::domain::{Connection, Grant};
use crate::error::ChatError;

/// Authenticates the `token` query parameter and records the connection.
///
/// A run-scoped access token opens a connection only while its run is the chat's current one
/// and the chat is still its user's: a token of an ended run, or of a deleted chat, is refused
/// like any other invalid token.
/// # Errors
/// `unauthorized` for a missing, forged, expired, revoked or outdated token (the gateway answers
/// 401 and the socket never opens).
pub async fn connect(
    s: &Services,
    connection_id: &str,
    token: Option<&str>,
) -> Result<Connection, ChatError> {
    let token = token.ok_or_else(|| ChatError::Unauthorized("missing token".into()))?;
    let principal = api::verify_token(s, token).await?;
    if let Grant::Run { chat_id, run_id } = &principal.grant {
        let (chat, session) =
            futures::try_join!(s.store.get_chat(chat_id), s.store.get_session(chat_id))?;
        let current = chat.is_some_and(|c| c.owner_id == principal.user_id)
            && session.is_some_and(|session| &session.run_id == run_id);
        if !current {
            return Err(ChatError::Unauthorized("invalid or expired token".into()));
        }
    }
    let now = s.now();
    let connection = Connection {
        connection_id: connection_id.to_owned(),
        owner_id: principal.user_id,
        grant: principal.grant,
        connected_at: now,
        expires_at: now + CONNECTION_TTL.as_millis() as i64,
    };
    s.store.put_connection(&connection).await?;
    Ok(connection)
}

/// Forgets the connection and all its subscriptions.
pub async fn disconnect(s: &Services, connection_id: &str) -> Result<(), ChatError> {
    s.store.delete_connection(connection_id).await?;
    Ok(())
}
