//! Postgres access: the pool, the embedded migrations, and small helpers for
//! recognising constraint violations.

use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::DbArgs;

/// Every migration under `migrations/`, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Opens the pool. Connections are made lazily so a binary can start (and
/// report not-ready) while Postgres is still coming up.
pub fn connect_lazy(args: &DbArgs) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = args.database_url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(args.database_max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(options.application_name(env!("CARGO_PKG_NAME"))))
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
