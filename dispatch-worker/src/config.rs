//! Settings of the dispatch-worker binary (flags and environment variables).

use std::net::SocketAddr;

use clap::Parser;
use shared::config::{CommonArgs, DbArgs, EncryptionArgs, NatsArgs};

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
}
