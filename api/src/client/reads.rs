//! What keeps one tenant's reads from starving everyone else.
//!
//! The client surface reads through its own small pool, so however many
//! dashboards a tenant opens, the pool that claims dispatches and executes
//! tools for every tenant is never touched by them. Each of its connections
//! carries a `statement_timeout`, so no single read holds one for long, and
//! runs without parallel workers, so one read takes at most one core; and
//! each tenant may have only `CLIENT_READS_PER_TENANT` reads in flight, so
//! one tenant cannot take the read pool, nor Postgres's cores, from the
//! others: a read past its share waits briefly ([`SHARE_WAIT`], long enough
//! for a dashboard's quick reads to follow one another) and then gets 429.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use shared::auth::{Claims, Principal};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

use crate::http::error::AppError;
use crate::state::AppState;

/// How long a read past its tenant's share waits for a slot before 429.
pub const SHARE_WAIT: Duration = Duration::from_millis(250);

/// The client surface's pool and each tenant's share of it.
#[derive(Clone)]
pub struct ClientReads {
    pool: PgPool,
    per_tenant: usize,
    /// One semaphore per tenant that has read, never removed: a few bytes
    /// per tenant, and no race between a slot given back and one taken.
    shares: Arc<Mutex<HashMap<Uuid, Arc<Semaphore>>>>,
}

impl std::fmt::Debug for ClientReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientReads")
            .field("per_tenant", &self.per_tenant)
            .finish_non_exhaustive()
    }
}

/// How the client surface reads (`CLIENT_READ_*`).
#[derive(Debug, Clone, Copy)]
pub struct ClientReadLimits {
    pub max_connections: u32,
    pub statement_timeout: Duration,
    pub per_tenant: usize,
}

impl ClientReads {
    /// Opens the read pool (lazily, like the main one) on the main pool's
    /// database.
    pub fn open(main: &PgPool, limits: ClientReadLimits) -> Self {
        // Set at connection start-up: no extra round trip per read, and no
        // statement on this pool can run without it. No JIT: these reads
        // take milliseconds, and compiling a KPI read whose row estimates
        // look large took longer than the read itself.
        let timeout_ms = limits.statement_timeout.as_millis().max(1).to_string();
        let options: PgConnectOptions = main
            .connect_options()
            .as_ref()
            .clone()
            .application_name("api-client-reads")
            .options([
                ("statement_timeout", timeout_ms.as_str()),
                ("max_parallel_workers_per_gather", "0"),
                ("jit", "off"),
            ]);
        let pool = shared::db::pool_options(limits.max_connections).connect_lazy_with(options);
        Self::with_pool(pool, limits.per_tenant)
    }

    pub fn with_pool(pool: PgPool, per_tenant: usize) -> Self {
        Self {
            pool,
            per_tenant: per_tenant.max(1),
            shares: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Takes one of the tenant's read slots until the returned permit
    /// drops, waiting at most [`SHARE_WAIT`] for one; 429 after that.
    pub async fn admit(&self, tenant_id: Uuid) -> Result<OwnedSemaphorePermit, AppError> {
        let share = {
            let mut shares = self.shares.lock().unwrap_or_else(|e| e.into_inner());
            shares
                .entry(tenant_id)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
                .clone()
        };
        match tokio::time::timeout(SHARE_WAIT, share.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // Timed out (a closed semaphore cannot happen: none is closed).
            _ => {
                metrics::counter!("client_reads_refused_total").increment(1);
                Err(AppError::TooManyRequests {
                    message: format!(
                        "this tenant already has {} reads in progress (CLIENT_READS_PER_TENANT); \
                         try again when one finishes",
                        self.per_tenant
                    ),
                    retry_after_secs: 1,
                })
            }
        }
    }
}

/// A client read: the token's claims, the read pool, and the tenant's slot
/// held for as long as the handler runs.
pub struct ClientRead {
    pub claims: Claims,
    pub pool: PgPool,
    _slot: OwnedSemaphorePermit,
}

impl FromRequestParts<AppState> for ClientRead {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Principal(claims) = Principal::from_request_parts(parts, state).await?;
        // A runtime writes transcripts; reading the tenant's calls is not
        // its business.
        if claims.role == shared::auth::Role::Runtime {
            return Err(AppError::Forbidden(
                "a runtime token cannot read the client API".into(),
            ));
        }
        let slot = state.client_reads.admit(claims.tenant_id).await?;
        Ok(Self {
            claims,
            pool: state.client_reads.pool().clone(),
            _slot: slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_tenant_gets_its_share_and_slots_come_back_on_drop() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("lazy pool");
        let reads = ClientReads::with_pool(pool, 2);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let first = reads.admit(a).await.expect("first");
        let _second = reads.admit(a).await.expect("second");
        assert!(matches!(
            reads.admit(a).await,
            Err(AppError::TooManyRequests { .. })
        ));
        // Another tenant is unaffected.
        let _other = reads.admit(b).await.expect("b");
        // A read that waits gets the slot given back meanwhile.
        let waiting = tokio::spawn({
            let reads = reads.clone();
            async move { reads.admit(a).await.is_ok() }
        });
        tokio::time::sleep(SHARE_WAIT / 5).await;
        drop(first);
        assert!(waiting.await.expect("task"));
    }
}
