//! Passwords: argon2id, at least OWASP's parameters (19 MiB, 2 iterations,
//! 1 lane), always computed off the async runtime's worker threads.

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password worker failed")]
    Join,
    /// Every permit stayed taken for [`PERMIT_WAIT`]: shed the request
    /// rather than queue it without bound.
    #[error("too many password checks in progress")]
    Busy,
}

/// Longest a request waits for a hashing permit.
pub const PERMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Hashes and verifies passwords with bounded concurrency, so a flood of
/// logins cannot take every core or unbounded memory (each hash holds
/// `m_cost` KiB while it runs).
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
    /// A real hash of a random password, verified against when the user does
    /// not exist so unknown emails cost the same time as wrong passwords.
    dummy_hash: Arc<String>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher").finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// OWASP's minimum: m = 19 MiB, t = 2, p = 1.
    pub fn owasp(max_concurrent: usize) -> Result<Self, PasswordError> {
        Self::with_params(Params::default(), max_concurrent)
    }

    /// Cheap parameters for tests only.
    pub fn insecure_fast_for_tests() -> Result<Self, PasswordError> {
        let params = Params::new(64, 1, 1, None).map_err(|e| PasswordError::Hash(e.to_string()))?;
        Self::with_params(params, 4)
    }

    /// Takes every hashing slot until the returned permit is dropped, so a
    /// test can see which requests would wait for one (tests only).
    pub async fn occupy_all_slots_for_tests(
        &self,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, PasswordError> {
        let slots = u32::try_from(self.permits.available_permits()).unwrap_or(u32::MAX);
        self.permits
            .clone()
            .acquire_many_owned(slots)
            .await
            .map_err(|_| PasswordError::Join)
    }

    fn with_params(params: Params, max_concurrent: usize) -> Result<Self, PasswordError> {
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let dummy = hex_random();
        let dummy_hash = argon
            .hash_password(dummy.as_bytes())
            .map_err(|e| PasswordError::Hash(e.to_string()))?
            .to_string();
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            dummy_hash: Arc::new(dummy_hash),
        })
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, PasswordError> {
        match tokio::time::timeout(PERMIT_WAIT, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(PasswordError::Join),
            Err(_) => Err(PasswordError::Busy),
        }
    }

    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let _permit = self.permit().await?;
        let argon = self.argon();
        tokio::task::spawn_blocking(move || {
            argon
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| PasswordError::Hash(e.to_string()))
        })
        .await
        .map_err(|_| PasswordError::Join)?
    }

    /// True when `password` matches `stored`. With `stored = None` (unknown
    /// user) it verifies against a dummy hash and returns false, taking the
    /// same time.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let _permit = self.permit().await?;
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.as_str().to_owned());
        let argon = self.argon();
        let matched = tokio::task::spawn_blocking(move || {
            argon
                .verify_password(password.as_bytes(), stored.as_str())
                .is_ok()
        })
        .await
        .map_err(|_| PasswordError::Join)?;
        Ok(known && matched)
    }
}

fn hex_random() -> String {
    shared::crypto::random_bytes::<16>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owasp_defaults_are_at_least_the_minimum() {
        let p = Params::default();
        assert!(p.m_cost() >= 19 * 1024);
        assert!(p.t_cost() >= 2);
        assert!(p.p_cost() >= 1);
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let h = PasswordHasher::insecure_fast_for_tests().expect("hasher");
        let stored = h.hash("correct horse battery".into()).await.expect("hash");
        assert!(stored.starts_with("$argon2id$"));
        assert!(
            h.verify("correct horse battery".into(), Some(stored.clone()))
                .await
                .expect("v")
        );
        assert!(!h.verify("wrong".into(), Some(stored)).await.expect("v"));
        assert!(!h.verify("anything".into(), None).await.expect("v"));
    }
}
