//! What the ingress and the workers open at start-up before their own
//! wiring: Postgres (lazily: a service starts while Postgres is down and
//! reports not ready), NATS (its first connection retried) and the HTTP
//! listener for webhooks or health and metrics.

use std::net::SocketAddr;

use anyhow::Context;
use sqlx::PgPool;

use crate::config::{DbArgs, NatsArgs};
use crate::db::Plans;

/// A service's connections, opened in that order.
pub struct Connections {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub listener: tokio::net::TcpListener,
}

impl Connections {
    pub async fn open(
        service: &str,
        db: &DbArgs,
        plans: Plans,
        nats: &NatsArgs,
        listen_addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let pool = crate::db::connect_lazy(db, plans).context("bad DATABASE_URL")?;
        let nats = crate::nats::connect(nats, service).await?;
        let listener = tokio::net::TcpListener::bind(listen_addr)
            .await
            .with_context(|| format!("cannot listen on {listen_addr}"))?;
        tracing::info!(addr = %listen_addr, "{service} listening");
        Ok(Self {
            pool,
            nats,
            listener,
        })
    }
}
