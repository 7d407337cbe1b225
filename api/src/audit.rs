//! The audit log: who changed what, in which tenant, when. Written in the
//! same transaction as the change it records.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// One audit entry. `actor` is the token's `sub` (or a fixed label such as
/// `bootstrap` for key-authenticated routes).
pub struct AuditEntry<'a> {
    pub actor: &'a str,
    pub tenant_id: Option<Uuid>,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: Option<String>,
    pub details: Value,
}

pub async fn record(conn: &mut PgConnection, entry: AuditEntry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (id, tenant_id, actor, action, target_type, target_id, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::now_v7())
    .bind(entry.tenant_id)
    .bind(entry.actor)
    .bind(entry.action)
    .bind(entry.target_type)
    .bind(entry.target_id)
    .bind(entry.details)
    .execute(conn)
    .await?;
    Ok(())
}
