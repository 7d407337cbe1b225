//! Settings of the api binary (flags and environment variables).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shared::config::{
    AuthArgs, CommonArgs, ConfigError, DbArgs, EncryptionArgs, NatsArgs, ProductionCheck,
    UnsafeProductionConfig, redacted,
};

// Debug by hand: the bootstrap keys must never reach a log line.
#[derive(Clone, Parser)]
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
    /// route does not exist in production. At least 32 characters in production.
    #[arg(long, env = "DEV_BOOTSTRAP_KEY", hide_env_values = true)]
    pub dev_bootstrap_key: Option<String>,
    /// Key for `POST /auth/bootstrap/user` (header `x-auth-bootstrap-key`);
    /// unset disables the route (401). At least 32 characters in production.
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
    /// Proxies (CIDRs or addresses, comma-separated) whose `X-Forwarded-For`
    /// names the client for login throttling; empty: the TCP peer is the
    /// client and the header is ignored.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::auth::client_addr::parse_trusted_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
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
    /// endpoint may be used. Default: true in production, false in development.
    #[arg(long, env = "AUTOMATION_REQUIRE_AGENT_TOOL_MAPPING", action = clap::ArgAction::Set)]
    pub automation_require_agent_tool_mapping: Option<bool>,
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
    /// Connections of the client surface's own read pool (`/client/*`),
    /// apart from the pool that serves claims and tool executions.
    #[arg(long, env = "CLIENT_READ_MAX_CONNECTIONS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub client_read_max_connections: u32,
    /// Longest a client read may run before Postgres cancels it (503
    /// `read_timeout`).
    #[arg(long, env = "CLIENT_READ_STATEMENT_TIMEOUT", default_value = "5s", value_parser = shared::config::positive_duration)]
    pub client_read_statement_timeout: Duration,
    /// Client reads one tenant may have in flight; one more waits 250 ms for
    /// a slot, then gets 429.
    #[arg(long, env = "CLIENT_READS_PER_TENANT", default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub client_reads_per_tenant: usize,
    /// Largest agent version `config`, in bytes of JSON; larger gets 413.
    #[arg(long, env = "MAX_AGENT_CONFIG_BYTES", default_value_t = 64 * 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=16 * 1024 * 1024))]
    pub max_agent_config_bytes: usize,
    /// Largest tool `input_schema`, in bytes of JSON; larger gets 413.
    #[arg(long, env = "MAX_TOOL_SCHEMA_BYTES", default_value_t = 64 * 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=16 * 1024 * 1024))]
    pub max_tool_schema_bytes: usize,
    /// Largest tool call `input_json`, in bytes of JSON; larger gets 413
    /// before anything is recorded (so does an input that, with its
    /// context, would not fit in one NATS message).
    #[arg(long, env = "MAX_TOOL_INPUT_BYTES", default_value_t = 64 * 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=16 * 1024 * 1024))]
    pub max_tool_input_bytes: usize,
    /// Return recording media URLs from `GET /client/calls/{id}/recording`;
    /// when false the answer only says that a recording (and a URL) exists.
    #[arg(long, env = "RECORDINGS_EXPOSE_URL", default_value_t = false, action = clap::ArgAction::Set)]
    pub recordings_expose_url: bool,
    /// Lets event webhook URLs name loopback, private and link-local
    /// addresses: the automation-worker's setting of the same name, which
    /// the worker applies again at every attempt. Development and tests
    /// only; refused in production.
    #[arg(long, env = "AUTOMATION_ALLOW_PRIVATE_NETWORKS", default_value_t = false, action = clap::ArgAction::Set)]
    pub automation_allow_private_networks: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations, reseal legacy secrets and exit.
    Migrate,
}

impl Config {
    /// Every reason this configuration is unsafe in production (none in
    /// development); checked at start-up before anything else.
    pub fn check_production(&self) -> Result<(), UnsafeProductionConfig> {
        ProductionCheck::new(&self.common)
            .auth(&self.auth)
            .encryption(&self.encryption)
            .bootstrap_key("AUTH_BOOTSTRAP_KEY", self.auth_bootstrap_key.as_deref())
            .bootstrap_key("DEV_BOOTSTRAP_KEY", self.dev_bootstrap_key.as_deref())
            .refuse(
                self.automation_allow_private_networks,
                ConfigError::PrivateNetworksAllowed,
            )
            .finish()
    }

    /// `AUTOMATION_REQUIRE_AGENT_TOOL_MAPPING`, or by default true in
    /// production and false in development.
    pub fn require_agent_tool_mapping(&self) -> bool {
        self.automation_require_agent_tool_mapping
            .unwrap_or(self.common.is_production())
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            command,
            listen_addr,
            common,
            db,
            nats,
            auth,
            encryption,
            dev_bootstrap_key,
            auth_bootstrap_key,
            jwt_ttl,
            password_hash_concurrency,
            login_max_failures_per_email,
            login_max_failures_per_ip,
            trusted_proxies,
            login_failure_window,
            http_body_limit_bytes,
            http_request_timeout,
            automation_require_agent_tool_mapping,
            automation_max_executions_per_minute,
            automation_execute_timeout,
            automation_integration_test_timeout,
            client_read_max_connections,
            client_read_statement_timeout,
            client_reads_per_tenant,
            max_agent_config_bytes,
            max_tool_schema_bytes,
            max_tool_input_bytes,
            recordings_expose_url,
            automation_allow_private_networks,
        } = self;
        f.debug_struct("Config")
            .field("command", command)
            .field("listen_addr", listen_addr)
            .field("common", common)
            .field("db", db)
            .field("nats", nats)
            .field("auth", auth)
            .field("encryption", encryption)
            .field("dev_bootstrap_key", &redacted(dev_bootstrap_key))
            .field("auth_bootstrap_key", &redacted(auth_bootstrap_key))
            .field("jwt_ttl", jwt_ttl)
            .field("password_hash_concurrency", password_hash_concurrency)
            .field("login_max_failures_per_email", login_max_failures_per_email)
            .field("login_max_failures_per_ip", login_max_failures_per_ip)
            .field("trusted_proxies", trusted_proxies)
            .field("login_failure_window", login_failure_window)
            .field("http_body_limit_bytes", http_body_limit_bytes)
            .field("http_request_timeout", http_request_timeout)
            .field(
                "automation_require_agent_tool_mapping",
                automation_require_agent_tool_mapping,
            )
            .field(
                "automation_max_executions_per_minute",
                automation_max_executions_per_minute,
            )
            .field("automation_execute_timeout", automation_execute_timeout)
            .field(
                "automation_integration_test_timeout",
                automation_integration_test_timeout,
            )
            .field("client_read_max_connections", client_read_max_connections)
            .field(
                "client_read_statement_timeout",
                client_read_statement_timeout,
            )
            .field("client_reads_per_tenant", client_reads_per_tenant)
            .field("max_agent_config_bytes", max_agent_config_bytes)
            .field("max_tool_schema_bytes", max_tool_schema_bytes)
            .field("max_tool_input_bytes", max_tool_input_bytes)
            .field("recordings_expose_url", recordings_expose_url)
            .field(
                "automation_allow_private_networks",
                automation_allow_private_networks,
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use shared::config::{AppEnv, ConfigError, DEV_ENCRYPTION_KEY, DEV_JWT_SECRET};

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("api").chain(args.iter().copied()))
    }

    /// 32 bytes of base64 that are not the development key.
    const KEY: &str = "b3RoZXItMzItYnl0ZS1rZXktZm9yLXRoZS10ZXN0cyE=";
    const JWT: &str = "jwt-secret-of-this-deployment-0123456789";
    const AUTH_KEY: &str = "auth-bootstrap-key-of-this-deployment-0123";
    const DEV_KEY: &str = "dev-bootstrap-key-of-this-deployment-01234";

    /// A production configuration with this deployment's own secrets; every
    /// field the tests look at is set here, whatever the caller's environment.
    fn production() -> Config {
        let mut config = parse(&[]).expect("parses");
        config.common.app_env = AppEnv::Production;
        config.auth.jwt_secret = Some(JWT.into());
        config.encryption.encryption_key = Some(KEY.into());
        config.auth_bootstrap_key = None;
        config.dev_bootstrap_key = None;
        config.automation_require_agent_tool_mapping = None;
        config
    }

    fn development() -> Config {
        let mut config = production();
        config.common.app_env = AppEnv::Development;
        config
    }

    #[test]
    fn app_env_flag_parses() {
        let dev = parse(&["--app-env", "development"]).expect("parses");
        assert_eq!(dev.common.app_env, AppEnv::Development);
        let prod = parse(&["--app-env", "production"]).expect("parses");
        assert_eq!(prod.common.app_env, AppEnv::Production);
    }

    #[test]
    fn production_accepts_own_secrets_and_long_bootstrap_keys() {
        let mut config = production();
        assert_eq!(config.check_production(), Ok(()));
        config.auth_bootstrap_key = Some(AUTH_KEY.into());
        config.dev_bootstrap_key = Some(DEV_KEY.into());
        assert_eq!(config.check_production(), Ok(()));
    }

    #[test]
    fn production_refuses_development_secrets_and_short_bootstrap_keys() {
        let mut config = production();
        config.auth.jwt_secret = Some(DEV_JWT_SECRET.into());
        config.encryption.encryption_key = Some(DEV_ENCRYPTION_KEY.into());
        config.auth_bootstrap_key = Some(String::new());
        config.dev_bootstrap_key = Some("dev-bootstrap-key".into());
        let refused = config.check_production().expect_err("refused");
        assert_eq!(
            refused.problems,
            [
                ConfigError::DevelopmentJwtSecret,
                ConfigError::DevelopmentEncryptionKey,
                ConfigError::ShortBootstrapKey {
                    name: "AUTH_BOOTSTRAP_KEY",
                    chars: 0
                },
                ConfigError::ShortBootstrapKey {
                    name: "DEV_BOOTSTRAP_KEY",
                    chars: 17
                },
            ]
        );
        let mut short = production();
        short.auth_bootstrap_key = Some(AUTH_KEY[..31].into());
        assert!(short.check_production().is_err());
        // Secrets left unset are refused too (no development fallback).
        let mut defaulted = production();
        defaulted.auth.jwt_secret = None;
        defaulted.encryption.encryption_key = None;
        assert_eq!(
            defaulted.check_production().map_err(|e| e.problems),
            Err(vec![
                ConfigError::MissingJwtSecret,
                ConfigError::MissingEncryptionKey
            ])
        );
    }

    #[test]
    fn development_accepts_the_development_settings() {
        let mut config = development();
        config.auth.jwt_secret = None;
        config.encryption.encryption_key = Some(DEV_ENCRYPTION_KEY.into());
        config.auth_bootstrap_key = Some("k".into());
        assert_eq!(config.check_production(), Ok(()));
    }

    #[test]
    fn agent_tool_mapping_is_required_by_default_in_production() {
        assert!(production().require_agent_tool_mapping());
        assert!(!development().require_agent_tool_mapping());
        // An explicit value wins either way.
        let mut off = production();
        off.automation_require_agent_tool_mapping = Some(false);
        assert!(!off.require_agent_tool_mapping());
        let mut on = development();
        on.automation_require_agent_tool_mapping = Some(true);
        assert!(on.require_agent_tool_mapping());
        // The flag takes an explicit value and stays unset when not given.
        let given = parse(&["--automation-require-agent-tool-mapping", "false"]).expect("parses");
        assert_eq!(given.automation_require_agent_tool_mapping, Some(false));
    }

    #[test]
    fn debug_redacts_secrets() {
        let mut config = production();
        config.auth_bootstrap_key = Some(AUTH_KEY.into());
        config.dev_bootstrap_key = Some(DEV_KEY.into());
        let printed = format!("{config:?}");
        for secret in [AUTH_KEY, DEV_KEY, JWT, KEY] {
            assert!(!printed.contains(secret), "{secret} printed in {printed}");
        }
        assert!(
            printed.contains("auth_bootstrap_key: Some(\"<redacted>\")"),
            "{printed}"
        );
        assert!(
            printed.contains("dev_bootstrap_key: Some(\"<redacted>\")"),
            "{printed}"
        );
        assert!(
            printed.contains("jwt_ttl"),
            "other settings still print: {printed}"
        );
        let settings = format!("{:?}", crate::startup::settings(&config));
        for secret in [AUTH_KEY, DEV_KEY] {
            assert!(!settings.contains(secret), "{secret} printed in {settings}");
        }
        assert!(
            settings.contains("auth_bootstrap_key: Some(\"<redacted>\")"),
            "{settings}"
        );
    }

    #[test]
    fn settings_resolve_the_agent_tool_mapping_default() {
        let prod = crate::startup::settings(&production());
        assert!(prod.automation.require_agent_tool_mapping);
        let dev = crate::startup::settings(&development());
        assert!(!dev.automation.require_agent_tool_mapping);
    }

    #[test]
    fn trusted_proxies_parse_from_a_comma_separated_list() {
        assert!(parse(&[]).expect("parses").trusted_proxies.is_empty());
        let config =
            parse(&["--trusted-proxies", "10.0.0.0/8, 192.0.2.1,fd00::/8"]).expect("parses");
        let printed: Vec<String> = config
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(printed, ["10.0.0.0/8", "192.0.2.1/32", "fd00::/8"]);
        assert!(parse(&["--trusted-proxies", "10.0.0.0/8,lb.internal"]).is_err());
    }

    #[test]
    fn zero_timeouts_and_counts_are_refused() {
        assert!(parse(&[]).is_ok(), "the defaults are valid");
        for args in [
            ["--automation-execute-timeout", "0s"],
            ["--automation-integration-test-timeout", "0s"],
            ["--password-hash-concurrency", "0"],
            ["--client-reads-per-tenant", "0"],
            ["--client-read-statement-timeout", "0s"],
            ["--login-max-failures-per-ip", "0"],
            ["--http-body-limit-bytes", "10"],
            ["--database-max-connections", "0"],
        ] {
            assert!(parse(&args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn every_setting_is_in_docs_configuration_md() {
        use clap::CommandFactory;
        shared::testing::configuration_doc::assert_documented(&Config::command(), "api");
    }
}
