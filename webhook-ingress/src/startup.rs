//! Wiring: settings -> connections -> tasks, and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use shared::http::{HttpLimits, Readiness};
use shared::nats::Subjects;
use shared::service::Connections;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::publisher::Publisher;
use crate::routing::PhoneRoutes;
use crate::store::CallStore;
use crate::webhooks::{self, Ingress};

/// Twilio sends a few KiB; anything near this is not Twilio.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

pub async fn main(config: Config) -> anyhow::Result<()> {
    shared::install_crypto_providers();
    shared::telemetry::init_logging(config.common.log_format);
    config.check_production()?;
    let _key = config.encryption.key(&config.common)?;
    // Checked before anything listens: validation on needs its secrets.
    config.twilio.signature_check()?;
    let io = Connections::open(
        "webhook-ingress",
        &config.db,
        &config.nats,
        config.listen_addr,
    )
    .await?;
    run(config, io, shared::shutdown::token_on_signal()).await
}

/// Runs until `shutdown` is cancelled, then drains.
pub async fn run(
    config: Config,
    io: Connections,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Connections {
        pool,
        nats,
        listener,
    } = io;
    let signature = config.twilio.signature_check()?;
    let subjects = Subjects::new(&config.nats.nats_subject_prefix);
    let js = async_nats::jetstream::new(nats.clone());
    // Idempotent; a NATS outage at start-up must not stop calls from being
    // accepted (the relay publishes later), so it is retried in the background.
    {
        let js = js.clone();
        let subjects = subjects.clone();
        let replicas = config.nats.nats_stream_replicas;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                match shared::nats::ensure_streams(&js, &subjects, replicas).await {
                    Ok(()) => break,
                    Err(err) => tracing::warn!(%err, "cannot ensure streams yet; retrying"),
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
    }
    let routes = PhoneRoutes::new(pool.clone(), config.phone_number_cache_ttl);
    routes.spawn_refresher(shutdown.clone());
    let ingress = Arc::new(Ingress {
        signature,
        routes,
        store: CallStore::start(
            pool.clone(),
            usize::from(config.db_writers),
            usize::from(config.max_group_commit),
        ),
        publisher: Publisher::start(js, subjects),
        media_stream_url: config
            .twilio
            .twilio_media_stream_url
            .clone()
            .filter(|u| !u.is_empty()),
        media_stream_token: config
            .twilio
            .twilio_media_stream_token
            .clone()
            .filter(|t| !t.is_empty()),
    });
    let readiness = Readiness {
        pool,
        nats,
        metrics: shared::telemetry::install_metrics(),
    };
    let app = shared::http::with_common_layers(
        shared::http::ops_router(readiness).merge(webhooks::router(ingress)),
        "webhook-ingress",
        HttpLimits {
            body_bytes: BODY_LIMIT_BYTES,
            timeout: Duration::from_secs(10),
        },
    );
    let stop = shutdown.clone();
    shared::http::serve(listener, app, async move { stop.cancelled().await }).await?;
    tracing::info!("webhook-ingress stopped");
    Ok(())
}
