//! NATS: connecting, the JetStream streams this system owns, and the one
//! place that names every subject.
//!
//! Every subject and stream carries the deployment's prefix
//! (`NATS_SUBJECT_PREFIX`): empty in production, unique per test so tests
//! can share one NATS server and run in parallel.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use uuid::Uuid;

use crate::config::NatsArgs;

/// Names of every subject and stream, for one prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn subject(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}.{rest}", self.prefix)
        }
    }

    fn stream(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}_{name}", self.prefix)
        }
    }

    // --- flow 1: calls (ingress -> dispatch-worker) ---
    pub fn calls_inbound(&self, tenant_id: Uuid) -> String {
        self.subject(&format!("calls.inbound.{tenant_id}"))
    }
    pub fn calls_status(&self, tenant_id: Uuid) -> String {
        self.subject(&format!("calls.status.{tenant_id}"))
    }
    pub fn calls_recording(&self, tenant_id: Uuid) -> String {
        self.subject(&format!("calls.recording.{tenant_id}"))
    }
    /// Everything under `calls.`.
    pub fn calls_all(&self) -> String {
        self.subject("calls.>")
    }
    pub fn calls_stream(&self) -> String {
        self.stream("CALLS")
    }

    // --- flow 1: runtime handoff (dispatch-worker -> voice runtime) ---
    pub fn runtime_handoff_requested(&self, tenant_id: Uuid) -> String {
        self.subject(&format!("runtime.handoff_requested.{tenant_id}"))
    }
    pub fn runtime_handoff_all(&self) -> String {
        self.subject("runtime.handoff_requested.>")
    }
    pub fn runtime_handoffs_stream(&self) -> String {
        self.stream("RUNTIME_HANDOFFS")
    }

    // --- flow 1: runtime events (voice runtime -> dispatch-worker) ---
    pub fn runtime_events(&self, tenant_id: Uuid, call_id: Uuid) -> String {
        self.subject(&format!("runtime.events.{tenant_id}.{call_id}"))
    }
    pub fn runtime_events_all(&self) -> String {
        self.subject("runtime.events.>")
    }
    pub fn runtime_events_stream(&self) -> String {
        self.stream("RUNTIME_EVENTS")
    }

    // --- flow 2: automation (api -> automation-worker, request/reply) ---
    pub fn automation_tool_execute(&self) -> String {
        self.subject("automation.tool.execute")
    }
    pub fn automation_integration_test(&self) -> String {
        self.subject("automation.integration.test")
    }
    /// Queue group shared by automation-worker instances.
    pub fn automation_queue_group(&self) -> String {
        self.stream("automation-workers")
    }

    // --- flow 4: tenant event webhooks (within the automation-worker) ---
    /// A due delivery of one of `tenant_id`'s endpoints.
    pub fn webhooks_deliver(&self, tenant_id: Uuid) -> String {
        self.subject(&format!("webhooks.deliver.{tenant_id}"))
    }
    pub fn webhooks_deliver_all(&self) -> String {
        self.subject("webhooks.deliver.>")
    }
    pub fn webhooks_stream(&self) -> String {
        self.stream("WEBHOOKS")
    }
    /// The api's request to send a test event now (request/reply).
    pub fn webhooks_test(&self) -> String {
        self.subject("webhooks.test")
    }

    // --- routing: the ingresses' cache of numbers ---
    /// A number stopped routing (its tenant is being off-boarded, it was
    /// deactivated, moved or deleted): every ingress forgets its cached
    /// routes (core NATS, no stream; a lost one waits out the cache TTL).
    pub fn routes_changed(&self) -> String {
        self.subject("routes.changed")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    #[error("cannot read NATS_CREDS {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Connect(#[from] async_nats::ConnectError),
}

/// The subject prefix of `service`'s reply inboxes. Each service has its
/// own, so the bus can let it (and only it) subscribe to its replies:
/// with the shared `_INBOX.>`, any client allowed to receive replies
/// could read everyone's.
pub fn inbox_prefix(service: &str) -> String {
    format!("_INBOX_{service}")
}

/// Connects to NATS as `service` (`NATS_URL` may list several servers,
/// comma-separated, for a cluster), with the credentials and TLS settings
/// given. The client reconnects on its own; the first connection is retried
/// too, so a binary can start before NATS is up.
pub async fn connect(
    args: &NatsArgs,
    service: &str,
) -> Result<async_nats::Client, NatsConnectError> {
    Ok(connect_options(args, service)
        .await?
        .retry_on_initial_connect()
        .connect(server_list(&args.nats_url))
        .await?)
}

/// The options [`connect`] uses: name, inbox prefix, timeouts, credentials
/// and TLS.
pub async fn connect_options(
    args: &NatsArgs,
    service: &str,
) -> Result<async_nats::ConnectOptions, NatsConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(service)
        .custom_inbox_prefix(inbox_prefix(service))
        .connection_timeout(Duration::from_secs(3))
        .request_timeout(Some(Duration::from_secs(10)));
    if let Some(path) = &args.nats_creds {
        options = options.credentials_file(path).await.map_err(|source| {
            NatsConnectError::Credentials {
                path: path.display().to_string(),
                source,
            }
        })?;
    } else if let Some(token) = &args.nats_token {
        options = options.token(token.clone());
    } else if let (Some(user), Some(password)) = (&args.nats_user, &args.nats_password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &args.nats_tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&args.nats_tls_cert, &args.nats_tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options)
}

/// `nats://a:4222,nats://b:4222` as a list of server URLs.
pub fn server_list(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, thiserror::Error)]
#[error("cannot ensure stream {stream}: {message}")]
pub struct EnsureStreamError {
    pub stream: String,
    pub message: String,
}

/// Creates `config`'s stream, or updates it in place when it exists, so
/// start-up is idempotent across versions and instances.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<(), EnsureStreamError> {
    let name = config.name.clone();
    let err = |message: String| EnsureStreamError {
        stream: name.clone(),
        message,
    };
    match js.get_stream(&name).await {
        Ok(_) => {
            js.update_stream(&config)
                .await
                .map_err(|e| err(e.to_string()))?;
        }
        Err(_) => {
            if let Err(create_err) = js.create_stream(config.clone()).await {
                // Lost a race with another instance: update instead.
                js.update_stream(&config)
                    .await
                    .map_err(|_| err(create_err.to_string()))?;
            }
        }
    }
    Ok(())
}

/// The streams this system owns, with their retention.
pub fn stream_configs(subjects: &Subjects, replicas: u8) -> Vec<stream::Config> {
    let replicas = usize::from(replicas);
    vec![
        stream::Config {
            name: subjects.calls_stream(),
            subjects: vec![subjects.calls_all()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 24 * 3600),
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.runtime_handoffs_stream(),
            subjects: vec![subjects.runtime_handoff_all()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            // A handoff is useless once its dispatch has expired.
            max_age: Duration::from_secs(3600),
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.runtime_events_stream(),
            subjects: vec![subjects.runtime_events_all()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 24 * 3600),
            num_replicas: replicas,
            ..Default::default()
        },
    ]
}

/// The stream of due webhook deliveries, owned by the automation-worker
/// (which relays into it and consumes it). Its messages only name a
/// delivery, Postgres holds the schedule, so a lost message costs a lease's
/// wait, not the event.
pub fn webhooks_stream_config(subjects: &Subjects, replicas: u8) -> stream::Config {
    stream::Config {
        name: subjects.webhooks_stream(),
        subjects: vec![subjects.webhooks_deliver_all()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        max_age: Duration::from_secs(3600),
        num_replicas: usize::from(replicas),
        ..Default::default()
    }
}

/// Ensures every stream of [`stream_configs`].
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: u8,
) -> Result<(), EnsureStreamError> {
    for config in stream_configs(subjects, replicas) {
        ensure_stream(js, config).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_list_splits_cluster_urls() {
        assert_eq!(
            server_list("nats://a:4222, nats://b:4222,"),
            vec!["nats://a:4222".to_owned(), "nats://b:4222".to_owned()]
        );
    }

    #[test]
    fn prefix_applies_to_subjects_and_streams() {
        let t = Uuid::nil();
        let bare = Subjects::new("");
        assert_eq!(bare.calls_inbound(t), format!("calls.inbound.{t}"));
        assert_eq!(bare.calls_stream(), "CALLS");
        let p = Subjects::new("t1");
        assert_eq!(p.calls_inbound(t), format!("t1.calls.inbound.{t}"));
        assert_eq!(p.calls_all(), "t1.calls.>");
        assert_eq!(p.calls_stream(), "t1_CALLS");
        assert_eq!(p.runtime_events(t, t), format!("t1.runtime.events.{t}.{t}"));
    }
}
