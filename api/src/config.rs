//! Settings of the api binary (flags and environment variables).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shared::config::{AuthArgs, CommonArgs, DbArgs, EncryptionArgs, NatsArgs};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "api",
    version,
    about = "Voice agent control plane: the authenticated API"
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address the HTTP server listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:4000")]
    pub listen_addr: SocketAddr,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub encryption: EncryptionArgs,
    /// Key for `POST /internal/dev/token` (header `x-dev-bootstrap-key`); the
    /// route does not exist in production.
    #[arg(long, env = "DEV_BOOTSTRAP_KEY", hide_env_values = true)]
    pub dev_bootstrap_key: Option<String>,
    /// Key for `POST /auth/bootstrap/user` (header `x-auth-bootstrap-key`);
    /// unset disables the route (401).
    #[arg(long, env = "AUTH_BOOTSTRAP_KEY", hide_env_values = true)]
    pub auth_bootstrap_key: Option<String>,
    /// Lifetime of tokens issued by login and first-admin registration.
    #[arg(long, env = "JWT_TTL", default_value = "1h", value_parser = shared::config::positive_duration)]
    pub jwt_ttl: Duration,
    /// Largest number of password hashes computed at once (each holds 19 MiB).
    #[arg(long, env = "PASSWORD_HASH_CONCURRENCY", default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub password_hash_concurrency: usize,
    /// Failed logins for one email within `LOGIN_FAILURE_WINDOW` before 429.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_EMAIL", default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub login_max_failures_per_email: usize,
    /// Failed logins from one client address within the window before 429.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_IP", default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub login_max_failures_per_ip: usize,
    /// Window over which failed logins are counted.
    #[arg(long, env = "LOGIN_FAILURE_WINDOW", default_value = "15m", value_parser = shared::config::positive_duration)]
    pub login_failure_window: Duration,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "HTTP_BODY_LIMIT_BYTES", default_value_t = 1024 * 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=64 * 1024 * 1024))]
    pub http_body_limit_bytes: usize,
    /// Time a request may take before it is answered 503.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT", default_value = "30s", value_parser = shared::config::positive_duration)]
    pub http_request_timeout: Duration,
    /// Tool calls must use tools on the allowlist of the call's agent version
    /// (`agent_version_tools`); when false every tool of the tenant with an
    /// endpoint may be used.
    #[arg(long, env = "AUTOMATION_REQUIRE_AGENT_TOOL_MAPPING", default_value_t = false, action = clap::ArgAction::Set)]
    pub automation_require_agent_tool_mapping: bool,
    /// Tool executions allowed per call in any 60 s window; more get 429.
    #[arg(long, env = "AUTOMATION_MAX_EXECUTIONS_PER_MINUTE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub automation_max_executions_per_minute: u32,
    /// Deadline of one tool execution (all its attempts), and how long the
    /// api waits for automation-worker before answering 504.
    #[arg(long, env = "AUTOMATION_EXECUTE_TIMEOUT", default_value = "15s", value_parser = shared::config::positive_duration)]
    pub automation_execute_timeout: Duration,
    /// How long the api waits for automation-worker's n8n integration test.
    #[arg(long, env = "AUTOMATION_INTEGRATION_TEST_TIMEOUT", default_value = "20s", value_parser = shared::config::positive_duration)]
    pub automation_integration_test_timeout: Duration,
    /// Return recording media URLs from `GET /client/calls/{id}/recording`;
    /// when false the answer only says that a recording (and a URL) exists.
    #[arg(long, env = "RECORDINGS_EXPOSE_URL", default_value_t = false, action = clap::ArgAction::Set)]
    pub recordings_expose_url: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("api").chain(args.iter().copied()))
    }

    #[test]
    fn zero_timeouts_and_counts_are_refused() {
        assert!(parse(&[]).is_ok(), "the defaults are valid");
        for args in [
            ["--automation-execute-timeout", "0s"],
            ["--automation-integration-test-timeout", "0s"],
            ["--password-hash-concurrency", "0"],
            ["--login-max-failures-per-ip", "0"],
            ["--http-body-limit-bytes", "10"],
            ["--database-max-connections", "0"],
        ] {
            assert!(parse(&args).is_err(), "{args:?} was accepted");
        }
    }
}
