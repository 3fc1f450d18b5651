//! Password hashing with argon2id.
//!
//! Parameters come from the configuration (default: 19 MiB, 2 passes, 1 lane, the OWASP
//! recommendation for argon2id). Hashing is CPU-bound and memory-hungry, so it runs on
//! the blocking pool behind a semaphore: a login flood queues instead of exhausting
//! memory or starving the async workers.

use std::sync::Arc;

use anyhow::Context;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::config::AuthConfig;
use crate::domain::Password;

#[derive(Clone, Debug)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified against when the username does not exist,
    /// so that a login for an unknown user costs the same time as a wrong password.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub fn new(cfg: &AuthConfig) -> anyhow::Result<Self> {
        let params = Params::new(cfg.argon2_memory_kib, cfg.argon2_iterations, cfg.argon2_parallelism, None)
            .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
        let permits = match cfg.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        };
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let random: [u8; 32] = rand::random();
        let dummy_hash = argon.hash_password(&random).map_err(|e| anyhow::anyhow!("argon2: {e}"))?.to_string();
        Ok(Self { params, permits: Arc::new(Semaphore::new(permits)), dummy_hash: dummy_hash.into() })
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Hashes a password into a PHC string (salt included).
    pub async fn hash(&self, password: &Password) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await.context("hasher closed")?;
        let argon = self.argon();
        let pw = password.expose().to_owned();
        tokio::task::spawn_blocking(move || {
            argon.hash_password(pw.as_bytes()).map(|h| h.to_string()).map_err(|e| anyhow::anyhow!("argon2: {e}"))
        })
        .await
        .context("hash task failed")?
    }

    /// True if `password` matches `hash`. With `hash = None` (unknown user) it does the
    /// same work against a dummy hash and returns false.
    pub async fn verify(&self, password: &Password, hash: Option<&str>) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await.context("hasher closed")?;
        let known = hash.is_some();
        let hash = hash.map(str::to_owned).unwrap_or_else(|| self.dummy_hash.to_string());
        let pw = password.expose().to_owned();
        let argon = self.argon();
        let ok = tokio::task::spawn_blocking(move || argon.verify_password(pw.as_bytes(), hash.as_str()).is_ok())
            .await
            .context("verify task failed")?;
        Ok(known && ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> AuthConfig {
        AuthConfig { argon2_memory_kib: 8192, argon2_iterations: 1, ..AuthConfig::default() }
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let h = PasswordHasher::new(&fast()).expect("hasher");
        let pw = Password::parse("correct horse".into()).expect("pw");
        let hash = h.hash(&pw).await.expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"));
        assert!(h.verify(&pw, Some(&hash)).await.expect("verify"));
        let wrong = Password::parse("wrong horse".into()).expect("pw");
        assert!(!h.verify(&wrong, Some(&hash)).await.expect("verify"));
        assert!(!h.verify(&pw, None).await.expect("verify"));
        assert!(!h.verify(&pw, Some("not a phc string")).await.expect("verify"));
    }
}
