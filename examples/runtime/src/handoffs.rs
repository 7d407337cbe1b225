//! Taking calls: the durable consumer on RUNTIME_HANDOFFS and the claim that
//! decides which runtime talks to the caller.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use shared::calls::HandoffRequested;
use shared::nats::Subjects;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::conversation::Conversation;
use crate::platform::{Claim, PlatformApi};

/// How soon a handoff comes back after the api could not be reached.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Everything a call handler needs.
struct Runtime {
    api: PlatformApi,
    js: jetstream::Context,
    subjects: Subjects,
    tenant_id: Uuid,
    turn_pause: Duration,
}

/// Runs until `shutdown`: learns its tenant from the api, binds its durable
/// consumer, then takes calls, `max_calls` at a time. Calls in progress end
/// their conversation before it returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let api = PlatformApi::new(config.api_url.clone(), config.api_token.clone())?;
    // The api may still be starting (dev-up starts everything at once).
    let Some(me) = shared::shutdown::retry_until_cancelled(
        "ask the api whose token this is",
        Duration::from_secs(1),
        &shutdown,
        || api.who_am_i(),
    )
    .await
    else {
        return Ok(());
    };
    let nats = shared::nats::connect(&config.nats, "runtime").await?;
    let js = jetstream::new(nats);
    let subjects = Subjects::new(&config.nats.nats_subject_prefix);
    let filter = subjects.runtime_handoff_requested(me.tenant_id);
    // The streams belong to the platform, which creates them at start-up.
    tracing::info!(tenant_id = %me.tenant_id, token_sub = %me.sub, subject = %filter,
        consumer = %config.consumer, "taking calls");
    let runtime = Runtime {
        api,
        js,
        subjects,
        tenant_id: me.tenant_id,
        turn_pause: config.turn_pause,
    };
    while !shutdown.is_cancelled() {
        // Bound (and created if missing) on every pass: after NATS lost its
        // store, the consumer must be made again before handoffs flow.
        let Some(consumer) = shared::shutdown::retry_until_cancelled(
            "bind the handoff consumer",
            Duration::from_secs(1),
            &shutdown,
            || {
                bind_consumer(
                    &runtime.js,
                    &runtime.subjects,
                    &config.consumer,
                    filter.clone(),
                )
            },
        )
        .await
        else {
            break;
        };
        // Heartbeats every 2 s: a dead pull shows as an error within seconds.
        let messages = consumer
            .stream()
            .expires(Duration::from_secs(10))
            .heartbeat(Duration::from_secs(2))
            .messages()
            .await;
        match messages {
            Ok(messages) => {
                let stop = shutdown.clone();
                messages
                    .take_until(async move { stop.cancelled().await })
                    .take_while(|message| {
                        if let Err(err) = message {
                            tracing::warn!(%err, "pull error; binding the consumer again");
                        }
                        futures::future::ready(message.is_ok())
                    })
                    .filter_map(|message| futures::future::ready(message.ok()))
                    .for_each_concurrent(config.max_calls.max(1), |message| {
                        runtime.take_call(message)
                    })
                    .await;
            }
            Err(err) => tracing::warn!(%err, "cannot pull handoffs; binding the consumer again"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    Ok(())
}

/// The runtime's durable pull consumer, created on first start. Explicit
/// acks: a handoff not acked within `ack_wait` comes back.
async fn bind_consumer(
    js: &jetstream::Context,
    subjects: &Subjects,
    durable: &str,
    filter_subject: String,
) -> anyhow::Result<PullConsumer> {
    let stream = js.get_stream(subjects.runtime_handoffs_stream()).await?;
    let consumer = stream
        .get_or_create_consumer(
            durable,
            pull::Config {
                durable_name: Some(durable.to_owned()),
                filter_subject,
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                // Handoffs that rang before this runtime started are still
                // claimable until they expire; older ones answer 410.
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await?;
    Ok(consumer)
}

impl Runtime {
    async fn take_call(&self, message: jetstream::Message) {
        let handoff: HandoffRequested = match serde_json::from_slice(&message.payload) {
            Ok(handoff) => handoff,
            Err(err) => {
                // It will never parse: drop it instead of seeing it forever.
                tracing::warn!(%err, subject = %message.subject, "malformed handoff dropped");
                settle(&message, AckKind::Term).await;
                return;
            }
        };
        if handoff.tenant_id != self.tenant_id {
            tracing::warn!(dispatch_id = %handoff.dispatch_id, "handoff of another tenant dropped");
            settle(&message, AckKind::Term).await;
            return;
        }
        let claimed = match self.api.claim(handoff.dispatch_id).await {
            Ok(Claim::Won(claimed)) => claimed,
            Ok(other) => {
                let why = match other {
                    Claim::AlreadyClaimed => "already claimed",
                    Claim::Expired => "expired",
                    _ => "unknown to the api",
                };
                tracing::info!(dispatch_id = %handoff.dispatch_id, why, "not this runtime's call");
                settle(&message, AckKind::Ack).await;
                return;
            }
            Err(err) => {
                let transient = err.is_transient();
                tracing::warn!(dispatch_id = %handoff.dispatch_id, %err, transient, "claim failed");
                let kind = if transient {
                    AckKind::Nak(Some(RETRY_AFTER))
                } else {
                    AckKind::Term
                };
                settle(&message, kind).await;
                return;
            }
        };
        // The claim is the decision; a redelivery from here on gets 409.
        settle(&message, AckKind::Ack).await;
        tracing::info!(dispatch_id = %claimed.dispatch_id, call_id = %claimed.call_id,
            call_sid = %handoff.call_sid, agent_id = ?claimed.agent_id,
            agent_version_id = ?claimed.agent_version_id,
            join_token_len = claimed.join_token.len(), "claimed; joining the call");
        let conversation = Conversation::new(
            &self.js,
            &self.subjects,
            &self.api,
            &handoff,
            self.turn_pause,
        );
        match conversation.run().await {
            Ok(outcome) => tracing::info!(call_id = %handoff.call_id, segments = outcome.segments,
                tool = ?outcome.tool, "conversation over"),
            Err(err) => tracing::error!(call_id = %handoff.call_id, %err, "conversation cut short"),
        }
    }
}

async fn settle(message: &jetstream::Message, kind: AckKind) {
    if let Err(err) = message.ack_with(kind).await {
        tracing::warn!(%err, "cannot settle the handoff; it will be delivered again");
    }
}
