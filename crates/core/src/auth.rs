//! Tokens (HS256, DESIGN §7): a user token (`sub` = owner), and a run-scoped access token that
//! allows `resume`, `stop`, `unsubscribe` and `ping` on one chat's run.
//!
//! Every token names its issuer (`iss` = `chatrun`) and its kind in its audience (`aud`):
//! `chatrun-user` carries neither `chat` nor `run`, `chatrun-run` carries both; anything else
//! (a token with only one of them, another issuer's token signed with a leaked secret) is
//! refused rather than read as a user token. Each token has a `jti` and a `ver`, its issue time
//! in milliseconds: a user's tokens can be revoked all at once by recording a floor (see
//! [`RevocationFloor`]); tokens issued before it are refused.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::{ChatId, Connection, Grant, Millis};
use crate::error::ChatError;

/// The `iss` of every chatrun token.
pub const ISSUER: &str = "chatrun";
/// The `aud` of a user token.
pub const USER_AUDIENCE: &str = "chatrun-user";
/// The `aud` of a run-scoped access token.
pub const RUN_AUDIENCE: &str = "chatrun-run";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    aud: String,
    jti: String,
    /// Seconds since the epoch.
    exp: i64,
    iat: i64,
    /// Issue time in milliseconds: compared with the user's revocation floor.
    ver: i64,
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
    /// When the token was issued (epoch milliseconds), for the revocation check.
    pub issued_at: Millis,
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

/// What every refused token is told: no hint of which check failed.
fn refused() -> ChatError {
    ChatError::Unauthorized("invalid or expired token".into())
}

/// jsonwebtoken's cryptography for HS256 alone, on `hmac` and `sha2` (the versions the AWS SDK's
/// request signing links anyway). Its `rust_crypto` provider would link RSA, ECDSA and EdDSA
/// into every binary for algorithms chatrun never signs nor accepts (BENCHMARKS.md, "Lambda
/// bootstraps and cold init"). Installed as jsonwebtoken's process provider before the first
/// token is signed or read: by [`TokenIssuer::new`], and by test helpers that sign themselves.
pub(crate) mod hs256 {
    use hmac::{Hmac, KeyInit, Mac};
    use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
    use jsonwebtoken::errors::{Error, ErrorKind};
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
    use sha2::Sha256;

    struct Hs256(Hmac<Sha256>);

    impl Hs256 {
        fn new(secret: &[u8]) -> Result<Self, Error> {
            Hmac::new_from_slice(secret)
                .map(Hs256)
                .map_err(|_| ErrorKind::InvalidKeyFormat.into())
        }
    }

    impl signature::Signer<Vec<u8>> for Hs256 {
        fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
            let mut mac = self.0.clone();
            mac.update(message);
            Ok(mac.finalize().into_bytes().to_vec())
        }
    }

    impl signature::Verifier<Vec<u8>> for Hs256 {
        /// In constant time (`Mac::verify_slice`).
        fn verify(&self, message: &[u8], tag: &Vec<u8>) -> Result<(), signature::Error> {
            let mut mac = self.0.clone();
            mac.update(message);
            mac.verify_slice(tag).map_err(|_| signature::Error::new())
        }
    }

    impl JwtSigner for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    impl JwtVerifier for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
        match algorithm {
            Algorithm::HS256 => Ok(Box::new(Hs256::new(key.try_get_hmac_secret()?)?)),
            _ => Err(ErrorKind::InvalidAlgorithm.into()),
        }
    }

    fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
        match algorithm {
            Algorithm::HS256 => Ok(Box::new(Hs256::new(key.try_get_hmac_secret()?)?)),
            _ => Err(ErrorKind::InvalidAlgorithm.into()),
        }
    }

    static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory: signer,
        verifier_factory: verifier,
        jwk_utils: JwkUtils::new_unimplemented(),
    };

    /// Idempotent: later calls find it installed.
    pub(crate) fn install() {
        let _ = PROVIDER.install_default();
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
    /// An issuer with this HS256 secret. Start-up paths check the secret's length with
    /// [`crate::config::check_token_secret`] first.
    pub fn new(secret: &str) -> Self {
        hs256::install();
        TokenIssuer {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of serialisable claims cannot fail")
    }

    fn claims(user_id: &str, audience: &str, now: Millis, exp: Millis) -> Claims {
        Claims {
            sub: user_id.into(),
            iss: ISSUER.into(),
            aud: audience.into(),
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now.div_euclid(1000),
            exp: exp.div_euclid(1000),
            ver: now,
            chat: None,
            run: None,
        }
    }

    /// A user token valid for `ttl` from `now`.
    pub fn user_token(&self, user_id: &str, now: Millis, ttl: Duration) -> String {
        let exp = now + ttl.as_millis() as i64;
        self.sign(&Self::claims(user_id, USER_AUDIENCE, now, exp))
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
        let mut claims = Self::claims(user_id, RUN_AUDIENCE, now, expires_at);
        claims.chat = Some(chat_id.as_str().into());
        claims.run = Some(run_id.into());
        self.sign(&claims)
    }

    /// Checks signature, issuer, audience, shape and expiry at `now` (not revocation: that needs
    /// the store, see `engine::api::authenticate`).
    /// # Errors
    /// `Unauthorized` for a malformed, forged, foreign, half-scoped or expired token.
    pub fn verify(&self, token: &str, now: Millis) -> Result<Principal, ChatError> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked against the injected clock below, not the system clock.
        validation.validate_exp = false;
        validation.required_spec_claims = ["sub", "iss", "aud", "exp"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[USER_AUDIENCE, RUN_AUDIENCE]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| refused())?
            .claims;
        if claims.exp.saturating_mul(1000) <= now || claims.sub.is_empty() {
            return Err(refused());
        }
        let grant = match (claims.aud.as_str(), claims.chat, claims.run) {
            (USER_AUDIENCE, None, None) => Grant::User,
            (RUN_AUDIENCE, Some(chat), Some(run)) if !run.is_empty() => Grant::Run {
                chat_id: ChatId::parse(chat).map_err(|_| refused())?,
                run_id: run,
            },
            _ => return Err(refused()),
        };
        Ok(Principal {
            user_id: claims.sub,
            grant,
            issued_at: claims.ver,
        })
    }
}

/// A user's revocation floor: every token of the user issued before `not_before` is refused.
///
/// It is kept through the `ChatStore` port as a record in the connection table under a key no
/// API Gateway connection id can take (`~revoked~{userId}`; connection ids are base64), so
/// that every backend keeps it without a new port method. It expires once every token it
/// refuses has expired anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationFloor {
    pub user_id: String,
    pub not_before: Millis,
    pub expires_at: Millis,
}

impl RevocationFloor {
    /// The store key of a user's floor.
    pub fn key(user_id: &str) -> String {
        format!("~revoked~{user_id}")
    }

    /// The record the store keeps.
    pub fn to_record(&self) -> Connection {
        Connection {
            connection_id: Self::key(&self.user_id),
            owner_id: self.user_id.clone(),
            grant: Grant::User,
            connected_at: self.not_before,
            expires_at: self.expires_at,
        }
    }

    /// Reads a record written by [`Self::to_record`].
    pub fn from_record(record: &Connection) -> Option<Self> {
        (record.connection_id == Self::key(&record.owner_id)).then(|| RevocationFloor {
            user_id: record.owner_id.clone(),
            not_before: record.connected_at,
            expires_at: record.expires_at,
        })
    }

    /// Whether a token of this user issued at `issued_at` is refused.
    pub fn refuses(&self, issued_at: Millis) -> bool {
        issued_at < self.not_before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-secret";

    #[derive(Serialize)]
    struct Raw<'a> {
        sub: &'a str,
        iss: &'a str,
        aud: &'a str,
        exp: i64,
        iat: i64,
        ver: i64,
        jti: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        run: Option<&'a str>,
    }

    fn raw(claims: &Raw) -> String {
        super::hs256::install();
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn tokens_verify_expire_and_reject_forgeries() {
        let issuer = TokenIssuer::new(SECRET);
        let now = 1_700_000_000_000;
        let user = issuer.user_token("u1", now, Duration::from_secs(60));
        let p = issuer.verify(&user, now).unwrap();
        assert_eq!((p.user_id.as_str(), &p.grant), ("u1", &Grant::User));
        assert_eq!(p.issued_at, now);
        assert!(issuer.verify(&user, now + 61_000).is_err(), "expired");
        let other = TokenIssuer::new("another-secret-0123456789-0123456789");
        assert!(other.verify(&user, now).is_err(), "forged");
        assert!(issuer.verify("not.a.token", now).is_err());
        assert_ne!(
            user,
            issuer.user_token("u1", now, Duration::from_secs(60)),
            "each token has its own jti"
        );

        let chat = ChatId::parse("c1").unwrap();
        let run = issuer.run_token("u1", &chat, "r1", now, now + 10_000);
        let p = issuer.verify(&run, now).unwrap();
        assert!(p.may_access(&chat));
        assert!(!p.may_access(&ChatId::parse("c2").unwrap()));
        assert_eq!(
            p.grant,
            Grant::Run {
                chat_id: chat,
                run_id: "r1".into()
            }
        );
    }

    #[test]
    fn half_scoped_foreign_and_mislabelled_tokens_are_refused() {
        let issuer = TokenIssuer::new(SECRET);
        let now = 1_700_000_000_000;
        let base = Raw {
            sub: "u1",
            iss: ISSUER,
            aud: USER_AUDIENCE,
            exp: now / 1000 + 60,
            iat: now / 1000,
            ver: now,
            jti: "j",
            chat: None,
            run: None,
        };
        assert!(
            issuer.verify(&raw(&base), now).is_ok(),
            "the control passes"
        );
        let cases = [
            Raw {
                chat: Some("c1"),
                ..base
            },
            Raw {
                run: Some("r1"),
                ..base
            },
            Raw {
                aud: RUN_AUDIENCE,
                chat: Some("c1"),
                ..base
            },
            Raw {
                aud: RUN_AUDIENCE,
                run: Some("r1"),
                ..base
            },
            Raw {
                aud: RUN_AUDIENCE,
                ..base
            },
            Raw {
                chat: Some("c1"),
                run: Some("r1"),
                ..base
            },
            Raw {
                aud: RUN_AUDIENCE,
                chat: Some("not a chat id"),
                run: Some("r1"),
                ..base
            },
            Raw {
                iss: "someone-else",
                ..base
            },
            Raw {
                aud: "another-app",
                ..base
            },
            Raw { sub: "", ..base },
        ];
        for (i, case) in cases.iter().enumerate() {
            let error = issuer.verify(&raw(case), now).unwrap_err();
            assert_eq!(
                error.code(),
                crate::error::ErrorCode::Unauthorized,
                "case {i}"
            );
        }
        // A token of the old shape (no iss, no aud) is refused too.
        #[derive(Serialize)]
        struct Old {
            sub: &'static str,
            exp: i64,
            iat: i64,
        }
        super::hs256::install();
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Old {
                sub: "u1",
                exp: now / 1000 + 60,
                iat: now / 1000,
            },
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(issuer.verify(&old, now).is_err());
    }

    #[test]
    fn a_floor_refuses_older_tokens_and_round_trips() {
        let floor = RevocationFloor {
            user_id: "u1".into(),
            not_before: 1_000,
            expires_at: 9_000,
        };
        assert!(floor.refuses(999));
        assert!(!floor.refuses(1_000));
        let record = floor.to_record();
        assert_eq!(RevocationFloor::from_record(&record), Some(floor));
        let mut other = record.clone();
        other.connection_id = "Ab12Cd34Ef56Gh78".into();
        assert_eq!(RevocationFloor::from_record(&other), None);
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(crate::config::check_token_secret(&"x".repeat(31)).is_err());
        assert!(crate::config::check_token_secret(&"x".repeat(32)).is_ok());
    }
}

/// Token shapes chatrun never issues, for the authorization tests (feature `test-util`).
#[cfg(any(test, feature = "test-util"))]
pub mod forge {
    use super::*;

    /// A token with exactly these claims, signed with `secret` (HS256).
    pub fn signed(secret: &str, claims: &serde_json::Value) -> String {
        super::hs256::install();
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("HS256 signing of JSON claims cannot fail")
    }

    /// A token with these claims and `"alg": "none"`, unsigned.
    pub fn unsigned(claims: &serde_json::Value) -> String {
        format!(
            "{}.{}.",
            base64url(br#"{"alg":"none","typ":"JWT"}"#),
            base64url(claims.to_string().as_bytes())
        )
    }

    fn base64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        let now = 1_700_000_000_000i64;
        let claims = serde_json::json!({"sub": "u1", "iss": ISSUER, "aud": USER_AUDIENCE,
            "exp": now / 1000 + 60, "iat": now / 1000, "ver": now, "jti": "j"});
        let issuer = TokenIssuer::new("0123456789abcdef0123456789abcdef");
        assert!(
            issuer
                .verify(&signed("0123456789abcdef0123456789abcdef", &claims), now)
                .is_ok()
        );
        assert!(issuer.verify(&unsigned(&claims), now).is_err());
        assert_eq!(base64url(b"hi?"), "aGk_");
        assert_eq!(base64url(b"h"), "aA");
    }
}
