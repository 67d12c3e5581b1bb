//! `$connect` and `$disconnect`.

use super::Services;
use crate::config::CONNECTION_TTL;
use crate::domain::Connection;
use crate::error::ChatError;

/// Authenticates the `token` query parameter and records the connection.
/// # Errors
/// `unauthorized` for a missing, forged or expired token (the gateway answers 401 and the
/// socket never opens).
pub async fn connect(
    s: &Services,
    connection_id: &str,
    token: Option<&str>,
) -> Result<Connection, ChatError> {
    let token = token.ok_or_else(|| ChatError::Unauthorized("missing token".into()))?;
    let now = s.now();
    let principal = s.tokens.verify(token, now)?;
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
