//! Settings shared by the binaries, as clap argument groups that each binary
//! flattens into its own `Config`. Every setting is a flag and an environment
//! variable; secrets never echo their values in `--help`.

use std::fmt;

use base64::Engine;
use clap::{Args, ValueEnum};

/// Where the process runs. `production` refuses weak, missing or
/// development secrets and turns off development conveniences (the dev token
/// route, `http://` n8n URLs). It is the default, so a deployment that forgets
/// `APP_ENV` is never insecure; local scripts and tests say `development`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AppEnv {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// `development` or `production` (the default: development must be asked for).
    #[arg(long, env = "APP_ENV", value_enum, default_value = "production")]
    pub app_env: AppEnv,
    /// Log line format; filter with `RUST_LOG` (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

impl CommonArgs {
    pub fn is_production(&self) -> bool {
        self.app_env == AppEnv::Production
    }
}

#[derive(Clone, Args)]
pub struct DbArgs {
    /// Postgres connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/voice_control_plane",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Largest number of pooled Postgres connections.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
}

impl fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbArgs")
            .field("database_url", &"<redacted>")
            .field("database_max_connections", &self.database_max_connections)
            .finish()
    }
}

/// How a binary reaches NATS and who it is there. Each service has its own
/// NATS user with only the subjects its flow needs (deploy/nats/nats.conf,
/// docs/decisions/0039-least-privilege-on-the-bus.md).
#[derive(Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL (JetStream enabled).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Prefix for every subject and stream this deployment uses (letters,
    /// digits, `_`, `-`). Empty in production; tests set one each for isolation.
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = "", value_parser = parse_prefix)]
    pub nats_subject_prefix: String,
    /// JetStream replicas for the streams this deployment creates (3 on a cluster).
    #[arg(long, env = "NATS_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_stream_replicas: u8,
    /// This service's NATS user (with `NATS_PASSWORD`).
    #[arg(long, env = "NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// The password of `NATS_USER`.
    #[arg(
        long,
        env = "NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,
    /// A token, for a server that authenticates by token instead of users.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true, conflicts_with_all = ["nats_user", "nats_creds"])]
    pub nats_token: Option<String>,
    /// A credentials file (user JWT and NKey seed), for decentralized auth.
    #[arg(long, env = "NATS_CREDS", conflicts_with = "nats_user")]
    pub nats_creds: Option<std::path::PathBuf>,
    /// CA certificate (PEM) the server's certificate must chain to; makes TLS
    /// required.
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for a server that verifies clients.
    #[arg(long, env = "NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<std::path::PathBuf>,
}

impl NatsArgs {
    /// `url` and `prefix` with one replica and no credentials or TLS, as
    /// parsing no flags gives them: for tests and tools that set up a
    /// connection by hand.
    pub fn plain(url: &str, prefix: &str) -> Self {
        Self {
            nats_url: url.to_owned(),
            nats_subject_prefix: prefix.to_owned(),
            nats_stream_replicas: 1,
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_creds: None,
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
        }
    }
}

impl fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |set: bool| if set { "<redacted>" } else { "<unset>" };
        f.debug_struct("NatsArgs")
            .field("nats_url", &self.nats_url)
            .field("nats_subject_prefix", &self.nats_subject_prefix)
            .field("nats_stream_replicas", &self.nats_stream_replicas)
            .field("nats_user", &self.nats_user)
            .field("nats_password", &redacted(self.nats_password.is_some()))
            .field("nats_token", &redacted(self.nats_token.is_some()))
            .field("nats_creds", &self.nats_creds)
            .field("nats_tls_ca", &self.nats_tls_ca)
            .field("nats_tls_cert", &self.nats_tls_cert)
            .field("nats_tls_key", &self.nats_tls_key)
            .finish()
    }
}

/// A duration of at least one millisecond, for intervals, TTLs and timeouts:
/// a zero would make `tokio::time::interval` panic inside a spawned task (which
/// then dies silently) or make every request time out at once.
pub fn positive_duration(value: &str) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if duration < std::time::Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(duration)
}

/// A wait added to batch work, from zero to one second: a batch held longer
/// would only delay the calls in it.
pub fn linger(value: &str) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if duration > std::time::Duration::from_secs(1) {
        return Err("must be at most 1s".into());
    }
    Ok(duration)
}

/// A share of the time, in (0, 1] (the retention purge's duty).
pub fn share_of_time(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(share) if share > 0.0 && share <= 1.0 => Ok(share),
        _ => Err(format!(
            "{value:?} is not a share of the time in (0, 1], such as 0.2"
        )),
    }
}

fn parse_prefix(value: &str) -> Result<String, String> {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(value.to_owned())
    } else {
        Err("only letters, digits, '_' and '-' are allowed".into())
    }
}

/// JWT settings. The secret is checked by [`AuthArgs::validate`].
#[derive(Clone, Args)]
pub struct AuthArgs {
    /// HS256 signing secret; at least 32 bytes in production.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Issuer (`iss`) put in and required of every token.
    #[arg(long, env = "JWT_ISSUER", default_value = "voice-control-plane")]
    pub jwt_issuer: String,
    /// Audience (`aud`) put in and required of every token.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "voice-control-plane-api")]
    pub jwt_audience: String,
}

impl fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthArgs")
            .field("jwt_secret", &"<redacted>")
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .finish()
    }
}

/// A development-only JWT secret, used when `JWT_SECRET` is unset outside production.
pub const DEV_JWT_SECRET: &str = "development-only-jwt-secret-change-me-0123456789";
/// A development-only AES key (32 zero-free bytes, base64), used when
/// `ENCRYPTION_KEY` is unset outside production.
pub const DEV_ENCRYPTION_KEY: &str = "ZGV2ZWxvcG1lbnQtb25seS1rZXktMzItYnl0ZXMhISE=";

/// Shortest bootstrap key (`AUTH_BOOTSTRAP_KEY`, `DEV_BOOTSTRAP_KEY`)
/// accepted in production, in characters.
pub const MIN_BOOTSTRAP_KEY_CHARS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("JWT_SECRET is required in production")]
    MissingJwtSecret,
    #[error("JWT_SECRET must be at least 32 bytes in production (got {0})")]
    WeakJwtSecret(usize),
    #[error("JWT_SECRET is the development secret, which is public; set a secret of your own")]
    DevelopmentJwtSecret,
    #[error("ENCRYPTION_KEY is required in production (32 bytes, base64)")]
    MissingEncryptionKey,
    #[error("ENCRYPTION_KEY must be 32 bytes encoded as base64: {0}")]
    MalformedEncryptionKey(String),
    #[error("ENCRYPTION_KEY is the development key, which is public; set a key of your own")]
    DevelopmentEncryptionKey,
    #[error(
        "TWILIO_VALIDATE_SIGNATURE=false is refused in production: webhooks would not be authenticated"
    )]
    SignatureValidationOff,
    #[error("AUTOMATION_ALLOW_PRIVATE_NETWORKS=true is refused in production")]
    PrivateNetworksAllowed,
    #[error(
        "{name} must be at least {MIN_BOOTSTRAP_KEY_CHARS} characters in production (got {chars}); unset it to disable its route"
    )]
    ShortBootstrapKey { name: &'static str, chars: usize },
    #[error("{0}")]
    Invalid(String),
}

/// Every reason a production configuration was refused, found at once so
/// that one restart fixes them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to start with APP_ENV=production: {}", list(.problems))]
pub struct UnsafeProductionConfig {
    pub problems: Vec<ConfigError>,
}

fn list(problems: &[ConfigError]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects the problems of a production configuration; in development it
/// finds none. Each binary's `Config::check_production` feeds it the groups it
/// has and calls [`ProductionCheck::finish`] at start-up.
#[derive(Debug)]
pub struct ProductionCheck {
    production: bool,
    problems: Vec<ConfigError>,
}

impl ProductionCheck {
    pub fn new(common: &CommonArgs) -> Self {
        Self {
            production: common.is_production(),
            problems: Vec::new(),
        }
    }

    /// `JWT_SECRET`: set, at least 32 bytes, and not the development secret.
    pub fn auth(mut self, auth: &AuthArgs) -> Self {
        if self.production
            && let Err(e) = auth.checked_secret(true)
        {
            self.problems.push(e);
        }
        self
    }

    /// `ENCRYPTION_KEY`: set, 32 bytes of base64, and not the development key.
    pub fn encryption(mut self, encryption: &EncryptionArgs) -> Self {
        if self.production
            && let Err(e) = encryption.checked_key(true)
        {
            self.problems.push(e);
        }
        self
    }

    /// A bootstrap key may be unset (its route is then disabled); when set it
    /// must be at least [`MIN_BOOTSTRAP_KEY_CHARS`] characters.
    pub fn bootstrap_key(mut self, name: &'static str, key: Option<&str>) -> Self {
        if let (true, Some(key)) = (self.production, key) {
            let chars = key.chars().count();
            if chars < MIN_BOOTSTRAP_KEY_CHARS {
                self.problems
                    .push(ConfigError::ShortBootstrapKey { name, chars });
            }
        }
        self
    }

    /// Records `problem` in production when `refused` holds.
    pub fn refuse(mut self, refused: bool, problem: ConfigError) -> Self {
        if self.production && refused {
            self.problems.push(problem);
        }
        self
    }

    pub fn finish(self) -> Result<(), UnsafeProductionConfig> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(UnsafeProductionConfig {
                problems: self.problems,
            })
        }
    }
}

/// A secret for `Debug` output: whether it is set, never its value.
pub fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

impl AuthArgs {
    /// The secret to sign and verify with, or why start-up must stop.
    pub fn secret(&self, common: &CommonArgs) -> Result<Vec<u8>, ConfigError> {
        self.checked_secret(common.is_production())
    }

    fn checked_secret(&self, production: bool) -> Result<Vec<u8>, ConfigError> {
        match (&self.jwt_secret, production) {
            (Some(secret), true) if secret.len() < 32 => {
                Err(ConfigError::WeakJwtSecret(secret.len()))
            }
            (Some(secret), true) if secret == DEV_JWT_SECRET => {
                Err(ConfigError::DevelopmentJwtSecret)
            }
            (Some(secret), _) if !secret.is_empty() => Ok(secret.as_bytes().to_vec()),
            (_, true) => Err(ConfigError::MissingJwtSecret),
            (_, false) => {
                tracing::warn!("JWT_SECRET not set: using the development secret");
                Ok(DEV_JWT_SECRET.as_bytes().to_vec())
            }
        }
    }
}

#[derive(Clone, Args)]
pub struct EncryptionArgs {
    /// AES-256-GCM key for secrets at rest: 32 bytes, base64.
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,
}

impl fmt::Debug for EncryptionArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionArgs { encryption_key: <redacted> }")
    }
}

impl EncryptionArgs {
    /// The 32 key bytes, or why start-up must stop.
    pub fn key(&self, common: &CommonArgs) -> Result<[u8; 32], ConfigError> {
        self.checked_key(common.is_production())
    }

    fn checked_key(&self, production: bool) -> Result<[u8; 32], ConfigError> {
        let encoded = match (&self.encryption_key, production) {
            (Some(key), _) if !key.is_empty() => key.as_str(),
            (_, true) => return Err(ConfigError::MissingEncryptionKey),
            (_, false) => {
                tracing::warn!("ENCRYPTION_KEY not set: using the development key");
                DEV_ENCRYPTION_KEY
            }
        };
        let key = decode_key(encoded)?;
        if production && decode_key(DEV_ENCRYPTION_KEY).is_ok_and(|dev| dev == key) {
            return Err(ConfigError::DevelopmentEncryptionKey);
        }
        Ok(key)
    }
}

pub fn decode_key(encoded: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| ConfigError::MalformedEncryptionKey(e.to_string()))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        ConfigError::MalformedEncryptionKey(format!("decoded to {} bytes", bytes.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_duty_is_a_share_of_the_time() {
        assert_eq!(share_of_time("0.2"), Ok(0.2));
        assert_eq!(share_of_time("1"), Ok(1.0));
        for bad in ["0", "-0.5", "1.5", "NaN", "fast"] {
            assert!(share_of_time(bad).is_err(), "{bad}");
        }
    }

    fn common(env: AppEnv) -> CommonArgs {
        CommonArgs {
            app_env: env,
            log_format: LogFormat::Json,
        }
    }

    fn auth(secret: Option<&str>) -> AuthArgs {
        AuthArgs {
            jwt_secret: secret.map(str::to_owned),
            jwt_issuer: "i".into(),
            jwt_audience: "a".into(),
        }
    }

    #[test]
    fn production_refuses_missing_or_weak_jwt_secret() {
        let prod = common(AppEnv::Production);
        assert!(matches!(
            auth(None).secret(&prod),
            Err(ConfigError::MissingJwtSecret)
        ));
        assert!(matches!(
            auth(Some("short")).secret(&prod),
            Err(ConfigError::WeakJwtSecret(5))
        ));
        let strong = "x".repeat(32);
        assert_eq!(
            auth(Some(&strong)).secret(&prod).ok(),
            Some(strong.into_bytes())
        );
    }

    #[test]
    fn development_falls_back_to_dev_secret() {
        let dev = common(AppEnv::Development);
        assert_eq!(
            auth(None).secret(&dev).ok(),
            Some(DEV_JWT_SECRET.as_bytes().to_vec())
        );
    }

    #[test]
    fn production_refuses_missing_or_malformed_encryption_key() {
        let prod = common(AppEnv::Production);
        let missing = EncryptionArgs {
            encryption_key: None,
        };
        assert!(matches!(
            missing.key(&prod),
            Err(ConfigError::MissingEncryptionKey)
        ));
        let short = EncryptionArgs {
            encryption_key: Some("c2hvcnQ=".into()),
        };
        assert!(matches!(
            short.key(&prod),
            Err(ConfigError::MalformedEncryptionKey(_))
        ));
        let not_base64 = EncryptionArgs {
            encryption_key: Some("!!!".into()),
        };
        assert!(not_base64.key(&prod).is_err());
        let good = EncryptionArgs {
            encryption_key: Some(OTHER_KEY.into()),
        };
        assert!(good.key(&prod).is_ok());
    }

    /// 32 bytes of base64 that are not the development key.
    const OTHER_KEY: &str = "b3RoZXItMzItYnl0ZS1rZXktZm9yLXRoZS10ZXN0cyE=";

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn app_env_defaults_to_production() {
        use clap::CommandFactory;
        // Read from the definition, so an APP_ENV in the caller's environment
        // cannot change the answer.
        let command = Cli::command();
        let app_env = command
            .get_arguments()
            .find(|a| a.get_id() == "app_env")
            .expect("app_env argument");
        let defaults: Vec<_> = app_env.get_default_values().to_vec();
        assert_eq!(defaults, ["production"]);
        assert_eq!(app_env.get_env().and_then(|e| e.to_str()), Some("APP_ENV"));
    }

    #[test]
    fn development_must_be_asked_for() {
        use clap::Parser;
        let cli = Cli::try_parse_from(["x", "--app-env", "development"]).expect("parses");
        assert!(!cli.common.is_production());
        let cli = Cli::try_parse_from(["x", "--app-env", "production"]).expect("parses");
        assert!(cli.common.is_production());
    }

    #[test]
    fn production_refuses_the_development_secret_and_key() {
        let prod = common(AppEnv::Production);
        assert_eq!(
            auth(Some(DEV_JWT_SECRET)).secret(&prod),
            Err(ConfigError::DevelopmentJwtSecret)
        );
        let dev_key = EncryptionArgs {
            encryption_key: Some(DEV_ENCRYPTION_KEY.into()),
        };
        assert_eq!(
            dev_key.key(&prod),
            Err(ConfigError::DevelopmentEncryptionKey)
        );
        // The same key with surrounding whitespace is still the development key.
        let padded = EncryptionArgs {
            encryption_key: Some(format!(" {DEV_ENCRYPTION_KEY}\n")),
        };
        assert_eq!(
            padded.key(&prod),
            Err(ConfigError::DevelopmentEncryptionKey)
        );
        // Development still uses them.
        let dev = common(AppEnv::Development);
        assert!(auth(Some(DEV_JWT_SECRET)).secret(&dev).is_ok());
        assert!(dev_key.key(&dev).is_ok());
    }

    #[test]
    fn production_check_names_every_problem() {
        let prod = common(AppEnv::Production);
        let err = ProductionCheck::new(&prod)
            .auth(&auth(None))
            .encryption(&EncryptionArgs {
                encryption_key: Some(DEV_ENCRYPTION_KEY.into()),
            })
            .bootstrap_key("AUTH_BOOTSTRAP_KEY", Some(""))
            .bootstrap_key("DEV_BOOTSTRAP_KEY", Some(&"k".repeat(31)))
            .refuse(true, ConfigError::SignatureValidationOff)
            .finish()
            .expect_err("refused");
        assert_eq!(
            err.problems,
            [
                ConfigError::MissingJwtSecret,
                ConfigError::DevelopmentEncryptionKey,
                ConfigError::ShortBootstrapKey {
                    name: "AUTH_BOOTSTRAP_KEY",
                    chars: 0
                },
                ConfigError::ShortBootstrapKey {
                    name: "DEV_BOOTSTRAP_KEY",
                    chars: 31
                },
                ConfigError::SignatureValidationOff,
            ]
        );
        let message = err.to_string();
        for name in [
            "APP_ENV=production",
            "JWT_SECRET",
            "ENCRYPTION_KEY",
            "AUTH_BOOTSTRAP_KEY",
            "DEV_BOOTSTRAP_KEY",
            "TWILIO_VALIDATE_SIGNATURE",
        ] {
            assert!(message.contains(name), "{name} missing from: {message}");
        }
        assert!(
            ProductionCheck::new(&prod)
                .auth(&auth(Some(DEV_JWT_SECRET)))
                .finish()
                .is_err()
        );
    }

    #[test]
    fn production_check_accepts_a_safe_configuration() {
        let prod = common(AppEnv::Production);
        let strong = "s".repeat(32);
        let safe = ProductionCheck::new(&prod)
            .auth(&auth(Some(&strong)))
            .encryption(&EncryptionArgs {
                encryption_key: Some(OTHER_KEY.into()),
            })
            // Unset: the route is disabled, which is fine.
            .bootstrap_key("AUTH_BOOTSTRAP_KEY", None)
            .bootstrap_key("DEV_BOOTSTRAP_KEY", Some(&"k".repeat(32)))
            .refuse(false, ConfigError::SignatureValidationOff)
            .finish();
        assert_eq!(safe, Ok(()));
    }

    #[test]
    fn development_check_finds_nothing() {
        let dev = common(AppEnv::Development);
        let checked = ProductionCheck::new(&dev)
            .auth(&auth(None))
            .encryption(&EncryptionArgs {
                encryption_key: None,
            })
            .bootstrap_key("AUTH_BOOTSTRAP_KEY", Some("short"))
            .refuse(true, ConfigError::SignatureValidationOff)
            .finish();
        assert_eq!(checked, Ok(()));
    }

    #[test]
    fn positive_duration_refuses_zero_and_garbage() {
        assert_eq!(
            positive_duration("500ms"),
            Ok(std::time::Duration::from_millis(500))
        );
        assert!(positive_duration("0s").is_err());
        assert!(positive_duration("10us").is_err());
        assert!(positive_duration("-1s").is_err());
        assert!(positive_duration("soon").is_err());
    }

    #[test]
    fn prefix_rejects_subject_wildcards() {
        assert!(parse_prefix("t_ab-12").is_ok());
        assert!(parse_prefix("a.b").is_err());
        assert!(parse_prefix("a*").is_err());
        assert!(parse_prefix("a>").is_err());
    }
}
