//! Postgres access: the pool, the embedded migrations, and small helpers for
//! recognising constraint violations.

use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::DbArgs;

/// Every migration under `migrations/`, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// A connection idle for longer than this is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(10);

/// How a pool's connections choose between a prepared statement's plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plans {
    /// Postgres's own choice: a plan made for each execution's parameters
    /// until a generic one looks no costlier.
    Default,
    /// The generic plan, always (`plan_cache_mode = force_generic_plan`).
    /// For a service whose statements all go by key, as the ingress's do:
    /// a statement over a batch's arrays never looks as cheap generic as
    /// planned for the arrays it was given, so Postgres would plan it anew
    /// for every batch (about 0.3 ms, more than it then takes to run), and
    /// the generic plan is the one the plan guards check
    /// (docs/decisions/0037-plan-stable-keys.md).
    Generic,
}

/// Opens the pool. Connections are made lazily so a binary can start (and
/// report not-ready) while Postgres is still coming up.
pub fn connect_lazy(args: &DbArgs, plans: Plans) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = args.database_url.parse()?;
    let mut pool = pool_options(args.database_max_connections);
    if plans == Plans::Generic {
        // A SET once per connection rather than a startup option, which
        // PgBouncer refuses unless told to ignore it.
        pool = pool.after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::Executor::execute(conn, "SET plan_cache_mode = force_generic_plan").await?;
                Ok(())
            })
        });
    }
    Ok(pool.connect_lazy_with(options.application_name(env!("CARGO_PKG_NAME"))))
}

/// The pool settings every binary (and the benchmarks) use.
///
/// sqlx pings every connection it hands out by default: one extra round
/// trip per query, which doubled the latency of the hot paths (a webhook's
/// commit, a tool execution's three statements). Only connections that sat
/// idle long enough to have been dropped by a restart or a proxy are
/// pinged; a connection broken while busy fails its query and is replaced.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// Creates the database named in the URL when it does not exist yet, so a
/// bare start on a machine with Postgres works.
pub async fn create_database_if_missing(url: &str) -> Result<(), sqlx::Error> {
    if !Postgres::database_exists(url).await? {
        tracing::info!("creating database");
        if let Err(err) = Postgres::create_database(url).await {
            // Another instance may have created it concurrently.
            if !Postgres::database_exists(url).await? {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// Applies pending migrations; sqlx takes an advisory lock, so concurrent
/// starts are safe.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// The name of the constraint a unique or foreign-key violation hit.
pub fn violated_constraint(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) if db.is_unique_violation() || db.is_foreign_key_violation() => {
            db.constraint()
        }
        _ => None,
    }
}

pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}
