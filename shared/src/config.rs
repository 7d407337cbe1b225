//! Settings shared by the binaries, as clap argument groups that each binary
//! flattens into its own `Config`. Every setting is a flag and an environment
//! variable; secrets never echo their values in `--help`.

use std::fmt;

use base64::Engine;
use clap::{Args, ValueEnum};

/// Where the process runs. `production` refuses weak or missing secrets and
/// turns off development conveniences (the dev token route, `http://` n8n URLs).
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
    /// `development` or `production`.
    #[arg(long, env = "APP_ENV", value_enum, default_value = "development")]
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("JWT_SECRET is required in production")]
    MissingJwtSecret,
    #[error("JWT_SECRET must be at least 32 bytes in production (got {0})")]
    WeakJwtSecret(usize),
    #[error("ENCRYPTION_KEY is required in production (32 bytes, base64)")]
    MissingEncryptionKey,
    #[error("ENCRYPTION_KEY must be 32 bytes encoded as base64: {0}")]
    MalformedEncryptionKey(String),
    #[error("{0}")]
    Invalid(String),
}

impl AuthArgs {
    /// The secret to sign and verify with, or why start-up must stop.
    pub fn secret(&self, common: &CommonArgs) -> Result<Vec<u8>, ConfigError> {
        match (&self.jwt_secret, common.is_production()) {
            (Some(secret), true) if secret.len() < 32 => {
                Err(ConfigError::WeakJwtSecret(secret.len()))
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
        let encoded = match (&self.encryption_key, common.is_production()) {
            (Some(key), _) if !key.is_empty() => key.as_str(),
            (_, true) => return Err(ConfigError::MissingEncryptionKey),
            (_, false) => {
                tracing::warn!("ENCRYPTION_KEY not set: using the development key");
                DEV_ENCRYPTION_KEY
            }
        };
        decode_key(encoded)
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
            encryption_key: Some(DEV_ENCRYPTION_KEY.into()),
        };
        assert!(good.key(&prod).is_ok());
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
