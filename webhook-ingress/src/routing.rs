//! Routing a call's `To` number to its tenant and agent: active phone
//! numbers, cached in memory with a short TTL and refreshed in the
//! background, so the hot path rarely touches Postgres.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Where a number's calls go.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Route {
    pub phone_number_id: Uuid,
    pub tenant_id: Uuid,
    pub agent_id: Option<Uuid>,
}

/// `To` -> (when read, route).
type Cache = HashMap<String, (Instant, Option<Route>)>;

#[derive(Clone)]
pub struct PhoneRoutes {
    pool: PgPool,
    ttl: Duration,
    /// `None` caches "not an active number" too, so unknown callers cannot
    /// make every request hit Postgres.
    entries: Arc<RwLock<Cache>>,
}

const LOOKUP_ONE: &str = "SELECT id AS phone_number_id, tenant_id, agent_id
     FROM phone_numbers WHERE e164 = $1 AND status = 'active'";

#[derive(sqlx::FromRow)]
struct RouteRow {
    e164: String,
    phone_number_id: Uuid,
    tenant_id: Uuid,
    agent_id: Option<Uuid>,
}

impl PhoneRoutes {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            entries: Arc::default(),
        }
    }

    /// The route of `to`, or `None` for an unknown or inactive number.
    pub async fn lookup(&self, to: &str) -> Result<Option<Route>, sqlx::Error> {
        if let Some((at, route)) = self.entries.read().await.get(to)
            && at.elapsed() < self.ttl
        {
            return Ok(route.clone());
        }
        let route: Option<Route> = sqlx::query_as(LOOKUP_ONE)
            .bind(to)
            .fetch_optional(&self.pool)
            .await?;
        let mut entries = self.entries.write().await;
        // Bounded: junk `To` values from forged requests never reach here
        // (they fail the signature), but keep memory flat regardless.
        if entries.len() > 100_000 {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        }
        entries.insert(to.to_owned(), (Instant::now(), route.clone()));
        Ok(route)
    }

    /// Reloads every active number; entries for numbers that are no longer
    /// active simply age out.
    pub async fn refresh(&self) -> Result<(), sqlx::Error> {
        let rows: Vec<RouteRow> = sqlx::query_as(
            "SELECT e164, id AS phone_number_id, tenant_id, agent_id
             FROM phone_numbers WHERE status = 'active'",
        )
        .fetch_all(&self.pool)
        .await?;
        let now = Instant::now();
        let mut entries = self.entries.write().await;
        entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        for row in rows {
            entries.insert(
                row.e164,
                (
                    now,
                    Some(Route {
                        phone_number_id: row.phone_number_id,
                        tenant_id: row.tenant_id,
                        agent_id: row.agent_id,
                    }),
                ),
            );
        }
        Ok(())
    }

    /// Refreshes every half TTL until `shutdown`.
    pub fn spawn_refresher(&self, shutdown: CancellationToken) {
        let routes = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(routes.ttl / 2);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(err) = routes.refresh().await {
                            tracing::warn!(%err, "phone number refresh failed");
                        }
                    }
                }
            }
        });
    }
}
