//! Wiring: settings -> state -> router -> server, and `api migrate`.

use std::sync::Arc;

use crate::auth::password::PasswordHasher;
use anyhow::Context;
use axum::routing::get;
use axum::{Json, Router};
use shared::auth::JwtKeys;
use shared::crypto::SecretBox;
use shared::http::{HttpOptions, Readiness};
use shared::nats::Subjects;
use sqlx::PgPool;
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::auth::login_throttle::{LoginThrottle, ThrottleLimits};
use crate::config::{Command, Config};
use crate::http::openapi::{ApiDoc, CommonResponses};
use crate::state::{AppState, Settings};

/// The binary's entry point after argument parsing.
pub async fn main(config: Config) -> anyhow::Result<()> {
    shared::install_crypto_providers();
    shared::telemetry::init_logging(config.common.log_format);
    // Validate secrets before touching anything, so a bad production config
    // stops with a clear message naming every problem.
    config.check_production()?;
    let jwt_secret = config.auth.secret(&config.common)?;
    let key = config.encryption.key(&config.common)?;

    shared::db::create_database_if_missing(&config.db.database_url)
        .await
        .context("cannot reach Postgres to create the database")?;
    let pool = shared::db::connect_lazy(&config.db, shared::db::Plans::Default)
        .context("bad DATABASE_URL")?;
    shared::db::migrate(&pool)
        .await
        .context("migrations failed")?;
    tracing::info!("migrations applied");
    // Before anything is served: the worker opens only the current binding.
    crate::reseal::reseal_legacy(&pool, &SecretBox::new(&key))
        .await
        .context("resealing legacy secrets failed")?;
    if matches!(config.command, Some(Command::Migrate)) {
        return Ok(());
    }

    let nats = shared::nats::connect(&config.nats, "api").await?;
    let state = build_state(&config, pool, nats, &jwt_secret, &key)?;
    let metrics = shared::telemetry::install_metrics();
    let app = router(state, metrics, &config);
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    tracing::info!(addr = %config.listen_addr, "api listening");
    shared::http::serve(listener, app, shared::shutdown::signal()).await?;
    tracing::info!("api stopped");
    Ok(())
}

pub fn build_state(
    config: &Config,
    pool: PgPool,
    nats: async_nats::Client,
    jwt_secret: &[u8],
    key: &[u8; 32],
) -> anyhow::Result<AppState> {
    let client_reads = crate::client::reads::ClientReads::open(
        &pool,
        crate::client::reads::ClientReadLimits {
            max_connections: config.client_read_max_connections,
            statement_timeout: config.client_read_statement_timeout,
            per_tenant: config.client_reads_per_tenant,
        },
    );
    Ok(AppState {
        pool,
        client_reads,
        nats,
        subjects: Subjects::new(&config.nats.nats_subject_prefix),
        jwt: Arc::new(JwtKeys::new(
            jwt_secret,
            &config.auth.jwt_issuer,
            &config.auth.jwt_audience,
        )),
        secrets: SecretBox::new(key),
        request_signer: shared::automation::RequestSigner::new(key),
        passwords: PasswordHasher::owasp(config.password_hash_concurrency)?,
        settings: Arc::new(settings(config)),
        login_throttle: Arc::new(LoginThrottle::new(ThrottleLimits {
            max_failures_per_email: config.login_max_failures_per_email.max(1),
            max_failures_per_ip: config.login_max_failures_per_ip.max(1),
            window: config.login_failure_window,
        })),
    })
}

/// What handlers read at request time, with the defaults that depend on
/// `APP_ENV` resolved.
pub fn settings(config: &Config) -> Settings {
    Settings {
        is_production: config.common.is_production(),
        dev_bootstrap_key: config.dev_bootstrap_key.clone().filter(|k| !k.is_empty()),
        auth_bootstrap_key: config.auth_bootstrap_key.clone().filter(|k| !k.is_empty()),
        jwt_ttl: config.jwt_ttl,
        automation: crate::automation::AutomationSettings {
            require_agent_tool_mapping: config.require_agent_tool_mapping(),
            max_executions_per_minute: config.automation_max_executions_per_minute,
            execute_timeout: config.automation_execute_timeout,
            integration_test_timeout: config.automation_integration_test_timeout,
        },
        recordings_expose_url: config.recordings_expose_url,
        trusted_proxies: config.trusted_proxies.clone(),
        size_caps: crate::http::size_caps::SizeCaps {
            agent_config: config.max_agent_config_bytes,
            tool_schema: config.max_tool_schema_bytes,
            tool_input: config.max_tool_input_bytes,
        },
        webhooks: crate::management::webhook_endpoints::WebhookSettings {
            allow_private_networks: config.automation_allow_private_networks,
        },
    }
}

/// Every documented route, with its OpenAPI description.
pub fn api_routes(settings: &Settings) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::auth::routes::routes(settings))
        .merge(crate::management::tenants::routes())
        .merge(crate::management::tenant_offboarding::routes())
        .merge(crate::management::agents::routes())
        .merge(crate::management::phone_numbers::routes())
        .merge(crate::management::tools::routes())
        .merge(crate::management::integrations::routes())
        .merge(crate::management::legal_holds::routes())
        .merge(crate::management::calls_admin::routes())
        .merge(crate::management::audit_log::routes())
        .merge(crate::management::webhook_endpoints::routes())
        .merge(crate::automation::routes())
        .merge(crate::client::routes())
        .merge(crate::runtime::dispatches::routes())
}

/// The OpenAPI document alone (for snapshots and clients).
pub fn openapi_document(settings: &Settings) -> utoipa::openapi::OpenApi {
    let mut doc = api_routes(settings).into_openapi();
    CommonResponses.modify(&mut doc);
    doc
}

/// The complete router, layers included.
pub fn router(
    state: AppState,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    config: &Config,
) -> Router {
    let (routes, mut openapi) = api_routes(&state.settings).split_for_parts();
    CommonResponses.modify(&mut openapi);
    let openapi = Arc::new(openapi);
    let readiness = Readiness {
        pool: state.pool.clone(),
        nats: state.nats.clone(),
        metrics,
        nats_required: true,
    };
    let app = routes
        .route("/health/db", get(health_db))
        .route(
            "/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        // The voice runtime's NATS contract, beside the HTTP one.
        .route(
            "/asyncapi.json",
            get(|| async { Json(shared::asyncapi::document()) }),
        )
        .with_state(state)
        .merge(shared::http::ops_router(readiness));
    shared::http::with_common_layers(
        app,
        "api",
        HttpOptions {
            body_bytes: config.http_body_limit_bytes,
            timeout: config.http_request_timeout,
            access_log: true,
        },
    )
}

/// The original service's database check, kept for its users.
async fn health_db(
    axum::extract::State(pool): axum::extract::State<PgPool>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match shared::http::check_postgres(&pool).await {
        Ok(()) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(message) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "error", "message": message})),
        )
            .into_response(),
    }
}
