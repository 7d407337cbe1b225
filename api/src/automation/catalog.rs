//! `GET /internal/automation/tools/catalog?call_id=`: the tools a call may
//! use, shaped to hand to an LLM as function definitions.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::auth::RuntimePrincipal;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::http::error::AppResult;
use crate::http::extract::{Json, Query};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CatalogQuery {
    pub call_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct CatalogTool {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// The tool's JSON Schema: an LLM function's `parameters`.
    pub input_schema: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Catalog {
    pub call_id: Uuid,
    /// True when only the agent version's allowlisted tools are listed.
    pub allowlist_enforced: bool,
    pub tools: Vec<CatalogTool>,
}

/// The call's tenant's tools that have an endpoint on an active
/// integration; with `AUTOMATION_REQUIRE_AGENT_TOOL_MAPPING=true`, only
/// those on the allowlist of the call's agent version.
#[utoipa::path(get, path = "/internal/automation/tools/catalog", tag = "automation",
    params(CatalogQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Catalog),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, description = "unknown call", body = shared::error::ErrorBody),
    ))]
pub async fn tool_catalog(
    State(state): State<AppState>,
    RuntimePrincipal(claims): RuntimePrincipal,
    Query(query): Query<CatalogQuery>,
) -> AppResult<Json<Catalog>> {
    let call = super::find_call(&state.pool, claims.tenant_id, query.call_id).await?;
    let enforced = state.settings.automation.require_agent_tool_mapping;
    let tools: Vec<CatalogTool> = sqlx::query_as(
        "SELECT t.id, t.name, t.description, t.input_schema
         FROM tools t
         JOIN tool_endpoints e ON e.tenant_id = t.tenant_id AND e.tool_id = t.id
         JOIN integrations i ON i.tenant_id = e.tenant_id AND i.id = e.integration_id
         WHERE t.tenant_id = $1 AND i.status = 'active'
           AND (NOT $2 OR EXISTS (
                SELECT 1 FROM agent_version_tools avt
                WHERE avt.tenant_id = t.tenant_id AND avt.tool_id = t.id
                  AND avt.agent_version_id = $3))
         ORDER BY t.name",
    )
    .bind(claims.tenant_id)
    .bind(enforced)
    .bind(call.agent_version_id)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Catalog {
        call_id: call.id,
        allowlist_enforced: enforced,
        tools,
    }))
}
