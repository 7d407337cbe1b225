//! Settings, from flags or the environment.

use std::time::Duration;

use clap::Parser;
use shared::config::{LogFormat, NatsArgs};
use url::Url;

#[derive(Clone, Parser)]
#[command(name = "reference-runtime", about = "A reference voice runtime")]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The api's base URL.
    #[arg(long, env = "RUNTIME_API_URL", default_value = "http://127.0.0.1:4000")]
    pub api_url: Url,
    /// A `runtime` token of the tenant this runtime serves: it claims
    /// dispatches and runs tools, nothing more.
    #[arg(long, env = "RUNTIME_API_TOKEN", hide_env_values = true)]
    pub api_token: String,
    /// The durable consumer's name on RUNTIME_HANDOFFS (one per runtime
    /// fleet and tenant; its instances share it).
    #[arg(long, env = "RUNTIME_CONSUMER", default_value = "reference-runtime")]
    pub consumer: String,
    /// Pause before each turn of the scripted conversation.
    #[arg(long, env = "RUNTIME_TURN_PAUSE", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub turn_pause: Duration,
    /// Calls held at once.
    #[arg(long, env = "RUNTIME_MAX_CALLS", default_value_t = 32)]
    pub max_calls: usize,
    /// Log line format; filter with `RUST_LOG`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

// By hand: the token must never reach a log line.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("nats_url", &self.nats.nats_url)
            .field("api_url", &self.api_url.as_str())
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}
