//! Settings of the automation-worker binary (flags and environment variables).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shared::config::{
    CommonArgs, ConfigError, DbArgs, EncryptionArgs, NatsArgs, ProductionCheck,
    UnsafeProductionConfig,
};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "automation-worker",
    version,
    about = "Voice agent control plane: runs tool calls and n8n integration tests"
)]
pub struct Config {
    /// Address for health, readiness and metrics.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:4002")]
    pub listen_addr: SocketAddr,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub encryption: EncryptionArgs,
    #[command(flatten)]
    pub automation: AutomationArgs,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
}

/// Tenant event webhooks (docs/decisions/0048-tenant-event-webhooks.md).
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// The delays before each attempt of a delivery, comma-separated; the
    /// number of delays is the number of attempts.
    #[arg(long = "webhook-retry-schedule", env = "WEBHOOK_RETRY_SCHEDULE", default_value = shared::webhooks::DEFAULT_RETRY_SCHEDULE, value_parser = shared::webhooks::RetrySchedule::parse)]
    pub retry_schedule: shared::webhooks::RetrySchedule,
    /// How long one attempt may take.
    #[arg(id = "webhook_timeout", long = "webhook-timeout", env = "WEBHOOK_TIMEOUT", default_value = "15s", value_parser = shared::config::positive_duration)]
    pub timeout: Duration,
    /// How often due deliveries are looked for in Postgres.
    #[arg(long = "webhook-poll-interval", env = "WEBHOOK_POLL_INTERVAL", default_value = "20ms", value_parser = shared::config::positive_duration)]
    pub poll_interval: Duration,
    /// Attempts at once to one endpoint, per instance.
    #[arg(long = "webhook-endpoint-concurrency", env = "WEBHOOK_ENDPOINT_CONCURRENCY", default_value_t = 16, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub endpoint_concurrency: usize,
    /// Deliveries waiting behind those for one endpoint, per instance;
    /// more go back to Postgres for a second.
    #[arg(long = "webhook-endpoint-queue", env = "WEBHOOK_ENDPOINT_QUEUE", default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=100_000))]
    pub endpoint_queue: usize,
    /// Deliveries in hand at once, per instance (the consumer's
    /// unacknowledged messages).
    #[arg(id = "webhook_max_in_flight", long = "webhook-max-in-flight", env = "WEBHOOK_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    pub max_in_flight: usize,
    /// An endpoint whose every attempt has failed for this long is disabled.
    #[arg(long = "webhook-disable-after", env = "WEBHOOK_DISABLE_AFTER", default_value = "5days", value_parser = humantime::parse_duration)]
    pub disable_after: Duration,
    /// `call.recording_ready` carries the recording's URL (the api's setting
    /// of the same name).
    #[arg(long, env = "RECORDINGS_EXPOSE_URL", default_value_t = false, action = clap::ArgAction::Set)]
    pub recordings_expose_url: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AutomationArgs {
    /// Lets n8n base URLs resolve to loopback, private, link-local and
    /// unique-local addresses. For local development and tests only; the
    /// cloud metadata address stays refused unless this is set too.
    #[arg(long, env = "AUTOMATION_ALLOW_PRIVATE_NETWORKS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private_networks: bool,
    /// Per-attempt timeout of the integration probe (`GET <base>/healthz`).
    #[arg(long, env = "AUTOMATION_PROBE_TIMEOUT", default_value = "3s", value_parser = shared::config::positive_duration)]
    pub probe_timeout: Duration,
    /// Retries of the integration probe after the first attempt.
    #[arg(long, env = "AUTOMATION_PROBE_RETRIES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub probe_retries: u32,
    /// First retry backoff; doubled per attempt, jittered, capped at
    /// `AUTOMATION_BACKOFF_MAX`.
    #[arg(long, env = "AUTOMATION_BACKOFF_BASE", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub backoff_base: Duration,
    #[arg(long, env = "AUTOMATION_BACKOFF_MAX", default_value = "2s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// Largest n8n answer kept as a tool's output; larger answers fail with
    /// `output_too_large`.
    #[arg(long, env = "AUTOMATION_MAX_OUTPUT_BYTES", default_value_t = 64 * 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16 * 1024 * 1024))]
    pub max_output_bytes: usize,
    /// Largest number of tool calls and probes run at once by this instance.
    #[arg(long, env = "AUTOMATION_MAX_IN_FLIGHT", default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    pub max_in_flight: usize,
    /// Wait for Postgres to flush the WAL when recording an execution's
    /// outcome (that flush also covers the api's queued row and the running
    /// mark, both committed without waiting). On by default: Postgres is the
    /// record, and the caller is answered only after it. Off saves that one
    /// flush, but a Postgres crash can then lose the last fraction of a
    /// second of execution records.
    #[arg(long, env = "AUTOMATION_SYNCHRONOUS_COMMIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub synchronous_commit: bool,
    /// How often executions past their deadline are marked `worker_lost`.
    #[arg(long, env = "AUTOMATION_REAPER_INTERVAL", default_value = "5s", value_parser = shared::config::positive_duration)]
    pub reaper_interval: Duration,
    /// How long past its deadline an open execution is left alone before the
    /// reaper marks it `worker_lost` (lets a slow reply land first).
    #[arg(long, env = "AUTOMATION_REAPER_GRACE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub reaper_grace: Duration,
    /// This instance's name in logs (`worker_id`), in the `tool.succeeded` /
    /// `tool.failed` timeline events and in the `worker-id` reply header, so
    /// one can tell which of several instances ran an execution. Default:
    /// `aw-` and 8 random hex digits, new at every start.
    #[arg(long, env = "AUTOMATION_WORKER_ID")]
    pub worker_id: Option<String>,
}

impl AutomationArgs {
    /// The configured worker id, or a fresh random one.
    pub fn resolved_worker_id(&self) -> String {
        match self.worker_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => format!("aw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        }
    }
}

impl Config {
    /// Every reason this configuration is unsafe in production (none in
    /// development); checked at start-up before anything else.
    pub fn check_production(&self) -> Result<(), UnsafeProductionConfig> {
        ProductionCheck::new(&self.common)
            .encryption(&self.encryption)
            .refuse(
                self.automation.allow_private_networks,
                ConfigError::PrivateNetworksAllowed,
            )
            .finish()
    }

    /// Defaults, as if started with no flags and no environment (tests).
    pub fn defaults() -> Self {
        // No flag is required, so parsing an empty command line cannot fail
        // unless the environment holds a malformed value.
        Self::parse_from(["automation-worker"])
    }
}

#[cfg(test)]
mod tests {
    use shared::config::{AppEnv, DEV_ENCRYPTION_KEY};

    use super::*;

    /// 32 bytes of base64 that are not the development key.
    const KEY: &str = "b3RoZXItMzItYnl0ZS1rZXktZm9yLXRoZS10ZXN0cyE=";

    fn config(env: AppEnv) -> Config {
        let mut config = Config::try_parse_from(["automation-worker"]).expect("parses");
        config.common.app_env = env;
        config.encryption.encryption_key = Some(KEY.into());
        config.automation.allow_private_networks = false;
        config
    }

    #[test]
    fn production_refuses_the_development_key_and_private_networks() {
        assert_eq!(config(AppEnv::Production).check_production(), Ok(()));
        let mut unsafe_config = config(AppEnv::Production);
        unsafe_config.encryption.encryption_key = Some(DEV_ENCRYPTION_KEY.into());
        unsafe_config.automation.allow_private_networks = true;
        assert_eq!(
            unsafe_config.check_production().map_err(|e| e.problems),
            Err(vec![
                ConfigError::DevelopmentEncryptionKey,
                ConfigError::PrivateNetworksAllowed
            ])
        );
        let mut dev = config(AppEnv::Development);
        dev.encryption.encryption_key = None;
        dev.automation.allow_private_networks = true;
        assert_eq!(dev.check_production(), Ok(()));
    }

    #[test]
    fn every_setting_is_in_docs_configuration_md() {
        use clap::CommandFactory;
        shared::testing::configuration_doc::assert_documented(
            &Config::command(),
            "automation-worker",
        );
    }
}
