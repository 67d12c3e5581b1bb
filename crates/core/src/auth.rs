//! Tokens (HS256, DESIGN §7): a user token (`sub` = owner), and a run-scoped access token that
//! allows `resume`, `stop`, `unsubscribe` and `ping` on one chat's run.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::{ChatId, Grant, Millis};
use crate::error::ChatError;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// Seconds since the epoch.
    exp: i64,
    iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chat: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<String>,
}

/// Who a valid token speaks for, and what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub grant: Grant,
}

impl Principal {
    /// Whether this principal may act on the chat (ownership is checked separately).
    pub fn may_access(&self, chat_id: &ChatId) -> bool {
        match &self.grant {
            Grant::User => true,
            Grant::Run {
                chat_id: scoped, ..
            } => scoped == chat_id,
        }
    }
}

/// Issues and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenIssuer(..)")
    }
}

impl TokenIssuer {
    pub fn new(secret: &str) -> Self {
        TokenIssuer {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of serialisable claims cannot fail")
    }

    /// A user token valid for `ttl` from `now`.
    pub fn user_token(&self, user_id: &str, now: Millis, ttl: Duration) -> String {
        self.sign(&Claims {
            sub: user_id.into(),
            iat: now / 1000,
            exp: now / 1000 + ttl.as_secs() as i64,
            chat: None,
            run: None,
        })
    }

    /// An access token for one run of one chat, valid until `expires_at`.
    pub fn run_token(
        &self,
        user_id: &str,
        chat_id: &ChatId,
        run_id: &str,
        now: Millis,
        expires_at: Millis,
    ) -> String {
        self.sign(&Claims {
            sub: user_id.into(),
            iat: now / 1000,
            exp: expires_at / 1000,
            chat: Some(chat_id.as_str().into()),
            run: Some(run_id.into()),
        })
    }

    /// Checks signature and expiry at `now`.
    /// # Errors
    /// `Unauthorized` for a malformed, forged or expired token.
    pub fn verify(&self, token: &str, now: Millis) -> Result<Principal, ChatError> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked against the injected clock below, not the system clock.
        validation.validate_exp = false;
        validation.required_spec_claims = ["sub".to_string()].into_iter().collect();
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| ChatError::Unauthorized(format!("invalid token: {e}")))?;
        let claims = data.claims;
        if claims.exp * 1000 <= now {
            return Err(ChatError::Unauthorized("token expired".into()));
        }
        let grant = match (claims.chat, claims.run) {
            (Some(chat), Some(run)) => Grant::Run {
                chat_id: ChatId::parse(chat)
                    .map_err(|_| ChatError::Unauthorized("invalid token".into()))?,
                run_id: run,
            },
            _ => Grant::User,
        };
        Ok(Principal {
            user_id: claims.sub,
            grant,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_expire_and_reject_forgeries() {
        let issuer = TokenIssuer::new("0123456789abcdef-secret");
        let now = 1_700_000_000_000;
        let user = issuer.user_token("u1", now, Duration::from_secs(60));
        let p = issuer.verify(&user, now).unwrap();
        assert_eq!((p.user_id.as_str(), &p.grant), ("u1", &Grant::User));
        assert!(issuer.verify(&user, now + 61_000).is_err(), "expired");
        let other = TokenIssuer::new("another-secret-0123456789");
        assert!(other.verify(&user, now).is_err(), "forged");
        assert!(issuer.verify("not.a.token", now).is_err());

        let chat = ChatId::parse("c1").unwrap();
        let run = issuer.run_token("u1", &chat, "r1", now, now + 10_000);
        let p = issuer.verify(&run, now).unwrap();
        assert!(p.may_access(&chat));
        assert!(!p.may_access(&ChatId::parse("c2").unwrap()));
    }
}
