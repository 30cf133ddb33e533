//! Access tokens: who may join which room with which grants, and who may use the admin API.
//!
//! A token is a JWT signed with HS256 by the API secret. Its `iss` is the API key, `sub` the
//! participant's identity, `room` the one room it admits to, `grants` what the participant may do.
//! An admin token (`grants.admin`) authorizes the HTTP admin API (`/api/*`) and names no room.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

/// Clock skew tolerated between the token's minter and this server.
const LEEWAY_SECONDS: u64 = 10;
/// Longest identity, display name or room name, in bytes: they appear in every event and log
/// line.
pub const MAX_NAME_BYTES: usize = 128;

/// What a participant may do in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Grants {
    /// Send tracks.
    pub publish: bool,
    /// Receive other participants' tracks.
    pub subscribe: bool,
    /// Send chat messages (everyone can read them).
    pub chat: bool,
    /// Use the admin HTTP API. Admin tokens need no room.
    pub admin: bool,
}

impl Default for Grants {
    fn default() -> Self {
        Self {
            publish: true,
            subscribe: true,
            chat: true,
            admin: false,
        }
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key that signed it.
    pub iss: String,
    /// The participant's identity, unique in its room.
    pub sub: String,
    /// Display name; the identity when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The room this token admits to (absent for admin tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default)]
    pub grants: Grants,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
}

impl Claims {
    pub fn identity(&self) -> &str {
        &self.sub
    }

    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.sub)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no access token given")]
    Missing,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid yet")]
    NotYetValid,
    #[error("the access token is not valid: {0}")]
    Invalid(String),
    #[error("the access token is not an admin token")]
    NotAdmin,
}

/// Mints and checks tokens with one API key and secret.
#[derive(Clone)]
pub struct Auth {
    api_key: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    max_ttl: Duration,
}

impl Auth {
    pub fn new(config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECONDS;
        validation.set_issuer(&[config.api_key.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_nbf = true;
        Self {
            api_key: config.api_key.clone(),
            encoding: EncodingKey::from_secret(config.api_secret.as_bytes()),
            decoding: DecodingKey::from_secret(config.api_secret.as_bytes()),
            validation,
            max_ttl: config.max_token_ttl,
        }
    }

    /// Refuses to mint a token valid for longer than this server would accept.
    fn check_ttl(&self, ttl: Duration) -> Result<(), AuthError> {
        if ttl > self.max_ttl {
            return Err(AuthError::Invalid(format!(
                "a token valid for {} is longer than auth.max_token_ttl ({})",
                humantime::format_duration(ttl),
                humantime::format_duration(self.max_ttl)
            )));
        }
        Ok(())
    }

    /// Mints a participant token for `room`.
    pub fn participant_token(
        &self,
        room: &str,
        identity: &str,
        name: Option<&str>,
        grants: Grants,
        ttl: Duration,
    ) -> Result<String, AuthError> {
        self.check_ttl(ttl)?;
        let now = unix_now();
        self.sign(&Claims {
            iss: self.api_key.clone(),
            sub: identity.to_string(),
            name: name.map(str::to_string),
            room: Some(room.to_string()),
            grants: Grants {
                admin: false,
                ..grants
            },
            iat: now,
            nbf: None,
            exp: now + ttl.as_secs(),
        })
    }

    /// Mints an admin token for the HTTP API.
    pub fn admin_token(&self, ttl: Duration) -> Result<String, AuthError> {
        self.check_ttl(ttl)?;
        let now = unix_now();
        self.sign(&Claims {
            iss: self.api_key.clone(),
            sub: "admin".into(),
            name: None,
            room: None,
            grants: Grants {
                publish: false,
                subscribe: false,
                chat: false,
                admin: true,
            },
            iat: now,
            nbf: None,
            exp: now + ttl.as_secs(),
        })
    }

    /// Signs arbitrary claims (tests use it for expired or odd tokens).
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Checks a token's signature, issuer, times (expiry, not-before, issued-at, lifetime) and
    /// names.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    AuthError::Invalid("bad signature".into())
                }
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => {
                    AuthError::Invalid("unknown API key".into())
                }
                _ => AuthError::Invalid(e.to_string()),
            })?;
        let claims = data.claims;
        let now = unix_now();
        if claims.iat > now + LEEWAY_SECONDS {
            return Err(AuthError::Invalid("issued in the future (iat)".into()));
        }
        if claims.exp > now + self.max_ttl.as_secs() + LEEWAY_SECONDS {
            return Err(AuthError::Invalid(format!(
                "valid for longer than this server allows ({}, auth.max_token_ttl)",
                humantime::format_duration(self.max_ttl)
            )));
        }
        if claims.sub.is_empty() || claims.sub.len() > MAX_NAME_BYTES {
            return Err(AuthError::Invalid(format!(
                "identity must be 1 to {MAX_NAME_BYTES} bytes"
            )));
        }
        if claims
            .name
            .as_ref()
            .is_some_and(|n| n.len() > MAX_NAME_BYTES)
        {
            return Err(AuthError::Invalid(format!(
                "display name must be at most {MAX_NAME_BYTES} bytes"
            )));
        }
        Ok(claims)
    }

    /// Checks a participant token: valid, and naming a room.
    pub fn verify_participant(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.verify(token)?;
        match claims.room.as_deref() {
            Some(room) if !room.is_empty() && room.len() <= MAX_NAME_BYTES => Ok(claims),
            _ => Err(AuthError::Invalid(format!(
                "token names no room (1 to {MAX_NAME_BYTES} bytes)"
            ))),
        }
    }

    /// Checks an `Authorization: Bearer <token>` header value for the admin grant.
    pub fn verify_admin(&self, authorization: Option<&str>) -> Result<Claims, AuthError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(AuthError::Missing)?;
        let claims = self.verify(token)?;
        if !claims.grants.admin {
            return Err(AuthError::NotAdmin);
        }
        Ok(claims)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: &str) -> Auth {
        Auth::new(&AuthConfig {
            api_key: "key".into(),
            api_secret: secret.into(),
            ..AuthConfig::default()
        })
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn minted_token_verifies_with_its_claims() {
        let a = auth(SECRET);
        let t = a
            .participant_token(
                "r",
                "alice",
                Some("Alice"),
                Grants::default(),
                Duration::from_secs(60),
            )
            .unwrap();
        let c = a.verify_participant(&t).unwrap();
        assert_eq!(c.room.as_deref(), Some("r"));
        assert_eq!(c.display_name(), "Alice");
        assert!(!c.grants.admin);
    }

    #[test]
    fn token_from_another_secret_is_rejected() {
        let t = auth("another-secret-another-secret-xx")
            .participant_token("r", "a", None, Grants::default(), Duration::from_secs(60))
            .unwrap();
        assert!(matches!(
            auth(SECRET).verify(&t),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn expired_token_is_rejected_as_expired() {
        let a = auth(SECRET);
        let t = a
            .sign(&Claims {
                iss: "key".into(),
                sub: "a".into(),
                name: None,
                room: Some("r".into()),
                grants: Grants::default(),
                iat: 1,
                nbf: None,
                exp: unix_now() - 3600,
            })
            .unwrap();
        assert_eq!(a.verify(&t), Err(AuthError::Expired));
    }

    fn claims(iat: u64, nbf: Option<u64>, exp: u64, name: Option<String>) -> Claims {
        Claims {
            iss: "key".into(),
            sub: "a".into(),
            name,
            room: Some("r".into()),
            grants: Grants::default(),
            iat,
            nbf,
            exp,
        }
    }

    #[test]
    fn token_times_are_checked_with_a_small_leeway() {
        let a = auth(SECRET);
        let now = unix_now();
        let verify = |c: Claims| a.verify(&a.sign(&c).unwrap());
        assert!(verify(claims(now, None, now + 60, None)).is_ok());
        // Not before: an hour from now is refused, a few seconds of clock skew are not.
        assert_eq!(
            verify(claims(now, Some(now + 3600), now + 7200, None)),
            Err(AuthError::NotYetValid)
        );
        assert!(verify(claims(now, Some(now + 5), now + 60, None)).is_ok());
        // Issued a year ahead.
        let year = 365 * 24 * 3600;
        assert!(matches!(
            verify(claims(now + year, None, now + year + 60, None)),
            Err(AuthError::Invalid(m)) if m.contains("future")
        ));
        // Valid for longer than auth.max_token_ttl (24 h by default), however it is dated.
        assert!(matches!(
            verify(claims(now, None, now + 2 * 24 * 3600, None)),
            Err(AuthError::Invalid(m)) if m.contains("max_token_ttl")
        ));
        assert!(verify(claims(now - 3600, None, now + 23 * 3600, None)).is_ok());
    }

    #[test]
    fn tokens_longer_than_the_maximum_are_not_minted() {
        let a = auth(SECRET);
        let day = Duration::from_secs(24 * 3600);
        assert!(a.admin_token(day).is_ok());
        assert!(matches!(
            a.participant_token("r", "a", None, Grants::default(), day * 2),
            Err(AuthError::Invalid(m)) if m.contains("max_token_ttl")
        ));
    }

    #[test]
    fn a_long_display_name_is_refused() {
        let a = auth(SECRET);
        let now = unix_now();
        let long = "x".repeat(45_000);
        let t = a.sign(&claims(now, None, now + 60, Some(long))).unwrap();
        assert!(matches!(a.verify(&t), Err(AuthError::Invalid(m)) if m.contains("display name")));
        let t = a
            .participant_token(
                "r",
                "a",
                Some(&"é".repeat(64)),
                Grants::default(),
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(a.verify(&t).is_ok(), "128 bytes is allowed");
    }

    #[test]
    fn participant_token_is_not_admin() {
        let a = auth(SECRET);
        let t = a
            .participant_token("r", "a", None, Grants::default(), Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            a.verify_admin(Some(&format!("Bearer {t}"))),
            Err(AuthError::NotAdmin)
        );
        let admin = a.admin_token(Duration::from_secs(60)).unwrap();
        assert!(a.verify_admin(Some(&format!("Bearer {admin}"))).is_ok());
        assert_eq!(a.verify_admin(None), Err(AuthError::Missing));
    }
}
