//! Flow 2, the automation gateway: the tool catalog of a call
//! ([`catalog`]), tool execution through automation-worker ([`execute`]) and
//! what happened ([`executions`]). The api checks and records;
//! automation-worker (over NATS request/reply) is the only one to decrypt
//! secrets and call n8n. The n8n integration test, which goes the same way,
//! lives beside the integrations (`crate::management::integrations_test`).

use std::time::Duration;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::error::{AppError, AppResult};
use crate::state::AppState;

pub mod catalog;
pub mod execute;
pub mod executions;
pub mod schema_cache;

/// The api's automation settings (see `config.rs` for their flags).
#[derive(Debug, Clone)]
pub struct AutomationSettings {
    pub require_agent_tool_mapping: bool,
    pub max_executions_per_minute: u32,
    pub execute_timeout: Duration,
    pub integration_test_timeout: Duration,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(catalog::tool_catalog))
        .routes(routes!(execute::execute_tool_by_id))
        .routes(routes!(execute::execute_tool_by_name))
        .routes(routes!(executions::get_execution))
        .routes(routes!(executions::list_call_executions))
}

/// The call's row as the checks need it, scoped to the tenant.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CallRef {
    pub id: Uuid,
    pub agent_version_id: Option<Uuid>,
}

/// 404 for another tenant's call exactly like a missing one.
pub(crate) async fn find_call(
    pool: &sqlx::PgPool,
    tenant_id: Uuid,
    call_id: Uuid,
) -> AppResult<CallRef> {
    sqlx::query_as(
        "SELECT id, agent_version_id FROM call_sessions
         WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2",
    )
    .bind(call_id)
    .bind(tenant_id)
    .fetch_optional(pool)
    .await?
    .ok_or(AppError::NotFound("call"))
}
