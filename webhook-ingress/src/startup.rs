//! Wiring: settings -> connections -> tasks, and graceful shutdown.

use std::time::Duration;

use anyhow::Context;
use shared::http::{HttpLimits, Readiness};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

pub async fn main(config: Config) -> anyhow::Result<()> {
    shared::install_crypto_providers();
    shared::telemetry::init_logging(config.common.log_format);
    let _key = config.encryption.key(&config.common)?;
    let pool = shared::db::connect_lazy(&config.db).context("bad DATABASE_URL")?;
    let nats = shared::nats::connect(&config.nats, "webhook-ingress").await?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    tracing::info!(addr = %config.listen_addr, "webhook-ingress listening");
    run(
        config,
        pool,
        nats,
        listener,
        shared::shutdown::token_on_signal(),
    )
    .await
}

/// Runs until `shutdown` is cancelled, then drains.
pub async fn run(
    _config: Config,
    pool: PgPool,
    nats: async_nats::Client,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let readiness = Readiness {
        pool,
        nats,
        metrics: shared::telemetry::install_metrics(),
    };
    let app = shared::http::with_common_layers(
        shared::http::ops_router(readiness),
        "webhook-ingress",
        HttpLimits {
            body_bytes: 64 * 1024,
            timeout: Duration::from_secs(10),
        },
    );
    let stop = shutdown.clone();
    shared::http::serve(listener, app, async move { stop.cancelled().await }).await?;
    tracing::info!("webhook-ingress stopped");
    Ok(())
}
