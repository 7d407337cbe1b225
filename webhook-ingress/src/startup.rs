//! Wiring: settings -> connections -> tasks, and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use shared::http::{HttpOptions, Readiness};
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
        // Its statements are the call flow's hot path, all by key.
        shared::db::Plans::Generic,
        &config.nats,
        config.listen_addr,
    )
    .await?;
    let ops = tokio::net::TcpListener::bind(config.ops_listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.ops_listen_addr))?;
    tracing::info!(addr = %config.ops_listen_addr, "webhook-ingress ops listening");
    run(config, io, ops, shared::shutdown::token_on_signal()).await
}

/// Runs until `shutdown` is cancelled, then drains. Webhooks are served on
/// `io.listener`, the port Twilio reaches; readiness details and metrics
/// only on `ops`.
pub async fn run(
    config: Config,
    io: Connections,
    ops: tokio::net::TcpListener,
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
            shared::shutdown::retry_until_cancelled(
                "ensure streams",
                Duration::from_secs(2),
                &stop,
                || shared::nats::ensure_streams(&js, &subjects, replicas),
            )
            .await;
        });
    }
    let routes = PhoneRoutes::new(pool.clone(), config.phone_number_cache_ttl);
    // Without the subscription (NATS down at start-up) routes still
    // expire within the TTL.
    let changes = match nats.subscribe(subjects.routes_changed()).await {
        Ok(sub) => Some(sub),
        Err(err) => {
            tracing::warn!(%err, "cannot subscribe to routes.changed; routes expire by TTL only");
            None
        }
    };
    routes.spawn_refresher(changes, shutdown.clone());
    let ingress = Arc::new(Ingress {
        signature,
        routes,
        store: CallStore::start(
            pool.clone(),
            usize::from(config.db_writers),
            usize::from(config.max_group_commit),
            config.group_linger,
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
        // Webhooks are committed without NATS; the outbox publishes later.
        nats_required: false,
    };
    // No access log on the webhooks: at thousands per second it would cost
    // more than the answer; each call's timeline is in the database.
    let public = shared::http::with_common_layers(
        shared::http::liveness_router().merge(webhooks::router(ingress)),
        "webhook-ingress",
        HttpOptions {
            body_bytes: BODY_LIMIT_BYTES,
            timeout: Duration::from_secs(10),
            access_log: false,
        },
    );
    let (stop_public, stop_ops) = (shutdown.clone(), shutdown.clone());
    tokio::try_join!(
        shared::http::serve(
            listener,
            public,
            async move { stop_public.cancelled().await }
        ),
        shared::http::serve_ops(ops, readiness, "webhook-ingress", async move {
            stop_ops.cancelled().await
        }),
    )?;
    tracing::info!("webhook-ingress stopped");
    Ok(())
}
