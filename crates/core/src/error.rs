//! Errors of the core, one enum per concern, and the error codes clients see.
//!
//! Ports return their own error types (`StoreError`, `QueueError`, `PostError`, `ModelError`)
//! so an adapter says precisely what went wrong; the engine maps them to [`ChatError`], which
//! the edges (WebSocket frames, HTTP responses) turn into an [`ErrorCode`] and a status.

use serde::{Deserialize, Serialize};

/// The error codes of the wire protocol (DESIGN §5) and the HTTP API (§8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    Conflict,
    RateLimited,
    Internal,
}

impl ErrorCode {
    /// The HTTP status the HTTP API answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }
}

/// What a request failed with, as the client is told.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// Also answers for someone else's chat, so that existence is never revealed.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Conflict(String),
    /// A per-user or per-address limit refused the request; nothing of it was stored.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_ms: u64,
    },
    /// A backend failed; `retryable` says whether trying again may help.
    #[error("{message}")]
    Internal { message: String, retryable: bool },
}

impl ChatError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ChatError::BadRequest(_) => ErrorCode::BadRequest,
            ChatError::Unauthorized(_) => ErrorCode::Unauthorized,
            ChatError::Forbidden(_) => ErrorCode::Forbidden,
            ChatError::NotFound(_) => ErrorCode::NotFound,
            ChatError::TooLarge(_) => ErrorCode::TooLarge,
            ChatError::Conflict(_) => ErrorCode::Conflict,
            ChatError::RateLimited { .. } => ErrorCode::RateLimited,
            ChatError::Internal { .. } => ErrorCode::Internal,
        }
    }

    pub fn chat_not_found() -> Self {
        ChatError::NotFound("chat not found".into())
    }

    /// When to try again, for `rate_limited` (the only code that carries it).
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            ChatError::RateLimited { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// Whether the same request may succeed if tried again (used to tell SQS and Lambda).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ChatError::Internal {
                retryable: true,
                ..
            }
        )
    }

    /// The message a client sees. Internal details stay in the logs.
    pub fn client_message(&self) -> String {
        match self {
            ChatError::Internal { .. } => "internal error, please retry".into(),
            other => other.to_string(),
        }
    }
}

/// Errors of [`crate::ports::ChatStore`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A conditional write found the item in another state than expected (already exists,
    /// or a different version). Nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The item to change does not exist (or has expired).
    #[error("not found: {0}")]
    NotFound(String),
    /// A paging cursor the store did not make.
    #[error("invalid cursor")]
    BadCursor,
    /// The item would exceed a size limit of the backend.
    #[error("too large: {0}")]
    TooLarge(String),
    /// Throttled or unreachable: trying again later may succeed.
    #[error("transient store error: {0}")]
    Transient(String),
    /// Anything else; retrying will not help.
    #[error("store error: {0}")]
    Backend(String),
}

/// Errors of [`crate::ports::TurnQueue`] and [`crate::ports::TurnQueueConsumer`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("transient queue error: {0}")]
    Transient(String),
    #[error("queue error: {0}")]
    Backend(String),
}

/// Errors of [`crate::ports::Connections`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum PostError {
    /// The connection is closed for good (API Gateway's 410 GoneException).
    #[error("connection gone")]
    Gone,
    #[error("frame too large for the connection")]
    TooLarge,
    #[error("transient post error: {0}")]
    Transient(String),
    #[error("post error: {0}")]
    Backend(String),
}

/// Errors of [`crate::ports::LanguageModel`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    /// The model could not be reached or refused the request before streaming anything.
    #[error("model unavailable: {0}")]
    Unavailable(String),
    /// The model failed after it had started streaming.
    #[error("model stream failed: {0}")]
    Stream(String),
    #[error("model rejected the request: {0}")]
    Rejected(String),
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ChatError::Conflict(m),
            StoreError::NotFound(m) => ChatError::NotFound(m),
            StoreError::TooLarge(m) => ChatError::TooLarge(m),
            StoreError::BadCursor => ChatError::BadRequest("invalid cursor".into()),
            StoreError::Transient(m) => ChatError::Internal {
                message: format!("store: {m}"),
                retryable: true,
            },
            StoreError::Backend(m) => ChatError::Internal {
                message: format!("store: {m}"),
                retryable: false,
            },
        }
    }
}

impl From<QueueError> for ChatError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Transient(m) => ChatError::Internal {
                message: format!("queue: {m}"),
                retryable: true,
            },
            QueueError::Backend(m) => ChatError::Internal {
                message: format!("queue: {m}"),
                retryable: false,
            },
        }
    }
}
