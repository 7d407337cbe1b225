//! Wiring: settings -> connections -> tasks, and graceful shutdown.
//!
//! Shutdown (`shared::shutdown::WorkerTasks`): stop taking requests (the
//! subscriptions drain: requests already delivered to this instance are
//! still run), finish every execution in flight and reply, then stop the
//! reaper and the ops server.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Message, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use shared::automation::{
    ExecutionStatus, IntegrationTestRequest, REQUEST_SIGNATURE_HEADER, RequestKind, RequestSigner,
    ToolError, ToolExecuteReply, ToolExecuteRequest,
};
use shared::crypto::SecretBox;
use shared::http::Readiness;
use shared::nats::Subjects;
use shared::service::Connections;
use shared::shutdown::WorkerTasks;
use shared::trace::TraceContext;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::execute::Executor;
use crate::outbound::{Backoff, Outbound};
use crate::probe::ProbeSettings;
use crate::ssrf::Policy;
use crate::webhooks::{Deliverer, DeliverySettings, EndpointLimits, Webhooks};

/// How long a delivery waits for its endpoint's turn before it goes back to
/// Postgres; the consumer's ack wait and the relay's lease follow from it.
const WEBHOOK_MAX_WAIT: Duration = Duration::from_secs(10);

/// Reply header naming the instance that answered (`AUTOMATION_WORKER_ID`).
pub const WORKER_ID_HEADER: &str = "worker-id";

pub async fn main(config: Config) -> anyhow::Result<()> {
    shared::install_crypto_providers();
    shared::telemetry::init_logging(config.common.log_format);
    config.check_production()?;
    let io = Connections::open(
        "automation-worker",
        &config.db,
        shared::db::Plans::Default,
        &config.nats,
        config.listen_addr,
    )
    .await?;
    run(config, io, shared::shutdown::token_on_signal()).await
}

struct Worker {
    executor: Executor,
    webhooks: Arc<Webhooks>,
    probe: ProbeSettings,
    nats: async_nats::Client,
    worker_id: String,
    /// Checks that a request was signed by the api.
    signer: RequestSigner,
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
    let a = &config.automation;
    let worker_id = a.resolved_worker_id();
    tracing::info!(%worker_id, "automation-worker starting");
    // Production refuses it in `check_production`.
    if a.allow_private_networks {
        tracing::warn!("AUTOMATION_ALLOW_PRIVATE_NETWORKS=true: the SSRF address check is off");
    }
    let policy = Policy {
        allow_private: a.allow_private_networks,
        https_only: config.common.is_production(),
    };
    let outbound = Outbound::new(
        policy,
        Backoff {
            base: a.backoff_base,
            max: a.backoff_max,
        },
    )?;
    let w = &config.webhooks;
    let subjects = Subjects::new(&config.nats.nats_subject_prefix);
    let webhooks = Arc::new(Webhooks::new(
        Deliverer {
            pool: pool.clone(),
            outbound: outbound.clone(),
            secrets: SecretBox::new(&key),
            settings: DeliverySettings {
                schedule: w.retry_schedule.clone(),
                timeout: w.timeout,
                disable_after: w.disable_after,
                expose_recording_url: w.recordings_expose_url,
            },
        },
        subjects.clone(),
        EndpointLimits {
            concurrency: w.endpoint_concurrency,
            queue: w.endpoint_queue,
        },
        WEBHOOK_MAX_WAIT,
    ));
    // A message unacknowledged this long is delivered again; a lease runs
    // longer, so a delivery is handed on only when its worker is gone.
    let ack_wait = w.timeout + WEBHOOK_MAX_WAIT + Duration::from_secs(10);
    let lease = ack_wait + Duration::from_secs(15);
    let worker = Arc::new(Worker {
        webhooks: webhooks.clone(),
        executor: Executor {
            pool: pool.clone(),
            outbound,
            secrets: SecretBox::new(&key),
            max_output_bytes: a.max_output_bytes,
            synchronous_commit: a.synchronous_commit,
            worker_id: worker_id.clone(),
        },
        probe: ProbeSettings {
            timeout: a.probe_timeout,
            retries: a.probe_retries,
        },
        nats: nats.clone(),
        worker_id,
        signer: RequestSigner::new(&key),
    });

    // Served first: while NATS is down, probes must see the worker alive and
    // not ready rather than nothing at all.
    let readiness = Readiness {
        pool: pool.clone(),
        nats: nats.clone(),
        metrics: shared::telemetry::install_metrics(),
        nats_required: true,
    };
    let tasks = WorkerTasks::default();
    tasks.serve_ops(listener, readiness, "automation-worker");

    let group = subjects.automation_queue_group();
    let execute_sub = nats
        .queue_subscribe(subjects.automation_tool_execute(), group.clone())
        .await?;
    let test_sub = nats
        .queue_subscribe(subjects.automation_integration_test(), group.clone())
        .await?;
    let webhook_test_sub = nats
        .queue_subscribe(subjects.webhooks_test(), group)
        .await?;
    // Make sure the server has the subscriptions before anyone is told we
    // are up (tests send requests right after start). While NATS is down
    // this waits for it, with `/health/ready` saying so, until shutdown.
    tokio::select! {
        flushed = nats.flush() => flushed?,
        () = shutdown.cancelled() => {
            tasks.stop().await;
            return Ok(());
        }
    }

    let permits = Arc::new(Semaphore::new(a.max_in_flight.max(1)));
    for (sub, kind) in [
        (execute_sub, Kind::Execute),
        (test_sub, Kind::Test),
        (webhook_test_sub, Kind::WebhookTest),
    ] {
        let (worker, permits) = (worker.clone(), permits.clone());
        let in_flight = tasks.intake.tracker().clone();
        tasks
            .intake
            .spawn(|stop| consume(sub, kind, worker, in_flight, permits, stop));
    }
    // Tenant event webhooks: the stream is this service's own.
    let js = async_nats::jetstream::new(nats.clone());
    let stream = shared::nats::webhooks_stream_config(&subjects, config.nats.nats_stream_replicas);
    let spec = shared::consumer::ConsumerSpec {
        stream: subjects.webhooks_stream(),
        durable: crate::webhooks::CONSUMER,
        filter_subject: subjects.webhooks_deliver_all(),
        ack_wait,
        owned_stream: Some(stream),
    };
    let in_flight = w.max_in_flight;
    tasks.intake.spawn({
        let (js, webhooks) = (js.clone(), webhooks.clone());
        move |stop| {
            shared::consumer::run(
                "webhooks",
                js,
                spec,
                shared::consumer::Batching::one_by_one(in_flight),
                stop,
                move |messages| {
                    let webhooks = webhooks.clone();
                    async move {
                        futures::future::join_all(
                            messages.into_iter().map(|m| webhooks.clone().handle(m)),
                        )
                        .await
                    }
                },
            )
        }
    });
    let relay = crate::webhooks::relay::Relay {
        pool: pool.clone(),
        js,
        subjects: subjects.clone(),
        lease,
        poll_interval: w.poll_interval,
    };
    tasks.background.spawn(|stop| relay.run(stop));
    tasks
        .background
        .spawn(|stop| crate::webhooks::watch_backlog(pool.clone(), stop));
    let (reaper_interval, reaper_grace) = (a.reaper_interval, a.reaper_grace);
    tasks
        .background
        .spawn(|stop| crate::reaper::run(pool.clone(), reaper_interval, reaper_grace, stop));

    shutdown.cancelled().await;
    tracing::info!("automation-worker draining");
    tasks.stop_intake().await;
    // The last replies may still sit in the client's buffer.
    let _ = nats.flush().await;
    tasks.stop().await;
    tracing::info!("automation-worker stopped");
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Execute,
    Test,
    WebhookTest,
}

/// Takes requests until shutdown, then drains the subscription: what the
/// server already delivered is still handled.
async fn consume(
    mut sub: Subscriber,
    kind: Kind,
    worker: Arc<Worker>,
    tracker: TaskTracker,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let mut draining = false;
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                if let Err(err) = sub.drain().await {
                    tracing::warn!(error = %err, "cannot drain subscription");
                    return;
                }
                continue;
            }
            msg = sub.next() => msg,
        };
        let Some(msg) = msg else { return };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let worker = worker.clone();
        tracker.spawn(async move {
            handle(&worker, kind, msg).await;
            drop(permit);
        });
    }
}

/// Handles one request inside a span carrying the caller's trace: the
/// `traceparent` header continued (W3C), else the `x-trace-id` header, so
/// this worker's log lines join the api's for the same call.
async fn handle(worker: &Worker, kind: Kind, msg: Message) {
    let headers = msg.headers.as_ref();
    let trace_id = TraceContext::from_nats(headers)
        .map(|t| t.trace_id_hex())
        .or_else(|| {
            headers
                .and_then(|h| h.get("x-trace-id"))
                .map(|v| v.as_str().to_owned())
        })
        .unwrap_or_default();
    let span = tracing::info_span!(
        "automation",
        kind = ?kind,
        trace_id = %trace_id,
        worker_id = %worker.worker_id,
    );
    handle_in_span(worker, kind, msg).instrument(span).await;
}

async fn handle_in_span(worker: &Worker, kind: Kind, msg: Message) {
    let Some(reply_to) = msg.reply.clone() else {
        tracing::warn!(subject = %msg.subject, "request without reply subject ignored");
        return;
    };
    // Only what the api signed is acted on, not a request the bus let
    // through from anyone else (docs/decisions/0039-least-privilege-on-the-bus.md).
    let request_kind = match kind {
        Kind::Test => RequestKind::IntegrationTest,
        Kind::Execute => RequestKind::ToolExecute,
        Kind::WebhookTest => RequestKind::WebhookTest,
    };
    let signature = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(REQUEST_SIGNATURE_HEADER))
        .map(|v| v.as_str());
    if !worker.signer.verify(request_kind, &msg.payload, signature) {
        metrics::counter!("automation_requests_refused_total").increment(1);
        tracing::warn!(subject = %msg.subject, "automation request without a valid api signature refused");
        return;
    }
    let payload: Option<Vec<u8>> = match kind {
        Kind::Test => match serde_json::from_slice::<IntegrationTestRequest>(&msg.payload) {
            Ok(req) => {
                let reply = crate::probe::probe(
                    &worker.executor.outbound,
                    &worker.executor.secrets,
                    &worker.probe,
                    req,
                )
                .await;
                serde_json::to_vec(&reply).ok()
            }
            Err(err) => {
                tracing::warn!(error = %err, "malformed integration test request");
                None
            }
        },
        Kind::WebhookTest => {
            match serde_json::from_slice::<shared::webhooks::TestDeliveryRequest>(&msg.payload) {
                Ok(req) => match worker.webhooks.test(req).await {
                    Ok(Some(outcome)) => serde_json::to_vec(&outcome).ok(),
                    // Not ours to take (already attempted): no answer, the
                    // api says the delivery is made later.
                    Ok(None) => None,
                    Err(err) => {
                        tracing::error!(error = %err, "webhook test could not run");
                        None
                    }
                },
                Err(err) => {
                    tracing::warn!(error = %err, "malformed webhook test request");
                    None
                }
            }
        }
        Kind::Execute => match serde_json::from_slice::<ToolExecuteRequest>(&msg.payload) {
            Ok(req) => {
                let execution_id = req.execution_id;
                let reply = match worker.executor.handle(req).await {
                    Ok(reply) => reply,
                    Err(err) => {
                        tracing::error!(%execution_id, error = %err, "tool execution could not run");
                        ToolExecuteReply {
                            execution_id,
                            trace_id: String::new(),
                            status: ExecutionStatus::Failed,
                            output: None,
                            error: Some(ToolError {
                                code: "worker_error".into(),
                                message: "the worker could not run the execution".into(),
                            }),
                            http_status: None,
                            attempts: 0,
                            latency_ms: None,
                        }
                    }
                };
                serde_json::to_vec(&reply).ok()
            }
            Err(err) => {
                tracing::warn!(error = %err, "malformed tool execute request");
                None
            }
        },
    };
    let mut reply_headers = async_nats::HeaderMap::new();
    reply_headers.insert(WORKER_ID_HEADER, worker.worker_id.as_str());
    if let Some(payload) = payload
        && let Err(err) = worker
            .nats
            .publish_with_headers(reply_to, reply_headers, Bytes::from(payload))
            .await
    {
        tracing::warn!(error = %err, "cannot publish reply");
    }
}
