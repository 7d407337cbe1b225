//! Settings of the webhook-ingress binary (flags and environment variables).

use std::net::SocketAddr;

use clap::Parser;
use shared::config::{CommonArgs, DbArgs, EncryptionArgs, NatsArgs};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "webhook-ingress",
    version,
    about = "Voice agent control plane: public Twilio webhook ingress"
)]
pub struct Config {
    /// Address for health, readiness and metrics and the Twilio webhooks.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:4001")]
    pub listen_addr: SocketAddr,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub encryption: EncryptionArgs,
}
