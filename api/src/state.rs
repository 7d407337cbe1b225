//! What every handler can reach.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use shared::auth::JwtKeys;
use shared::config::redacted;

use crate::auth::login_throttle::LoginThrottle;
use crate::auth::password::PasswordHasher;
use shared::crypto::SecretBox;
use shared::nats::Subjects;
use sqlx::PgPool;

/// Settings handlers read at request time. Debug by hand: the bootstrap keys
/// must never reach a log line.
#[derive(Clone)]
pub struct Settings {
    pub is_production: bool,
    pub dev_bootstrap_key: Option<String>,
    pub auth_bootstrap_key: Option<String>,
    pub jwt_ttl: Duration,
    pub automation: crate::automation::AutomationSettings,
    /// `RECORDINGS_EXPOSE_URL`: return recording media URLs to clients.
    pub recordings_expose_url: bool,
    /// `TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub size_caps: crate::http::size_caps::SizeCaps,
    pub webhooks: crate::management::webhook_endpoints::WebhookSettings,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            is_production,
            dev_bootstrap_key,
            auth_bootstrap_key,
            jwt_ttl,
            automation,
            recordings_expose_url,
            trusted_proxies,
            size_caps,
            webhooks,
        } = self;
        f.debug_struct("Settings")
            .field("is_production", is_production)
            .field("dev_bootstrap_key", &redacted(dev_bootstrap_key))
            .field("auth_bootstrap_key", &redacted(auth_bootstrap_key))
            .field("jwt_ttl", jwt_ttl)
            .field("automation", automation)
            .field("recordings_expose_url", recordings_expose_url)
            .field("trusted_proxies", trusted_proxies)
            .field("size_caps", size_caps)
            .field("webhooks", webhooks)
            .finish()
    }
}

#[derive(Clone, FromRef)]
pub struct AppState {
    pub pool: PgPool,
    /// The client surface's own pool and per-tenant share of it.
    pub client_reads: crate::client::reads::ClientReads,
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
