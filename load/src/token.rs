//! Access tokens for load participants, minted here rather than with the server's `auth` module
//! (this crate must not depend on the server's package).
//!
//! The claims are exactly those the server verifies (src/auth.rs, docs/protocol.md): an HS256 JWT
//! signed with the API secret, `iss` the API key, `sub` the identity, `room`, `grants`, `iat` and
//! `exp` in seconds since the Unix epoch. tests/load.rs checks the server accepts them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// What a participant may do in its room (the server's `auth::Grants`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Grants {
    pub publish: bool,
    pub subscribe: bool,
    pub chat: bool,
    /// Always false here: the load generator never uses the admin API.
    pub admin: bool,
}

/// The claims of a participant token (the server's `auth::Claims`).
#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    room: &'a str,
    grants: Grants,
    iat: u64,
    exp: u64,
}

/// Mints participant tokens with one API key and secret.
pub struct Minter {
    api_key: String,
    key: EncodingKey,
}

impl Minter {
    pub fn new(api_key: &str, api_secret: &str) -> Self {
        Self {
            api_key: api_key.to_string(),
            key: EncodingKey::from_secret(api_secret.as_bytes()),
        }
    }

    /// A token admitting `identity` to `room` with `grants` (never admin), valid for `ttl`.
    pub fn participant_token(
        &self,
        room: &str,
        identity: &str,
        grants: Grants,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            iss: &self.api_key,
            sub: identity,
            room,
            grants: Grants {
                admin: false,
                ..grants
            },
            iat: now,
            exp: now + ttl.as_secs(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.key,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn token_carries_the_claims_the_server_checks() {
        let grants = Grants {
            publish: false,
            subscribe: true,
            chat: false,
            admin: true,
        };
        let token = Minter::new("key", "secret")
            .participant_token("room-1", "load-sub-0", grants, Duration::from_secs(600))
            .expect("token");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&["key"]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &DecodingKey::from_secret(b"secret"),
            &validation,
        )
        .expect("valid HS256 token");
        let c = data.claims;
        assert_eq!(c["iss"], "key");
        assert_eq!(c["sub"], "load-sub-0");
        assert_eq!(c["room"], "room-1");
        assert_eq!(
            c["grants"],
            serde_json::json!({"publish":false,"subscribe":true,"chat":false,"admin":false}),
            "never an admin token"
        );
        let (iat, exp) = (
            c["iat"].as_u64().expect("iat"),
            c["exp"].as_u64().expect("exp"),
        );
        assert_eq!(exp - iat, 600);
        assert!(jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &DecodingKey::from_secret(b"another secret"),
            &validation
        )
        .is_err());
    }
}
