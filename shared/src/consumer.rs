//! A durable JetStream pull consumer shared by every instance, handling
//! messages concurrently: ack after the handler's commit, nak (redeliver
//! later) on a transient failure, term on a message that can never succeed.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind, stream};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// What a handler decided about a message.
#[derive(Debug)]
pub enum Outcome {
    /// Done (or already done before): ack.
    Done,
    /// Cannot ever succeed (malformed, unknown call): log and drop.
    Reject(String),
    /// Transient (Postgres down): redeliver after a pause.
    Retry(String),
}

/// Creates the durable consumer, or binds to it when it exists.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    filter_subject: String,
    ack_wait: Duration,
) -> anyhow::Result<PullConsumer> {
    let stream = js.get_stream(stream).await?;
    let config = consumer::pull::Config {
        durable_name: Some(durable.to_owned()),
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: 4096,
        filter_subject,
        ..Default::default()
    };
    match stream.create_consumer(config).await {
        Ok(consumer) => Ok(consumer),
        // Exists with another config (an older version): keep using it.
        Err(err) => {
            tracing::warn!(%err, durable, "cannot create consumer; binding to the existing one");
            stream
                .get_consumer(durable)
                .await
                .map_err(|e| anyhow::anyhow!("cannot bind consumer {durable}: {e}"))
        }
    }
}

const PULL_EXPIRES: Duration = Duration::from_secs(10);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);

/// A durable consumer by its names, so it can be created again.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: String,
    pub durable: &'static str,
    pub filter_subject: String,
    /// How long a delivered message may go unacknowledged before it is
    /// delivered again.
    pub ack_wait: Duration,
    /// The stream's configuration when this consumer's service owns it:
    /// made again here if NATS lost it. `None` where another task does
    /// that (the dispatch-worker's bus recovery).
    pub owned_stream: Option<stream::Config>,
}

impl ConsumerSpec {
    pub async fn ensure(&self, js: &jetstream::Context) -> anyhow::Result<PullConsumer> {
        if let Some(config) = &self.owned_stream
            && js.get_stream(&self.stream).await.is_err()
        {
            crate::nats::ensure_stream(js, config.clone()).await?;
        }
        ensure_consumer(
            js,
            &self.stream,
            self.durable,
            self.filter_subject.clone(),
            self.ack_wait,
        )
        .await
    }
}

/// How a consumer hands messages to its handler.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Messages per batch at most.
    pub size: usize,
    /// Batches in flight at once.
    pub parallel: usize,
    /// How long a batch waits after its first message for more (fewer,
    /// larger commits when messages arrive one by one); zero takes only
    /// what is already waiting.
    pub linger: Duration,
}

impl Batching {
    /// Each message on its own, `parallel` at a time.
    pub fn one_by_one(parallel: usize) -> Self {
        Self {
            size: 1,
            parallel,
            linger: Duration::ZERO,
        }
    }
}

/// `items` in batches: each takes what is already waiting, then, with a
/// `linger`, what arrives within it of the batch's first item, up to `size`.
/// Ends when `items` does, with what it holds. The NATS consumers batch
/// through it, and so does the ingress's group commit.
pub fn batches<S>(
    items: S,
    size: usize,
    linger: Duration,
) -> futures::stream::BoxStream<'static, Vec<S::Item>>
where
    S: futures::Stream + Send + 'static,
    S::Item: Send,
{
    if linger.is_zero() {
        items.ready_chunks(size.max(1)).boxed()
    } else {
        tokio_stream::StreamExt::chunks_timeout(items, size.max(1), linger).boxed()
    }
}

/// Consumes until `shutdown`; in-flight messages finish first. Messages
/// already waiting are handed to `handler` together (see [`Batching`]), so
/// it can commit them at once.
///
/// A pull error ends the current pull and binds the consumer again from
/// `spec`: after NATS lost its store, the consumer (and its stream, which
/// the dispatch-worker's `bus_recovery` or `owned_stream` recreates) must be created anew before anything flows.
pub async fn run<H, F>(
    name: &'static str,
    js: jetstream::Context,
    spec: ConsumerSpec,
    batching: Batching,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Vec<jetstream::Message>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Vec<(jetstream::Message, Outcome)>> + Send,
{
    while !shutdown.is_cancelled() {
        let messages = match spec.ensure(&js).await {
            // Heartbeats every 2 s: a pull that died with the server (NATS
            // restarted empty) shows as an error within seconds, not 30.
            Ok(consumer) => {
                consumer
                    .stream()
                    .expires(PULL_EXPIRES)
                    .heartbeat(PULL_HEARTBEAT)
                    .messages()
                    .await
            }
            Err(err) => {
                tracing::warn!(%err, consumer = name, "cannot bind the consumer yet");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        match messages {
            Ok(messages) => {
                let stop = shutdown.clone();
                let messages = messages
                    .take_until(async move { stop.cancelled().await })
                    .take_while(move |message| {
                        let healthy = match message {
                            Ok(_) => true,
                            Err(err) => {
                                tracing::warn!(%err, consumer = name, "pull error; binding the consumer again");
                                false
                            }
                        };
                        futures::future::ready(healthy)
                    })
                    .filter_map(|message| futures::future::ready(message.ok()));
                batches(messages, batching.size, batching.linger)
                    .for_each_concurrent(batching.parallel.max(1), |chunk| {
                        handle_chunk(name, chunk, handler.clone())
                    })
                    .await;
            }
            Err(err) => {
                tracing::warn!(%err, consumer = name, "cannot pull; binding the consumer again")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn handle_chunk<H, F>(name: &'static str, received: Vec<jetstream::Message>, handler: H)
where
    H: Fn(Vec<jetstream::Message>) -> F,
    F: Future<Output = Vec<(jetstream::Message, Outcome)>>,
{
    for message in &received {
        if message.info().is_ok_and(|info| info.delivered > 1) {
            metrics::counter!("nats_redeliveries_total", "consumer" => name).increment(1);
        }
    }
    let results = handler(received).await;
    futures::future::join_all(
        results
            .into_iter()
            .map(|(message, outcome)| settle(name, message, outcome)),
    )
    .await;
}

/// Exports the consumer's lag (messages not yet delivered), messages
/// delivered but not acked, and messages redelivered, every few seconds.
pub async fn watch_lag(name: &'static str, consumer: PullConsumer, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match consumer.get_info().await {
            Ok(info) => {
                metrics::gauge!("nats_consumer_pending_messages", "consumer" => name)
                    .set(info.num_pending as f64);
                metrics::gauge!("nats_consumer_ack_pending_messages", "consumer" => name)
                    .set(info.num_ack_pending as f64);
                metrics::gauge!("nats_consumer_redelivered_messages", "consumer" => name)
                    .set(info.num_redelivered as f64);
            }
            Err(err) => tracing::debug!(%err, consumer = name, "cannot read consumer info"),
        }
    }
}

async fn settle(name: &'static str, message: jetstream::Message, outcome: Outcome) {
    let ack = match outcome {
        Outcome::Done => message.ack().await,
        Outcome::Reject(reason) => {
            metrics::counter!("nats_messages_rejected_total", "consumer" => name).increment(1);
            tracing::warn!(consumer = name, subject = %message.subject, %reason, "dropping message");
            message.ack_with(AckKind::Term).await
        }
        Outcome::Retry(reason) => {
            tracing::warn!(consumer = name, %reason, "will retry message");
            message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await
        }
    };
    if let Err(err) = ack {
        // Redelivered after ack_wait; handlers are idempotent.
        tracing::warn!(%err, consumer = name, "ack failed");
    }
}
