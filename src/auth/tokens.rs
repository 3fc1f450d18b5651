//! JWT access tokens (HS256).
//!
//! Claims: `sub` (user id), `jti` (login session id), `iat`, `exp`. A valid signature and
//! `exp` are necessary, not sufficient: [`super::service::AuthService::authenticate`] also
//! checks that the session is still active, which is what makes logout immediate.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::domain::{SessionId, UserId};

/// The claims we sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: UserId,
    pub jti: SessionId,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys([redacted])")
    }
}

impl TokenKeys {
    pub fn new(secret: &Secret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        // Our own clocks issue and check tokens; a small leeway covers skew between nodes.
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
        }
    }

    /// Signs claims into a compact token.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| anyhow::anyhow!("cannot sign token: {e}"))
    }

    /// Verifies signature, algorithm and expiry; `None` for any invalid token.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        if token.len() > 4096 {
            return None;
        }
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok().map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &str) -> TokenKeys {
        TokenKeys::new(&Secret::new(s.repeat(32)))
    }

    fn claims(exp_offset: i64) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims { sub: UserId::new(), jti: SessionId::new(), iat: now, exp: now + exp_offset }
    }

    #[test]
    fn round_trip() {
        let k = keys("a");
        let c = claims(60);
        let t = k.sign(&c).expect("sign");
        assert_eq!(k.verify(&t), Some(c));
    }

    #[test]
    fn rejects_other_key_expired_tampered_and_alg_none() {
        let k = keys("a");
        let t = keys("b").sign(&claims(60)).expect("sign");
        assert_eq!(k.verify(&t), None, "signed with another key");
        let t = k.sign(&claims(-60)).expect("sign");
        assert_eq!(k.verify(&t), None, "expired");
        let t = k.sign(&claims(60)).expect("sign");
        let mut parts: Vec<&str> = t.split('.').collect();
        let other = k.sign(&claims(600)).expect("sign");
        let other_payload = other.split('.').nth(1).expect("payload");
        parts[1] = other_payload;
        assert_eq!(k.verify(&parts.join(".")), None, "payload swapped");
        // {"alg":"none","typ":"JWT"}
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", t.split('.').nth(1).expect("payload"));
        assert_eq!(k.verify(&none), None, "alg none");
        assert_eq!(k.verify("garbage"), None);
        assert_eq!(k.verify(""), None);
    }
}
