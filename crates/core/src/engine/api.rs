//! The operations behind the HTTP API (DESIGN §8), independent of HTTP itself: the `api`
//! function maps requests to these and their errors to statuses.

use serde::{Deserialize, Serialize};

use super::Services;
use crate::auth::{Principal, RevocationFloor};
use crate::config::{CHAT_PAGE_SIZE, MAX_TITLE_CHARS};
use crate::domain::{ChatId, ChatSummary, Grant, Millis, SessionStatus};
use crate::error::ChatError;
use crate::message::UIMessage;
use crate::ports::{LanguageModel, ModelInfo};

/// `POST /api/session`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionGrant {
    pub token: String,
    pub user_id: String,
}

/// `GET /api/chats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatList {
    pub chats: Vec<ChatSummary>,
    pub next_cursor: Option<String>,
}

/// The session part of `GET /api/chats/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub run_id: String,
    pub access_token: String,
    pub last_event_id: u64,
    pub status: SessionStatus,
    pub streaming: bool,
    pub assistant_message_id: Option<String>,
}

/// `GET /api/chats/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatView {
    pub id: ChatId,
    pub title: String,
    pub model: String,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub messages: Vec<UIMessage>,
    pub session: Option<SessionView>,
}

/// `GET /api/models`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelList {
    pub models: Vec<ModelInfo>,
    pub default: String,
}

/// Verifies a token: signature, issuer, audience, shape, expiry, and the user's revocation
/// floor.
/// # Errors
/// `unauthorized` when forged, expired, half-scoped or revoked.
pub async fn verify_token(s: &Services, token: &str) -> Result<Principal, ChatError> {
    let principal = s.tokens.verify(token, s.now())?;
    if let Some(floor) = revocation_floor(s, &principal.user_id).await?
        && floor.refuses(principal.issued_at)
    {
        return Err(ChatError::Unauthorized("invalid or expired token".into()));
    }
    Ok(principal)
}

async fn revocation_floor(
    s: &Services,
    user_id: &str,
) -> Result<Option<RevocationFloor>, ChatError> {
    Ok(s.store
        .get_connection(&RevocationFloor::key(user_id), s.now())
        .await?
        .as_ref()
        .and_then(RevocationFloor::from_record))
}

/// Authenticates an HTTP API call: a valid, unrevoked *user* token. A run-scoped access token
/// is refused on every HTTP path (DESIGN §7): it only streams its own run, so it can neither
/// read the history nor renew itself through `GET /api/chats/{id}`.
/// # Errors
/// `unauthorized` when missing, forged, expired or revoked; `forbidden` for an access token.
pub async fn authenticate(s: &Services, bearer: Option<&str>) -> Result<Principal, ChatError> {
    let token = bearer.ok_or_else(|| ChatError::Unauthorized("missing bearer token".into()))?;
    let principal = verify_token(s, token).await?;
    require_user(&principal)?;
    Ok(principal)
}

fn require_user(principal: &Principal) -> Result<(), ChatError> {
    match principal.grant {
        Grant::User => Ok(()),
        Grant::Run { .. } => Err(ChatError::Forbidden(
            "an access token cannot do this".into(),
        )),
    }
}

/// `POST /api/session`: a fresh user token for the bearer's user when the bearer is a valid
/// user token, else for a new guest.
/// # Errors
/// `forbidden` for a run-scoped access token (it must not turn into its user's token).
pub async fn create_session(s: &Services, bearer: Option<&str>) -> Result<SessionGrant, ChatError> {
    let now = s.now();
    let principal = match bearer {
        Some(token) => match verify_token(s, token).await {
            Ok(principal) => Some(principal),
            Err(ChatError::Unauthorized(_)) => None,
            Err(other) => return Err(other),
        },
        None => None,
    };
    if let Some(principal) = &principal {
        require_user(principal)?;
    }
    let user_id = principal
        .map(|p| p.user_id)
        .unwrap_or_else(|| format!("guest-{}", s.ids.new_id()));
    Ok(SessionGrant {
        token: s
            .tokens
            .user_token(&user_id, now, s.settings.user_token_ttl),
        user_id,
    })
}

/// `POST /api/session/revoke`: every token of the caller's user issued until now stops working
/// (its user tokens and the access tokens of its runs, on HTTP and at `$connect`). Answers a
/// fresh user token for the same user, the only one that works from now on.
/// # Errors
/// What [`authenticate`] refuses.
pub async fn revoke_sessions(
    s: &Services,
    principal: &Principal,
) -> Result<SessionGrant, ChatError> {
    require_user(principal)?;
    let now = s.now();
    // Tokens issued at `now` or before are refused; the fresh one is issued just after.
    let not_before = now + 1;
    let longest = s.settings.user_token_ttl.max(s.settings.session_idle);
    let floor = RevocationFloor {
        user_id: principal.user_id.clone(),
        not_before,
        expires_at: not_before + longest.as_millis() as i64 + 60_000,
    };
    s.store.put_connection(&floor.to_record()).await?;
    Ok(SessionGrant {
        token: s
            .tokens
            .user_token(&principal.user_id, not_before, s.settings.user_token_ttl),
        user_id: principal.user_id.clone(),
    })
}

pub async fn list_chats(
    s: &Services,
    principal: &Principal,
    cursor: Option<&str>,
) -> Result<ChatList, ChatError> {
    require_user(principal)?;
    let page = s
        .store
        .list_chats(&principal.user_id, cursor, CHAT_PAGE_SIZE)
        .await?;
    Ok(ChatList {
        chats: page.chats,
        next_cursor: page.next_cursor,
    })
}

pub async fn get_chat(
    s: &Services,
    principal: &Principal,
    chat_id: &ChatId,
) -> Result<ChatView, ChatError> {
    require_user(principal)?;
    let chat = s
        .owned_chat(&principal.user_id, &principal.grant, chat_id)
        .await?;
    let (messages, session) =
        futures::try_join!(s.store.messages(chat_id), s.store.get_session(chat_id))?;
    let now = s.now();
    Ok(ChatView {
        id: chat.id,
        title: chat.title,
        model: chat.model,
        created_at: chat.created_at,
        updated_at: chat.updated_at,
        messages,
        session: session.map(|session| SessionView {
            status: if session.is_over(now) && !session.streaming {
                SessionStatus::Ended
            } else {
                session.status
            },
            run_id: session.run_id,
            access_token: session.access_token,
            last_event_id: session.last_event_id,
            streaming: session.streaming,
            assistant_message_id: session.assistant_message_id,
        }),
    })
}

/// Renames a chat.
/// # Errors
/// `bad_request` for an empty title; titles longer than 80 characters are cut.
pub async fn rename_chat(
    s: &Services,
    principal: &Principal,
    chat_id: &ChatId,
    title: &str,
) -> Result<ChatSummary, ChatError> {
    require_user(principal)?;
    s.owned_chat(&principal.user_id, &principal.grant, chat_id)
        .await?;
    let title: String = title.split_whitespace().collect::<Vec<_>>().join(" ");
    if title.is_empty() {
        return Err(ChatError::BadRequest("title must not be empty".into()));
    }
    let title: String = title.chars().take(MAX_TITLE_CHARS).collect();
    let chat = s.store.rename_chat(chat_id, &title, s.now()).await?;
    Ok(ChatSummary::from(&chat))
}

/// Deletes a chat and everything of it.
pub async fn delete_chat(
    s: &Services,
    principal: &Principal,
    chat_id: &ChatId,
) -> Result<(), ChatError> {
    require_user(principal)?;
    s.owned_chat(&principal.user_id, &principal.grant, chat_id)
        .await?;
    s.store.delete_chat(chat_id).await?;
    Ok(())
}

pub fn models(model: &dyn LanguageModel) -> ModelList {
    ModelList {
        models: model.models(),
        default: model.default_model(),
    }
}
