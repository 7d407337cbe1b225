//! Settings of the dispatch-worker binary (flags and environment variables).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shared::config::{
    CommonArgs, DbArgs, EncryptionArgs, NatsArgs, ProductionCheck, UnsafeProductionConfig,
};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "dispatch-worker",
    version,
    about = "Voice agent control plane: owns the call lifecycle and runtime dispatches"
)]
pub struct Config {
    /// Address for health, readiness and metrics.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:4003")]
    pub listen_addr: SocketAddr,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub encryption: EncryptionArgs,
    /// Seconds a runtime has to claim a dispatch before it expires.
    #[arg(long, env = "DISPATCH_TTL_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub dispatch_ttl_seconds: u32,
    /// Outbox events still unpublished this long after their commit are
    /// published by the relay.
    #[arg(long, env = "RELAY_PUBLISH_AFTER", default_value = "2s", value_parser = shared::config::positive_duration)]
    pub relay_publish_after: Duration,
    /// Events published but not processed this long ago are published again.
    #[arg(long, env = "RELAY_REPUBLISH_AFTER", default_value = "30s", value_parser = shared::config::positive_duration)]
    pub relay_republish_after: Duration,
    /// How often the relay looks for due events.
    #[arg(long, env = "RELAY_INTERVAL", default_value = "500ms", value_parser = shared::config::positive_duration)]
    pub relay_interval: Duration,
    /// Events the relay takes per round.
    #[arg(long, env = "RELAY_BATCH", default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub relay_batch: i64,
    /// How often pending dispatches past their expiry are expired.
    #[arg(long, env = "DISPATCH_EXPIRY_INTERVAL", default_value = "5s", value_parser = shared::config::positive_duration)]
    pub dispatch_expiry_interval: Duration,
    /// How often the KPI rollups are brought up to date (hours that ended,
    /// hours whose rows changed since).
    #[arg(long, env = "KPI_ROLLUP_INTERVAL", default_value = "30s", value_parser = shared::config::positive_duration)]
    pub kpi_rollup_interval: Duration,
    /// How often each tenant's calls older than its `retention_days` are
    /// purged (one instance at a time across the deployment).
    #[arg(long, env = "RETENTION_PURGE_INTERVAL", default_value = "1h", value_parser = shared::config::positive_duration)]
    pub retention_purge_interval: Duration,
    /// Calls the purge (and a tenant's off-boarding) deletes per
    /// transaction.
    #[arg(long, env = "RETENTION_PURGE_BATCH", default_value_t = shared::retention::Pace::DEFAULT.batch, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub retention_purge_batch: i64,
    /// The most of the time the purge's batches may fill: after each it
    /// rests so that it stays out of the inbound path's way.
    #[arg(long, env = "RETENTION_PURGE_DUTY", default_value_t = shared::retention::Pace::DEFAULT.duty, value_parser = shared::config::share_of_time)]
    pub retention_purge_duty: f64,
    /// A call still counted against its tenant's concurrent-call limit
    /// this long after it rang (its end never reached us) stops counting.
    #[arg(long, env = "MAX_CALL_DURATION", default_value = "2h", value_parser = shared::config::positive_duration)]
    pub max_call_duration: Duration,
    /// Runtime events handled concurrently.
    #[arg(long, env = "DISPATCH_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Most call events committed in one transaction (the messages already
    /// waiting are taken together; a lone message is handled at once).
    #[arg(long, env = "DISPATCH_BATCH_SIZE", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub batch_size: u16,
    /// Call-event batches in flight at once.
    #[arg(long, env = "DISPATCH_PARALLEL_BATCHES", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel_batches: u16,
    /// How long a batch waits after its first call event for more; `0ms`
    /// takes only what is already waiting.
    #[arg(long, env = "DISPATCH_BATCH_LINGER", default_value = "2ms", value_parser = shared::config::linger)]
    pub batch_linger: Duration,
}

impl Config {
    /// Every reason this configuration is unsafe in production (none in
    /// development); checked at start-up before anything else.
    pub fn check_production(&self) -> Result<(), UnsafeProductionConfig> {
        ProductionCheck::new(&self.common)
            .encryption(&self.encryption)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("dispatch-worker").chain(args.iter().copied()))
    }

    #[test]
    fn production_refuses_missing_or_development_key() {
        use shared::config::{AppEnv, ConfigError, DEV_ENCRYPTION_KEY};
        let mut config = parse(&[]).expect("defaults are valid");
        config.common.app_env = AppEnv::Production;
        config.encryption.encryption_key = None;
        assert_eq!(
            config.check_production().map_err(|e| e.problems),
            Err(vec![ConfigError::MissingEncryptionKey])
        );
        config.encryption.encryption_key = Some(DEV_ENCRYPTION_KEY.into());
        assert_eq!(
            config.check_production().map_err(|e| e.problems),
            Err(vec![ConfigError::DevelopmentEncryptionKey])
        );
        config.common.app_env = AppEnv::Development;
        assert_eq!(config.check_production(), Ok(()));
    }

    #[test]
    fn defaults_parse() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.relay_interval, Duration::from_millis(500));
        assert_eq!(config.relay_batch, 500);
    }

    #[test]
    fn zero_intervals_and_negative_batches_are_refused() {
        for args in [
            ["--relay-interval", "0s"],
            ["--dispatch-expiry-interval", "0ms"],
            ["--relay-publish-after", "0s"],
            ["--relay-batch", "-1"],
            ["--relay-batch", "0"],
        ] {
            assert!(parse(&args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn every_setting_is_in_docs_configuration_md() {
        use clap::CommandFactory;
        shared::testing::configuration_doc::assert_documented(
            &Config::command(),
            "dispatch-worker",
        );
    }
}
