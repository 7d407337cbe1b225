//! What every handler can reach.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use shared::auth::JwtKeys;

use crate::login_throttle::LoginThrottle;
use shared::crypto::SecretBox;
use shared::nats::Subjects;
use shared::password::PasswordHasher;
use sqlx::PgPool;

/// Settings handlers read at request time.
#[derive(Debug, Clone)]
pub struct Settings {
    pub is_production: bool,
    pub dev_bootstrap_key: Option<String>,
    pub auth_bootstrap_key: Option<String>,
    pub jwt_ttl: Duration,
    pub automation: crate::automation::AutomationSettings,
    /// `RECORDINGS_EXPOSE_URL`: return recording media URLs to clients.
    pub recordings_expose_url: bool,
}

#[derive(Clone, FromRef)]
pub struct AppState {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub subjects: Subjects,
    pub jwt: Arc<JwtKeys>,
    pub secrets: SecretBox,
    /// Signs what the api sends the automation-worker.
    pub request_signer: shared::automation::RequestSigner,
    pub passwords: PasswordHasher,
    pub settings: Arc<Settings>,
    pub login_throttle: Arc<LoginThrottle>,
}
