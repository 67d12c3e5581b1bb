//! The operations behind the HTTP API (DESIGN §8), independent of HTTP itself: the `api`
//! function maps requests to these and their errors to statuses.

use serde::{Deserialize, Serialize};

use super::Services;
use crate::auth::{Principal, RevocationFloor};
use crate::config::{
    CHAT_PAGE_SIZE, HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX, HISTORY_PAGE_MAX_BYTES,
    MAX_TITLE_CHARS, ModelCatalog,
};
use crate::domain::{ChatId, ChatSummary, Grant, Millis, SessionStatus};
use crate::error::ChatError;
use crate::history::{MessagePage, PageLimits};
use crate::message::UIMessage;
use crate::ports::ModelInfo;

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
    /// The newest messages, oldest first.
    pub messages: Vec<UIMessage>,
    /// Pages on to older messages (`GET /api/chats/{id}/messages?before=`); `None` when
    /// `messages` starts at the first one.
    pub older_cursor: Option<String>,
    pub session: Option<SessionView>,
}

/// `GET /api/chats/{id}/messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePageView {
    /// Oldest first.
    pub messages: Vec<UIMessage>,
    pub older_cursor: Option<String>,
}

impl From<MessagePage> for MessagePageView {
    fn from(page: MessagePage) -> Self {
        MessagePageView {
            messages: page.messages,
            older_cursor: page.older_cursor,
        }
    }
}

/// How many messages a history request asks for: the `limit` query parameter, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimit(usize);

impl HistoryLimit {
    /// # Errors
    /// `bad_request` unless `raw` is absent (the default, [`HISTORY_PAGE_DEFAULT`]) or a whole
    /// number from 1 to [`HISTORY_PAGE_MAX`].
    pub fn parse(raw: Option<&str>) -> Result<Self, ChatError> {
        let Some(raw) = raw else {
            return Ok(HistoryLimit(HISTORY_PAGE_DEFAULT));
        };
        match raw.parse::<usize>() {
            Ok(n) if (1..=HISTORY_PAGE_MAX).contains(&n) => Ok(HistoryLimit(n)),
            _ => Err(ChatError::BadRequest(format!(
                "limit must be a whole number from 1 to {HISTORY_PAGE_MAX}"
            ))),
        }
    }

    fn page_limits(self) -> PageLimits {
        PageLimits {
            messages: self.0,
            bytes: HISTORY_PAGE_MAX_BYTES,
        }
    }
}

impl Default for HistoryLimit {
    fn default() -> Self {
        HistoryLimit(HISTORY_PAGE_DEFAULT)
    }
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
/// user token, else for a new guest, counted against `source_ip`'s guests per hour.
/// # Errors
/// `forbidden` for a run-scoped access token (it must not turn into its user's token);
/// `rate_limited` when `source_ip` made too many guests this hour.
pub async fn create_session(
    s: &Services,
    bearer: Option<&str>,
    source_ip: Option<&str>,
) -> Result<SessionGrant, ChatError> {
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
    let user_id = match principal {
        Some(principal) => principal.user_id,
        None => {
            super::limits::admit_guest(s, source_ip).await?;
            format!("guest-{}", s.ids.new_id())
        }
    };
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

/// `GET /api/chats/{id}`: the chat with its newest page of messages and its session.
/// # Errors
/// `not_found` for a missing chat or someone else's; `forbidden` for an access token.
pub async fn get_chat(
    s: &Services,
    principal: &Principal,
    chat_id: &ChatId,
    limit: HistoryLimit,
) -> Result<ChatView, ChatError> {
    require_user(principal)?;
    let chat = s
        .owned_chat(&principal.user_id, &principal.grant, chat_id)
        .await?;
    let (page, session) = futures::try_join!(
        s.store.message_page(chat_id, None, limit.page_limits()),
        s.store.get_session(chat_id)
    )?;
    let now = s.now();
    Ok(ChatView {
        id: chat.id,
        title: chat.title,
        model: chat.model,
        created_at: chat.created_at,
        updated_at: chat.updated_at,
        messages: page.messages,
        older_cursor: page.older_cursor,
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

/// `GET /api/chats/{id}/messages?before=`: the page of messages older than the cursor a
/// previous page returned (no cursor: the newest page).
/// # Errors
/// `not_found` for a missing chat or someone else's, whatever the cursor; `bad_request` for a
/// cursor not made for this chat; `conflict` when the cursor's message was deleted since (an
/// edit): the client loads the chat again.
pub async fn message_page(
    s: &Services,
    principal: &Principal,
    chat_id: &ChatId,
    before: Option<&str>,
    limit: HistoryLimit,
) -> Result<MessagePageView, ChatError> {
    require_user(principal)?;
    s.owned_chat(&principal.user_id, &principal.grant, chat_id)
        .await?;
    let page = s
        .store
        .message_page(chat_id, before, limit.page_limits())
        .await?;
    Ok(page.into())
}

/// Renames a chat.
/// # Errors
/// `bad_request` for a title with nothing visible (control and bidirectional formatting characters
/// are removed, see [`clean_title`]); titles longer than 80 characters are cut.
pub async fn rename_chat(
    s: &Services,
    principal: &Principal,
    chat_id: &ChatId,
    title: &str,
) -> Result<ChatSummary, ChatError> {
    require_user(principal)?;
    s.owned_chat(&principal.user_id, &principal.grant, chat_id)
        .await?;
    let title = clean_title(title);
    if title.is_empty() {
        return Err(ChatError::BadRequest("title must not be empty".into()));
    }
    let title: String = title.chars().take(MAX_TITLE_CHARS).collect();
    let chat = s.store.rename_chat(chat_id, &title, s.now()).await?;
    Ok(ChatSummary::from(&chat))
}

/// A title as shown in the sidebar: whitespace runs collapsed to one space, and no control
/// characters or bidirectional formatting characters (which could make a title render as
/// something else, e.g. reversed with U+202E).
pub fn clean_title(raw: &str) -> String {
    let visible: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter(|c| !is_bidi_control(*c))
        .collect();
    visible.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// How long deleting a chat waits for its running turn to stop before deleting anyway (a turn
/// whose worker vanished never answers; the stale-turn rules deal with it).
const DELETE_WAITS_FOR_STOP: std::time::Duration = std::time::Duration::from_secs(3);

/// Deletes a chat and everything of it. A reply still streaming is stopped first (the session's
/// stop flag, as `stop` sets it) and given a moment to end, so the model stops streaming, and
/// being paid for, instead of running on for a chat that is gone.
pub async fn delete_chat(
    s: &Services,
    principal: &Principal,
    chat_id: &ChatId,
) -> Result<(), ChatError> {
    require_user(principal)?;
    s.owned_chat(&principal.user_id, &principal.grant, chat_id)
        .await?;
    if request_stop(s, chat_id).await? {
        let deadline = tokio::time::Instant::now() + DELETE_WAITS_FOR_STOP;
        while tokio::time::Instant::now() < deadline {
            match s.store.get_session(chat_id).await? {
                Some(session) if session.streaming => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                _ => break,
            }
        }
    }
    // A turn the deletion cut short never reaches onTurnComplete: free its slot here.
    let running_turn = s
        .store
        .get_session(chat_id)
        .await?
        .filter(|session| session.streaming)
        .and_then(|session| session.assistant_message_id);
    s.store.delete_chat(chat_id).await?;
    if let Some(turn_id) = running_turn {
        super::limits::release_turn_slot(s, &principal.user_id, &turn_id).await;
    }
    Ok(())
}

/// Sets the session's stop flag when a reply streams.
/// # Returns
/// Whether a reply was streaming.
async fn request_stop(s: &Services, chat_id: &ChatId) -> Result<bool, ChatError> {
    for _ in 0..8 {
        let Some(session) = s.store.get_session(chat_id).await? else {
            return Ok(false);
        };
        if !session.streaming {
            return Ok(false);
        }
        if session.stop_requested {
            return Ok(true);
        }
        let version = session.version;
        let mut stopped = session;
        stopped.stop_requested = true;
        match s.store.put_session(&stopped, Some(version)).await {
            Ok(_) => return Ok(true),
            Err(crate::error::StoreError::Conflict(_)) => continue,
            Err(other) => return Err(other.into()),
        }
    }
    Err(ChatError::Internal {
        message: "the session kept changing while a delete stopped its turn".into(),
        retryable: true,
    })
}

/// `GET /api/models`: the models a chat may use.
pub fn models(catalog: &ModelCatalog) -> ModelList {
    ModelList {
        models: catalog.models().to_vec(),
        default: catalog.default_model().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::domain::{Chat, ChatSession};
    use crate::ports::ChatStore;
    use crate::testkit::memory::services;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[tokio::test]
    async fn deleting_a_chat_stops_its_running_turn_first() {
        let t = services(Settings::with_secret(SECRET));
        let s = &t.services;
        let now = s.now();
        let chat_id = ChatId::parse("c1").unwrap();
        s.store
            .create_chat(&Chat {
                id: chat_id.clone(),
                owner_id: "u1".into(),
                title: "t".into(),
                model: "m".into(),
                created_at: now,
                updated_at: now,
                message_count: 0,
            })
            .await
            .unwrap();
        // Built from JSON so fields added later with defaults need no change here.
        let session: ChatSession = serde_json::from_value(serde_json::json!({
            "chatId": "c1", "runId": "r1", "accessToken": "a", "lastEventId": 0, "turns": 0,
            "status": "active", "endedReason": null, "streaming": true, "turnStartEventId": 1,
            "assistantMessageId": "a1", "userMessageId": "m1", "stopRequested": false,
            "turnStartedAt": now, "attempts": 1, "expiresAt": now + 3_600_000, "version": 0
        }))
        .unwrap();
        s.store.put_session(&session, None).await.unwrap();
        // The turn's worker: sees the stop flag, ends the turn.
        let store = t.store.clone();
        let worker_chat = chat_id.clone();
        let worker = tokio::spawn(async move {
            loop {
                let current = store.get_session(&worker_chat).await.unwrap().unwrap();
                if current.stop_requested {
                    let version = current.version;
                    let mut done = current;
                    done.streaming = false;
                    store.put_session(&done, Some(version)).await.unwrap();
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        let user = Principal {
            user_id: "u1".into(),
            grant: Grant::User,
            issued_at: now,
        };
        delete_chat(s, &user, &chat_id).await.unwrap();
        assert!(worker.await.unwrap(), "the worker was asked to stop");
        assert!(s.store.get_chat(&chat_id).await.unwrap().is_none());
        assert!(s.store.get_session(&chat_id).await.unwrap().is_none());

        // Someone else's delete neither stops nor deletes, and answers like a missing chat.
        let mallory = Principal {
            user_id: "u2".into(),
            ..user
        };
        let missing = delete_chat(s, &mallory, &ChatId::parse("c9").unwrap()).await;
        assert_eq!(
            missing.unwrap_err().code(),
            crate::error::ErrorCode::NotFound
        );
    }

    async fn chat_of(s: &Services, owner: &str, id: &str, messages: usize) -> ChatId {
        let chat_id = ChatId::parse(id).unwrap();
        let now = s.now();
        s.store
            .create_chat(&Chat {
                id: chat_id.clone(),
                owner_id: owner.into(),
                title: "t".into(),
                model: "m".into(),
                created_at: now,
                updated_at: now,
                message_count: 0,
            })
            .await
            .unwrap();
        for i in 0..messages {
            s.store
                .append_message(&chat_id, &UIMessage::user_text(format!("m{i}"), "hi"), now)
                .await
                .unwrap();
        }
        chat_id
    }

    fn user(id: &str) -> Principal {
        Principal {
            user_id: id.into(),
            grant: Grant::User,
            issued_at: 0,
        }
    }

    fn ids(messages: &[UIMessage]) -> Vec<&str> {
        messages.iter().map(|m| m.id.as_str()).collect()
    }

    #[tokio::test]
    async fn the_history_comes_newest_page_first_and_pages_back_to_the_start() {
        let t = services(Settings::with_secret(SECRET));
        let s = &t.services;
        let chat_id = chat_of(s, "u1", "c1", 5).await;
        let two = HistoryLimit::parse(Some("2")).unwrap();
        let view = get_chat(s, &user("u1"), &chat_id, two).await.unwrap();
        assert_eq!(ids(&view.messages), ["m3", "m4"]);
        let older = message_page(s, &user("u1"), &chat_id, view.older_cursor.as_deref(), two)
            .await
            .unwrap();
        assert_eq!(ids(&older.messages), ["m1", "m2"]);
        let first = message_page(s, &user("u1"), &chat_id, older.older_cursor.as_deref(), two)
            .await
            .unwrap();
        assert_eq!(ids(&first.messages), ["m0"]);
        assert_eq!(first.older_cursor, None);

        let whole = get_chat(s, &user("u1"), &chat_id, HistoryLimit::default())
            .await
            .unwrap();
        assert_eq!(whole.messages.len(), 5);
        assert_eq!(whole.older_cursor, None);
        let json = serde_json::to_value(&whole).unwrap();
        assert!(
            json.as_object().unwrap().contains_key("olderCursor"),
            "the wire name, present when null: {json}"
        );

        // A bad cursor is a bad request; a stale one (its message edited away) a conflict.
        let bad = message_page(s, &user("u1"), &chat_id, Some("nonsense"), two).await;
        assert_eq!(bad.unwrap_err().code(), crate::error::ErrorCode::BadRequest);
        s.store.delete_messages_from(&chat_id, "m2").await.unwrap();
        let stale = message_page(s, &user("u1"), &chat_id, view.older_cursor.as_deref(), two).await;
        assert_eq!(stale.unwrap_err().code(), crate::error::ErrorCode::Conflict);
    }

    #[tokio::test]
    async fn history_requests_check_the_owner_before_the_cursor() {
        let t = services(Settings::with_secret(SECRET));
        let s = &t.services;
        let chat_id = chat_of(s, "u1", "c1", 3).await;
        let limit = HistoryLimit::default();
        let missing = ChatId::parse("c9").unwrap();
        for (chat, cursor) in [
            (&chat_id, None),
            (&chat_id, Some("nonsense")),
            (&missing, None),
            (&missing, Some("nonsense")),
        ] {
            let answer = message_page(s, &user("u2"), chat, cursor, limit).await;
            assert_eq!(
                answer.unwrap_err().code(),
                crate::error::ErrorCode::NotFound,
                "{chat} {cursor:?}"
            );
        }
        assert_eq!(
            get_chat(s, &user("u2"), &chat_id, limit)
                .await
                .unwrap_err()
                .code(),
            crate::error::ErrorCode::NotFound
        );
        let run = Principal {
            user_id: "u1".into(),
            grant: Grant::Run {
                chat_id: chat_id.clone(),
                run_id: "r1".into(),
            },
            issued_at: 0,
        };
        assert_eq!(
            message_page(s, &run, &chat_id, None, limit)
                .await
                .unwrap_err()
                .code(),
            crate::error::ErrorCode::Forbidden
        );
    }

    #[test]
    fn history_limits_are_whole_numbers_in_range() {
        assert_eq!(HistoryLimit::parse(None).unwrap(), HistoryLimit(100));
        assert_eq!(HistoryLimit::parse(Some("1")).unwrap(), HistoryLimit(1));
        assert_eq!(HistoryLimit::parse(Some("500")).unwrap(), HistoryLimit(500));
        for bad in [
            "0",
            "501",
            "-1",
            "",
            "ten",
            "1.5",
            "99999999999999999999999",
        ] {
            assert_eq!(
                HistoryLimit::parse(Some(bad)).unwrap_err().code(),
                crate::error::ErrorCode::BadRequest,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn titles_lose_control_and_bidi_characters() {
        assert_eq!(clean_title("  a\tb\n\u{0}c  "), "a b c");
        assert_eq!(clean_title("evil\u{202E}gnp.exe"), "evilgnp.exe");
        assert_eq!(clean_title("\u{2066}\u{200F}\u{7}"), "");
        assert_eq!(clean_title("caf\u{e9} \u{1F600}"), "caf\u{e9} \u{1F600}");
    }

    #[tokio::test]
    async fn revoking_refuses_every_earlier_token_and_keeps_the_fresh_one() {
        let t = services(Settings::with_secret(SECRET));
        let s = &t.services;
        let first = create_session(s, None, None).await.unwrap();
        let chat_id = ChatId::parse("c1").unwrap();
        let run = s
            .tokens
            .run_token(&first.user_id, &chat_id, "r1", s.now(), s.now() + 60_000);
        let principal = authenticate(s, Some(&first.token)).await.unwrap();
        t.clock.advance(10);
        let fresh = revoke_sessions(s, &principal).await.unwrap();
        assert_eq!(fresh.user_id, first.user_id);
        for old in [&first.token, &run] {
            assert_eq!(
                verify_token(s, old).await.unwrap_err().code(),
                crate::error::ErrorCode::Unauthorized
            );
        }
        assert_eq!(
            authenticate(s, Some(&fresh.token)).await.unwrap().user_id,
            first.user_id
        );
        // A refused token asking for a session gets a new guest, not the revoked user back.
        let renewed = create_session(s, Some(&first.token), None).await.unwrap();
        assert_ne!(renewed.user_id, first.user_id);
        // An access token never turns into a user token.
        let run_now = s.tokens.run_token(
            &first.user_id,
            &chat_id,
            "r1",
            s.now() + 5,
            s.now() + 60_000,
        );
        t.clock.advance(10);
        assert_eq!(
            create_session(s, Some(&run_now), None)
                .await
                .unwrap_err()
                .code(),
            crate::error::ErrorCode::Forbidden
        );
    }
}
