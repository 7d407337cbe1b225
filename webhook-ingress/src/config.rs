//! Settings of the webhook-ingress binary (flags and environment variables).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shared::config::{
    CommonArgs, ConfigError, DbArgs, EncryptionArgs, NatsArgs, ProductionCheck,
    UnsafeProductionConfig,
};

#[derive(Clone, Parser)]
#[command(
    name = "webhook-ingress",
    version,
    about = "Voice agent control plane: public Twilio webhook ingress"
)]
pub struct Config {
    /// Address of the Twilio webhooks (the public port): serves them and
    /// `/health`, nothing else.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:4001")]
    pub listen_addr: SocketAddr,
    /// Address of `/health`, `/health/ready` and `/metrics` for the
    /// deployment's probes and Prometheus; keep it off the public network.
    #[arg(long, env = "OPS_LISTEN_ADDR", default_value = "0.0.0.0:4011")]
    pub ops_listen_addr: SocketAddr,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub encryption: EncryptionArgs,
    #[command(flatten)]
    pub twilio: TwilioArgs,
    /// How long a phone-number route is trusted before it is read again.
    #[arg(long, env = "PHONE_NUMBER_CACHE_TTL", default_value = "5s", value_parser = shared::config::positive_duration)]
    pub phone_number_cache_ttl: Duration,
    /// Concurrent database writers; webhooks arriving while they commit are
    /// grouped into their next transaction. 2: larger groups (fewer WAL
    /// flushes) than 4, and one group waiting on a row lock does not hold
    /// up every webhook as it would with 1.
    #[arg(long, env = "INGRESS_DB_WRITERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub db_writers: u16,
    /// Largest number of webhooks committed in one transaction.
    #[arg(long, env = "INGRESS_MAX_GROUP_COMMIT", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub max_group_commit: u16,
    /// How long a writer waits after a group's first webhook for more;
    /// `0ms` takes only what is already waiting. 1ms: at moderate rates a
    /// group otherwise holds one or two webhooks, and the cores the
    /// statements' fixed cost takes make every answer wait longer than the
    /// linger does.
    #[arg(long, env = "INGRESS_GROUP_LINGER", default_value = "1ms", value_parser = shared::config::linger)]
    pub group_linger: Duration,
}

impl Config {
    /// Every reason this configuration is unsafe in production (none in
    /// development); checked at start-up before anything else.
    pub fn check_production(&self) -> Result<(), UnsafeProductionConfig> {
        ProductionCheck::new(&self.common)
            .encryption(&self.encryption)
            .refuse(
                !self.twilio.twilio_validate_signature,
                ConfigError::SignatureValidationOff,
            )
            .finish()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen_addr", &self.listen_addr)
            .field("ops_listen_addr", &self.ops_listen_addr)
            .field("twilio", &self.twilio)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, clap::Args)]
pub struct TwilioArgs {
    /// Check `X-Twilio-Signature` on every webhook. Turn off only for local
    /// smoke tests: production refuses to start with it off.
    #[arg(long, env = "TWILIO_VALIDATE_SIGNATURE", default_value_t = true, action = clap::ArgAction::Set)]
    pub twilio_validate_signature: bool,
    /// The account's Auth Token (the HMAC key of the signature).
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<String>,
    /// The public base URL Twilio calls (scheme, host, optional port), e.g.
    /// `https://voice.example.com`; the signed URL is this + path + query.
    #[arg(long, env = "TWILIO_WEBHOOK_BASE_URL")]
    pub twilio_webhook_base_url: Option<String>,
    /// `wss://` URL of the voice runtime's media stream; without it calls hear
    /// a short message and are hung up.
    #[arg(long, env = "TWILIO_MEDIA_STREAM_URL")]
    pub twilio_media_stream_url: Option<String>,
    /// Optional token passed to the media stream as a `<Parameter>`.
    #[arg(long, env = "TWILIO_MEDIA_STREAM_TOKEN", hide_env_values = true)]
    pub twilio_media_stream_token: Option<String>,
}

impl fmt::Debug for TwilioArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioArgs")
            .field("validate_signature", &self.twilio_validate_signature)
            .field(
                "auth_token",
                &self.twilio_auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("webhook_base_url", &self.twilio_webhook_base_url)
            .field("media_stream_url", &self.twilio_media_stream_url)
            .finish_non_exhaustive()
    }
}

/// How webhooks are authenticated, checked at start-up.
#[derive(Clone)]
pub enum SignatureCheck {
    Enabled {
        auth_token: String,
        /// Without a trailing slash.
        base_url: String,
    },
    Disabled,
}

impl TwilioArgs {
    /// Refuses to start with validation on but no token or base URL.
    pub fn signature_check(&self) -> anyhow::Result<SignatureCheck> {
        if !self.twilio_validate_signature {
            tracing::warn!(
                "TWILIO_VALIDATE_SIGNATURE=false: webhooks are NOT authenticated; use only for local smoke tests"
            );
            return Ok(SignatureCheck::Disabled);
        }
        let token = self
            .twilio_auth_token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "TWILIO_AUTH_TOKEN is required while TWILIO_VALIDATE_SIGNATURE=true"
                )
            })?;
        let base = self
            .twilio_webhook_base_url
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "TWILIO_WEBHOOK_BASE_URL is required while TWILIO_VALIDATE_SIGNATURE=true"
                )
            })?;
        let parsed = url::Url::parse(&base)
            .map_err(|e| anyhow::anyhow!("TWILIO_WEBHOOK_BASE_URL is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!("TWILIO_WEBHOOK_BASE_URL must be http(s)");
        }
        Ok(SignatureCheck::Enabled {
            auth_token: token,
            base_url: base.trim_end_matches('/').to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use shared::config::{AppEnv, DEV_ENCRYPTION_KEY};

    use super::*;

    /// 32 bytes of base64 that are not the development key.
    const KEY: &str = "b3RoZXItMzItYnl0ZS1rZXktZm9yLXRoZS10ZXN0cyE=";

    /// Every field the tests look at is set here, whatever the caller's
    /// environment.
    fn config(env: AppEnv, validate_signature: bool) -> Config {
        let mut config = Config::try_parse_from(["webhook-ingress"]).expect("parses");
        config.common.app_env = env;
        config.encryption.encryption_key = Some(KEY.into());
        config.twilio.twilio_validate_signature = validate_signature;
        config
    }

    #[test]
    fn production_refuses_unsigned_webhooks() {
        assert_eq!(config(AppEnv::Production, true).check_production(), Ok(()));
        let refused = config(AppEnv::Production, false)
            .check_production()
            .expect_err("refused");
        assert_eq!(refused.problems, [ConfigError::SignatureValidationOff]);
        assert!(refused.to_string().contains("TWILIO_VALIDATE_SIGNATURE"));
        // Local smoke tests may still turn it off.
        assert_eq!(
            config(AppEnv::Development, false).check_production(),
            Ok(())
        );
    }

    #[test]
    fn production_refuses_the_development_key_with_every_other_problem() {
        let mut config = config(AppEnv::Production, false);
        config.encryption.encryption_key = Some(DEV_ENCRYPTION_KEY.into());
        assert_eq!(
            config.check_production().map_err(|e| e.problems),
            Err(vec![
                ConfigError::DevelopmentEncryptionKey,
                ConfigError::SignatureValidationOff
            ])
        );
    }

    #[test]
    fn signature_validation_defaults_to_on() {
        use clap::CommandFactory;
        let command = Config::command();
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == "twilio_validate_signature")
            .expect("argument");
        assert_eq!(arg.get_default_values(), ["true"]);
    }

    #[test]
    fn every_setting_is_in_docs_configuration_md() {
        use clap::CommandFactory;
        shared::testing::configuration_doc::assert_documented(
            &Config::command(),
            "webhook-ingress",
        );
    }
}
