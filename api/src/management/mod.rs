//! The internal management API for ops staff: one module per resource
//! (tenants, agents and versions, phone numbers, tools, integrations, legal
//! holds, call deletion, tenant off-boarding, the audit log, event webhook
//! endpoints). This module holds what they share:
//! the tenant-scoped list, the audit helper, input checks and constraint mapping.

pub mod agents;
pub mod audit_log;
pub mod calls_admin;
pub mod integrations;
pub mod integrations_test;
pub mod legal_holds;
pub mod phone_numbers;
pub mod tenant_offboarding;
pub mod tenants;
pub mod tools;
pub mod webhook_endpoints;

use crate::audit::{self, AuditEntry};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use shared::auth::Claims;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, PgPool};
use utoipa::IntoParams;
use uuid::Uuid;

use crate::http::error::{AppError, AppResult};
use crate::http::pagination::{Cursor, Page, PageRequest};

/// `?tenant_id=&limit=&cursor=` of every tenant-scoped list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantListQuery {
    /// Must be the token's tenant (403 otherwise).
    pub tenant_id: Uuid,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl TenantListQuery {
    /// Checks the tenant (403) and the page parameters (400).
    pub fn checked(&self, claims: &Claims) -> AppResult<PageRequest> {
        claims.require_tenant(self.tenant_id)?;
        PageRequest::parse(self.limit, self.cursor.as_deref())
    }

    /// One page of a tenant-scoped table, newest first: the tenant check,
    /// the keyset query and the next cursor. `select_from` is a constant
    /// `SELECT <columns> FROM <table>` whose rows have `tenant_id`,
    /// `created_at` and `id`.
    pub async fn fetch_page<T>(
        &self,
        claims: &Claims,
        pool: &PgPool,
        select_from: &'static str,
        key: impl Fn(&T) -> Cursor,
    ) -> AppResult<Page<T>>
    where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let page = self.checked(claims)?;
        let sql = format!(
            "{select_from}
             WHERE tenant_id = $1
               AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
             ORDER BY created_at DESC, id DESC
             LIMIT $4"
        );
        let rows: Vec<T> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(self.tenant_id)
            .bind(page.cursor_at())
            .bind(page.cursor_id())
            .bind(page.fetch())
            .fetch_all(pool)
            .await?;
        Ok(page.page(rows, key))
    }
}

/// Writes one audit row for a mutation by `claims.sub`, inside the caller's
/// transaction.
pub async fn audit(
    conn: &mut PgConnection,
    claims: &Claims,
    tenant_id: Uuid,
    action: &str,
    target_type: &str,
    target_id: impl ToString,
    details: Value,
) -> Result<(), sqlx::Error> {
    audit::record(
        conn,
        AuditEntry {
            actor: &claims.sub,
            tenant_id: Some(tenant_id),
            action,
            target_type,
            target_id: Some(target_id.to_string()),
            details,
        },
    )
    .await
}

/// A trimmed text field of `min..=max` characters.
pub fn text_field(field: &str, value: &str, min: usize, max: usize) -> AppResult<String> {
    let value = value.trim();
    let chars = value.chars().count();
    if chars < min || chars > max {
        return Err(AppError::bad_request(format!(
            "{field} must be {min} to {max} characters"
        )));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(AppError::bad_request(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(value.to_owned())
}

/// Whether `err` is a violation of the named unique constraint.
pub fn is_unique_violation(err: &sqlx::Error, constraint: &str) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() && db.constraint() == Some(constraint)
        }
        _ => false,
    }
}

/// A 404 whose message names the missing thing (`tool 0190… not found`).
pub fn not_found(what: impl std::fmt::Display) -> AppError {
    AppError::Status {
        status: axum::http::StatusCode::NOT_FOUND,
        code: "not_found",
        message: format!("{what} not found"),
    }
}

/// A concurrent-call limit: 0 (refuse every call) to 100000, or `None`.
pub fn check_concurrency_limit(limit: Option<i32>) -> AppResult<()> {
    match limit {
        Some(n) if !(0..=100_000).contains(&n) => Err(AppError::bad_request(
            "max_concurrent_calls must be between 0 and 100000, or null for no limit",
        )),
        _ => Ok(()),
    }
}

/// Deserializes a field that may be absent (outer `None`), `null`
/// (`Some(None)`) or a value, for PATCH bodies where null means "clear".
pub fn nullable<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Tells every webhook-ingress that a number's route changed (its agent,
/// its tenant's storage mode or off-boarding), so it drops its cached route now
/// rather than within `PHONE_NUMBER_CACHE_TTL`. Best effort: the change is
/// committed, and a lost message only leaves the TTL.
pub async fn announce_routes_changed(state: &crate::state::AppState) {
    let subject = state.subjects.routes_changed();
    let send = async {
        state
            .nats
            .publish(subject, bytes::Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        state.nats.flush().await.map_err(|e| e.to_string())
    };
    // NATS down: answer anyway, the TTL covers.
    let sent = tokio::time::timeout(std::time::Duration::from_secs(1), send)
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
    if let Err(err) = sent {
        tracing::warn!(%err, "cannot announce a route change; ingresses wait out their cache TTL");
    }
}
