//! Routing a call's `To` number to its tenant and agent: active phone
//! numbers, cached in memory with a short TTL and refreshed in the
//! background, so the hot path rarely touches Postgres.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use shared::redaction::DataStorage;
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
    /// The tenant's storage mode: what of the call may be kept.
    pub data_storage: DataStorage,
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

/// An active number of a tenant that is not being off-boarded.
const LOOKUP_ONE: &str = "SELECT p.id AS phone_number_id, p.tenant_id, p.agent_id, t.data_storage
     FROM phone_numbers p JOIN tenants t ON t.id = p.tenant_id
     WHERE p.e164 = $1 AND p.status = 'active' AND t.offboarding_at IS NULL";

#[derive(sqlx::FromRow)]
struct RouteRow {
    e164: String,
    phone_number_id: Uuid,
    tenant_id: Uuid,
    agent_id: Option<Uuid>,
    data_storage: DataStorage,
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
            "SELECT p.e164, p.id AS phone_number_id, p.tenant_id, p.agent_id, t.data_storage
             FROM phone_numbers p JOIN tenants t ON t.id = p.tenant_id
             WHERE p.status = 'active' AND t.offboarding_at IS NULL",
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
                        data_storage: row.data_storage,
                    }),
                ),
            );
        }
        Ok(())
    }

    /// Forgets every cached route: the next lookups read Postgres.
    pub async fn forget(&self) {
        self.entries.write().await.clear();
    }

    /// Refreshes every half TTL until `shutdown`, and forgets the cache
    /// whenever `changes` (the api's `routes.changed`) says a number
    /// stopped routing, so it stops at once rather than within the TTL.
    pub fn spawn_refresher(
        &self,
        changes: Option<async_nats::Subscriber>,
        shutdown: CancellationToken,
    ) {
        let routes = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(routes.ttl / 2);
            let mut changes = changes;
            loop {
                let changed = async {
                    match changes.as_mut() {
                        Some(sub) => sub.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    message = changed => match message {
                        Some(_) => routes.forget().await,
                        // The subscription ended (the client closed): the
                        // TTL still bounds how stale a route can be.
                        None => changes = None,
                    },
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
