//! Wiring: settings -> connections -> tasks, and graceful shutdown: the
//! consumers stop first and finish their batches, then the relay and the
//! expiry job, then the ops server (`shared::shutdown::WorkerTasks`).

use std::sync::Arc;
use std::time::Duration;

use shared::crypto::SecretBox;
use shared::http::Readiness;
use shared::nats::Subjects;
use shared::service::Connections;
use shared::shutdown::WorkerTasks;
use tokio_util::sync::CancellationToken;

use crate::bus_recovery::BusRecovery;
use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::publish_records::PublishRecorder;
use crate::relay::Relay;
use shared::consumer::ConsumerSpec;

/// Durable consumer names, shared by every instance.
pub const CALLS_CONSUMER: &str = "dispatch-worker";
pub const RUNTIME_EVENTS_CONSUMER: &str = "dispatch-worker-runtime-events";
/// Redelivery after this long unacknowledged; handlers are idempotent.
const CONSUMER_ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest a handoff's publish waits to be recorded with others'.
const PUBLISH_RECORDS_FLUSH_AFTER: Duration = Duration::from_millis(50);

pub async fn main(config: Config) -> anyhow::Result<()> {
    shared::install_crypto_providers();
    shared::telemetry::init_logging(config.common.log_format);
    config.check_production()?;
    let io = Connections::open(
        "dispatch-worker",
        &config.db,
        // Its periodic jobs (purge, rollups) scan ranges: Postgres's own
        // choice there; the hot batch functions set theirs (migration 0022).
        shared::db::Plans::Default,
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
    let key = config.encryption.key(&config.common)?;
    let subjects = Subjects::new(&config.nats.nats_subject_prefix);
    let js = async_nats::jetstream::new(nats.clone());
    let readiness = Readiness {
        pool: pool.clone(),
        nats,
        metrics: shared::telemetry::install_metrics(),
        nats_required: true,
    };
    let tasks = WorkerTasks::default();
    tasks.serve_ops(listener, readiness, "dispatch-worker");
    tasks.background.spawn(|stop| {
        crate::expiry::run(
            pool.clone(),
            config.dispatch_expiry_interval,
            config.max_call_duration,
            stop,
        )
    });
    tasks
        .background
        .spawn(|stop| crate::kpi_rollups::run(pool.clone(), config.kpi_rollup_interval, stop));
    let purge_interval = config.retention_purge_interval;
    let purge_pace = shared::retention::Pace {
        batch: config.retention_purge_batch,
        duty: config.retention_purge_duty,
    };
    tasks
        .background
        .spawn(|stop| crate::retention::run(pool.clone(), purge_interval, purge_pace, stop));
    let relay = Relay {
        pool: pool.clone(),
        js: js.clone(),
        subjects: subjects.clone(),
        publish_after: config.relay_publish_after,
        republish_after: config.relay_republish_after,
        interval: config.relay_interval,
        batch: config.relay_batch,
    };
    tasks.background.spawn(|stop| relay.run(stop));

    // Streams and consumers, idempotently; waits for NATS if it is down.
    let calls_spec = ConsumerSpec {
        stream: subjects.calls_stream(),
        durable: CALLS_CONSUMER,
        filter_subject: subjects.calls_all(),
        ack_wait: CONSUMER_ACK_WAIT,
        owned_stream: None,
    };
    let events_spec = ConsumerSpec {
        stream: subjects.runtime_events_stream(),
        durable: RUNTIME_EVENTS_CONSUMER,
        filter_subject: subjects.runtime_events_all(),
        ack_wait: CONSUMER_ACK_WAIT,
        owned_stream: None,
    };
    let consumers = shared::shutdown::retry_until_cancelled(
        "set up JetStream",
        Duration::from_secs(2),
        &shutdown,
        || async {
            shared::nats::ensure_streams(&js, &subjects, config.nats.nats_stream_replicas).await?;
            let calls = calls_spec.ensure(&js).await?;
            let events = events_spec.ensure(&js).await?;
            anyhow::Ok((calls, events))
        },
    )
    .await;
    let recovery = BusRecovery {
        pool: pool.clone(),
        js: js.clone(),
        subjects: subjects.clone(),
        replicas: config.nats.nats_stream_replicas,
    };
    tasks.background.spawn(|stop| recovery.run(stop));

    if let Some((calls, events)) = consumers {
        let concurrency = usize::from(config.concurrency);
        // Well inside the relay's wait, so it does not publish a handoff
        // again only because its record is still queued.
        let flush_after = (config.relay_publish_after / 4).min(PUBLISH_RECORDS_FLUSH_AFTER);
        let (publish_records, record_writer) = PublishRecorder::start(pool.clone(), flush_after);
        tasks.background.spawn(|stop| record_writer.run(stop));
        let lifecycle = Arc::new(Lifecycle {
            pool: pool.clone(),
            js: js.clone(),
            subjects: subjects.clone(),
            secrets: SecretBox::new(&key),
            dispatch_ttl: Duration::from_secs(u64::from(config.dispatch_ttl_seconds)),
            publish_records,
        });
        tasks
            .background
            .spawn(|stop| shared::consumer::watch_lag("calls", calls, stop));
        tasks
            .background
            .spawn(|stop| shared::consumer::watch_lag("runtime_events", events, stop));
        let batching = shared::consumer::Batching {
            size: usize::from(config.batch_size),
            parallel: usize::from(config.parallel_batches),
            linger: config.batch_linger,
        };
        let calls_js = js.clone();
        tasks.intake.spawn(|stop| {
            shared::consumer::run(
                "calls",
                calls_js,
                calls_spec,
                batching,
                stop,
                move |batch| lifecycle.clone().handle_batch(batch),
            )
        });
        let (events_pool, events_subjects) = (pool.clone(), subjects.clone());
        let events_js = js.clone();
        tasks.intake.spawn(|stop| {
            shared::consumer::run(
                "runtime_events",
                events_js,
                events_spec,
                shared::consumer::Batching {
                    size: concurrency,
                    parallel: 1,
                    linger: Duration::ZERO,
                },
                stop,
                move |batch: Vec<async_nats::jetstream::Message>| {
                    let (pool, subjects) = (events_pool.clone(), events_subjects.clone());
                    futures::future::join_all(batch.into_iter().map(move |message| {
                        crate::runtime_events::handle(pool.clone(), subjects.clone(), message)
                    }))
                },
            )
        });
        tracing::info!("dispatch-worker consuming");
    }

    shutdown.cancelled().await;
    tracing::info!("dispatch-worker draining");
    tasks.stop().await;
    tracing::info!("dispatch-worker stopped");
    Ok(())
}
