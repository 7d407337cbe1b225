//! `/internal/agents`: agents, their numbered versions (draft, then
//! published and immutable), the active version, and each version's tool
//! allowlist (part of the version: frozen with it on publish).

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::auth::{Claims, InternalPrincipal};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::error::{AppError, AppResult};
use crate::http::extract::{Json, Path, Query};
use crate::http::pagination::{Cursor, Page, PageRequest};
use crate::http::size_caps;
use crate::management::{
    TenantListQuery, audit, check_concurrency_limit, not_found, nullable, text_field,
};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_agent, list_agents))
        .routes(routes!(get_agent, update_agent))
        .routes(routes!(create_version, list_versions))
        .routes(routes!(get_version, update_version))
        .routes(routes!(publish_version))
        .routes(routes!(activate_version))
        .routes(routes!(set_version_tools))
}

/// The columns of [`Agent`], for every statement that returns one.
macro_rules! agent_columns {
    () => {
        "id, tenant_id, name, active_version_id, max_concurrent_calls, created_at, updated_at"
    };
}

/// Most tools one version may allow.
const MAX_ALLOWLIST: usize = 200;

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Agent {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// The published version inbound calls use; `null` until one is activated.
    pub active_version_id: Option<Uuid>,
    /// Most calls of this agent in progress at once (within its tenant's
    /// own limit); `null`: only the tenant's limit applies.
    pub max_concurrent_calls: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum VersionStatus {
    Draft,
    Published,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AgentVersion {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub agent_id: Uuid,
    /// 1, 2, 3 ... per agent.
    pub version: i32,
    /// Prompt, voice and model settings, stored as given.
    #[schema(value_type = Object)]
    pub config: Value,
    pub status: VersionStatus,
    pub published_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Whether this is the agent's active version.
    pub is_active: bool,
    /// The tools this version may call (its allowlist).
    pub tool_ids: Vec<Uuid>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    pub tenant_id: Uuid,
    /// 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    /// 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// Most calls of this agent in progress at once (0 to 100000), or
    /// `null` to leave only the tenant's limit. Lowering it cuts no call in
    /// progress: new calls are refused until the agent is under it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i32>, nullable, minimum = 0, maximum = 100000)]
    pub max_concurrent_calls: Option<Option<i32>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionConfig {
    /// A JSON object (prompt, voice, model settings).
    #[schema(value_type = Object)]
    pub config: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionTools {
    /// Replaces the allowlist; every tool must be the tenant's. At most 200.
    #[schema(max_items = 200)]
    pub tool_ids: Vec<Uuid>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AgentPath {
    pub agent_id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct VersionPath {
    pub agent_id: Uuid,
    pub version_id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionListQuery {
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

const VERSION_SELECT: &str = "SELECT v.id, v.tenant_id, v.agent_id, v.version, v.config, v.status,
        v.published_at, v.created_at,
        COALESCE(a.active_version_id = v.id, false) AS is_active,
        COALESCE((SELECT array_agg(t.tool_id ORDER BY t.tool_id) FROM agent_version_tools t
                  WHERE t.agent_version_id = v.id), '{}') AS tool_ids
 FROM agent_versions v JOIN agents a ON a.id = v.agent_id";

fn check_config(state: &AppState, config: &Value) -> AppResult<()> {
    if !config.is_object() {
        return Err(AppError::bad_request("config must be a JSON object"));
    }
    size_caps::check(
        "config",
        config,
        state.settings.size_caps.agent_config,
        "MAX_AGENT_CONFIG_BYTES",
    )?;
    Ok(())
}

async fn fetch_version(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    agent_id: Uuid,
    version_id: Uuid,
) -> AppResult<AgentVersion> {
    let sql = format!("{VERSION_SELECT} WHERE v.id = $1 AND v.agent_id = $2 AND v.tenant_id = $3");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(version_id)
        .bind(agent_id)
        .bind(tenant_id)
        .fetch_optional(conn)
        .await?
        .ok_or(AppError::NotFound("agent version"))
}

/// Locks a version of the token's tenant for a change and returns its
/// status; 404 for another tenant's or a missing one.
async fn lock_version(
    conn: &mut PgConnection,
    claims: &Claims,
    path: &VersionPath,
) -> AppResult<VersionStatus> {
    sqlx::query_scalar(
        "SELECT status FROM agent_versions
         WHERE id = $1 AND agent_id = $2 AND tenant_id = $3 FOR UPDATE",
    )
    .bind(path.version_id)
    .bind(path.agent_id)
    .bind(claims.tenant_id)
    .fetch_optional(conn)
    .await?
    .ok_or(AppError::NotFound("agent version"))
}

fn published_conflict(what: &str) -> AppError {
    AppError::Conflict(format!(
        "the version is published and can no longer change ({what}); create a new version"
    ))
}

/// Creates an agent in the token's tenant.
#[utoipa::path(post, path = "/internal/agents", tag = "agents",
    security(("bearer" = [])),
    request_body = CreateAgent,
    responses(
        (status = 201, body = Agent),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
    ))]
async fn create_agent(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Json(body): Json<CreateAgent>,
) -> AppResult<(StatusCode, Json<Agent>)> {
    claims.require_tenant(body.tenant_id)?;
    let name = text_field("name", &body.name, 1, 200)?;
    let mut tx = state.pool.begin().await?;
    let agent: Agent = sqlx::query_as(concat!(
        "INSERT INTO agents (id, tenant_id, name) VALUES ($1, $2, $3)
         RETURNING ",
        agent_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(body.tenant_id)
    .bind(&name)
    .fetch_one(&mut *tx)
    .await?;
    audit(
        &mut tx,
        &claims,
        agent.tenant_id,
        "agent.create",
        "agent",
        agent.id,
        json!({"name": name}),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(agent)))
}

const AGENT_SELECT: &str = concat!("SELECT ", agent_columns!(), " FROM agents");

/// The tenant's agents, newest first.
#[utoipa::path(get, path = "/internal/agents", tag = "agents",
    security(("bearer" = [])),
    params(TenantListQuery),
    responses(
        (status = 200, body = Page<Agent>),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
    ))]
async fn list_agents(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Query(query): Query<TenantListQuery>,
) -> AppResult<Json<Page<Agent>>> {
    let page = query
        .fetch_page(&claims, &state.pool, AGENT_SELECT, |a: &Agent| Cursor {
            at: a.created_at,
            id: a.id,
        })
        .await?;
    Ok(Json(page))
}

#[utoipa::path(get, path = "/internal/agents/{agent_id}", tag = "agents",
    security(("bearer" = [])),
    params(AgentPath),
    responses(
        (status = 200, body = Agent),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn get_agent(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<AgentPath>,
) -> AppResult<Json<Agent>> {
    let agent = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{AGENT_SELECT} WHERE id = $1 AND tenant_id = $2"
    )))
    .bind(path.agent_id)
    .bind(claims.tenant_id)
    .fetch_optional(&state.pool)
    .await?
    .ok_or(AppError::NotFound("agent"))?;
    Ok(Json(agent))
}

/// Renames the agent and/or sets its concurrent-call limit (`null` clears
/// it); audited.
#[utoipa::path(patch, path = "/internal/agents/{agent_id}", tag = "agents",
    security(("bearer" = [])),
    params(AgentPath),
    request_body = UpdateAgent,
    responses(
        (status = 200, body = Agent),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn update_agent(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<AgentPath>,
    Json(body): Json<UpdateAgent>,
) -> AppResult<Json<Agent>> {
    let name = body
        .name
        .as_deref()
        .map(|n| text_field("name", n, 1, 200))
        .transpose()?;
    if let Some(limit) = body.max_concurrent_calls {
        check_concurrency_limit(limit)?;
    }
    if name.is_none() && body.max_concurrent_calls.is_none() {
        return Err(AppError::bad_request(
            "nothing to update: give name and/or max_concurrent_calls",
        ));
    }
    let mut tx = state.pool.begin().await?;
    let agent: Agent = sqlx::query_as(concat!(
        "UPDATE agents
         SET name = COALESCE($3, name),
             max_concurrent_calls = CASE WHEN $4 THEN $5 ELSE max_concurrent_calls END,
             updated_at = now()
         WHERE id = $1 AND tenant_id = $2
         RETURNING ",
        agent_columns!()
    ))
    .bind(path.agent_id)
    .bind(claims.tenant_id)
    .bind(&name)
    .bind(body.max_concurrent_calls.is_some())
    .bind(body.max_concurrent_calls.flatten())
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(AppError::NotFound("agent"))?;
    let mut details = serde_json::Map::new();
    if let Some(name) = &name {
        details.insert("name".into(), json!(name));
    }
    if let Some(limit) = body.max_concurrent_calls {
        details.insert("max_concurrent_calls".into(), json!(limit));
    }
    audit(
        &mut tx,
        &claims,
        claims.tenant_id,
        "agent.update",
        "agent",
        agent.id,
        details.into(),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(agent))
}

/// Adds a draft version numbered one past the agent's last.
#[utoipa::path(post, path = "/internal/agents/{agent_id}/versions", tag = "agents",
    security(("bearer" = [])),
    params(AgentPath),
    request_body = VersionConfig,
    responses(
        (status = 201, body = AgentVersion),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn create_version(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<AgentPath>,
    Json(body): Json<VersionConfig>,
) -> AppResult<(StatusCode, Json<AgentVersion>)> {
    check_config(&state, &body.config)?;
    let mut tx = state.pool.begin().await?;
    // The agent's row lock serialises numbering: concurrent creations get
    // consecutive numbers instead of a unique violation.
    let found: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM agents WHERE id = $1 AND tenant_id = $2 FOR UPDATE")
            .bind(path.agent_id)
            .bind(claims.tenant_id)
            .fetch_optional(&mut *tx)
            .await?;
    if found.is_none() {
        return Err(AppError::NotFound("agent"));
    }
    let version_id = Uuid::now_v7();
    let number: i32 = sqlx::query_scalar(
        "INSERT INTO agent_versions (id, tenant_id, agent_id, version, config)
         SELECT $1, $2, $3, COALESCE(max(version), 0) + 1, $4
         FROM agent_versions WHERE agent_id = $3
         RETURNING version",
    )
    .bind(version_id)
    .bind(claims.tenant_id)
    .bind(path.agent_id)
    .bind(&body.config)
    .fetch_one(&mut *tx)
    .await?;
    audit(
        &mut tx,
        &claims,
        claims.tenant_id,
        "agent_version.create",
        "agent_version",
        version_id,
        json!({"agent_id": path.agent_id, "version": number}),
    )
    .await?;
    let version = fetch_version(&mut tx, claims.tenant_id, path.agent_id, version_id).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(version)))
}

/// The agent's versions, highest number first.
#[utoipa::path(get, path = "/internal/agents/{agent_id}/versions", tag = "agents",
    security(("bearer" = [])),
    params(AgentPath, VersionListQuery),
    responses(
        (status = 200, body = Page<AgentVersion>),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn list_versions(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<AgentPath>,
    Query(query): Query<VersionListQuery>,
) -> AppResult<Json<Page<AgentVersion>>> {
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM agents WHERE id = $1 AND tenant_id = $2)")
            .bind(path.agent_id)
            .bind(claims.tenant_id)
            .fetch_one(&state.pool)
            .await?;
    if !exists {
        return Err(AppError::NotFound("agent"));
    }
    // Ordered by number; the cursor's id names the last version seen, and
    // one naming no version of this agent would silently end the list.
    if let Some(cursor_id) = page.cursor_id() {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM agent_versions WHERE id = $1 AND agent_id = $2 AND tenant_id = $3)",
        )
        .bind(cursor_id)
        .bind(path.agent_id)
        .bind(claims.tenant_id)
        .fetch_one(&state.pool)
        .await?;
        if !known {
            return Err(AppError::bad_request("cursor is malformed"));
        }
    }
    let sql = format!(
        "{VERSION_SELECT}
         WHERE v.agent_id = $1 AND v.tenant_id = $2
           AND ($3::uuid IS NULL OR v.version <
                (SELECT c.version FROM agent_versions c WHERE c.id = $3 AND c.agent_id = $1))
         ORDER BY v.version DESC
         LIMIT $4"
    );
    let rows: Vec<AgentVersion> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(path.agent_id)
        .bind(claims.tenant_id)
        .bind(page.cursor_id())
        .bind(page.fetch())
        .fetch_all(&state.pool)
        .await?;
    Ok(Json(page.page(rows, |v| Cursor {
        at: v.created_at,
        id: v.id,
    })))
}

#[utoipa::path(get, path = "/internal/agents/{agent_id}/versions/{version_id}", tag = "agents",
    security(("bearer" = [])),
    params(VersionPath),
    responses(
        (status = 200, body = AgentVersion),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn get_version(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<VersionPath>,
) -> AppResult<Json<AgentVersion>> {
    let mut conn = state.pool.acquire().await?;
    Ok(Json(
        fetch_version(&mut conn, claims.tenant_id, path.agent_id, path.version_id).await?,
    ))
}

/// Replaces a draft's config; a published version answers 409.
#[utoipa::path(patch, path = "/internal/agents/{agent_id}/versions/{version_id}", tag = "agents",
    security(("bearer" = [])),
    params(VersionPath),
    request_body = VersionConfig,
    responses(
        (status = 200, body = AgentVersion),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
        (status = 409, description = "the version is published", body = shared::error::ErrorBody),
    ))]
async fn update_version(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<VersionPath>,
    Json(body): Json<VersionConfig>,
) -> AppResult<Json<AgentVersion>> {
    check_config(&state, &body.config)?;
    let mut tx = state.pool.begin().await?;
    if lock_version(&mut tx, &claims, &path).await? == VersionStatus::Published {
        return Err(published_conflict("config"));
    }
    sqlx::query("UPDATE agent_versions SET config = $2 WHERE id = $1 AND tenant_id = $3")
        .bind(path.version_id)
        .bind(&body.config)
        .bind(claims.tenant_id)
        .execute(&mut *tx)
        .await?;
    audit(
        &mut tx,
        &claims,
        claims.tenant_id,
        "agent_version.update",
        "agent_version",
        path.version_id,
        json!({"agent_id": path.agent_id}),
    )
    .await?;
    let version = fetch_version(&mut tx, claims.tenant_id, path.agent_id, path.version_id).await?;
    tx.commit().await?;
    Ok(Json(version))
}

/// Publishes a draft: from now on its config and allowlist are frozen.
#[utoipa::path(post, path = "/internal/agents/{agent_id}/versions/{version_id}/publish", tag = "agents",
    security(("bearer" = [])),
    params(VersionPath),
    responses(
        (status = 200, body = AgentVersion),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
        (status = 409, description = "already published", body = shared::error::ErrorBody),
    ))]
async fn publish_version(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<VersionPath>,
) -> AppResult<Json<AgentVersion>> {
    let mut tx = state.pool.begin().await?;
    if lock_version(&mut tx, &claims, &path).await? == VersionStatus::Published {
        return Err(AppError::Conflict(
            "the version is already published".into(),
        ));
    }
    sqlx::query(
        "UPDATE agent_versions SET status = 'published', published_at = now()
         WHERE id = $1 AND tenant_id = $2",
    )
    .bind(path.version_id)
    .bind(claims.tenant_id)
    .execute(&mut *tx)
    .await?;
    let version = fetch_version(&mut tx, claims.tenant_id, path.agent_id, path.version_id).await?;
    audit(
        &mut tx,
        &claims,
        claims.tenant_id,
        "agent_version.publish",
        "agent_version",
        path.version_id,
        json!({"agent_id": path.agent_id, "version": version.version, "tool_ids": version.tool_ids}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(version))
}

/// Makes a published version the agent's active one (one UPDATE, so the
/// switch is atomic); activating the active version again is a no-op.
#[utoipa::path(post, path = "/internal/agents/{agent_id}/versions/{version_id}/activate", tag = "agents",
    security(("bearer" = [])),
    params(VersionPath),
    responses(
        (status = 200, body = Agent),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
        (status = 409, description = "the version is a draft", body = shared::error::ErrorBody),
    ))]
async fn activate_version(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<VersionPath>,
) -> AppResult<Json<Agent>> {
    let mut tx = state.pool.begin().await?;
    // Lock the agent first (the same order as version creation).
    let previous: Option<Option<Uuid>> = sqlx::query_scalar(
        "SELECT active_version_id FROM agents WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
    )
    .bind(path.agent_id)
    .bind(claims.tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(previous) = previous else {
        return Err(AppError::NotFound("agent"));
    };
    if lock_version(&mut tx, &claims, &path).await? == VersionStatus::Draft {
        return Err(AppError::Conflict(
            "only a published version can be activated; publish it first".into(),
        ));
    }
    let agent: Agent = sqlx::query_as(concat!(
        "UPDATE agents SET active_version_id = $2, updated_at = now()
         WHERE id = $1 AND tenant_id = $3
         RETURNING ",
        agent_columns!()
    ))
    .bind(path.agent_id)
    .bind(path.version_id)
    .bind(claims.tenant_id)
    .fetch_one(&mut *tx)
    .await?;
    if previous != Some(path.version_id) {
        audit(
            &mut tx,
            &claims,
            claims.tenant_id,
            "agent_version.activate",
            "agent_version",
            path.version_id,
            json!({"agent_id": path.agent_id, "previous_version_id": previous}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(agent))
}

/// Replaces a draft version's tool allowlist; 409 once published.
#[utoipa::path(post, path = "/internal/agents/{agent_id}/versions/{version_id}/tools", tag = "agents",
    security(("bearer" = [])),
    params(VersionPath),
    request_body = VersionTools,
    responses(
        (status = 200, body = AgentVersion),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, description = "the version or one of the tools", body = shared::error::ErrorBody),
        (status = 409, description = "the version is published", body = shared::error::ErrorBody),
    ))]
async fn set_version_tools(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<VersionPath>,
    Json(body): Json<VersionTools>,
) -> AppResult<Json<AgentVersion>> {
    let mut tool_ids = body.tool_ids;
    tool_ids.sort_unstable();
    tool_ids.dedup();
    if tool_ids.len() > MAX_ALLOWLIST {
        return Err(AppError::bad_request(format!(
            "tool_ids: at most {MAX_ALLOWLIST} tools"
        )));
    }
    let mut tx = state.pool.begin().await?;
    if lock_version(&mut tx, &claims, &path).await? == VersionStatus::Published {
        return Err(published_conflict("tool allowlist"));
    }
    let known: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM tools WHERE tenant_id = $1 AND id = ANY($2)")
            .bind(claims.tenant_id)
            .bind(&tool_ids)
            .fetch_all(&mut *tx)
            .await?;
    if let Some(missing) = tool_ids.iter().find(|id| !known.contains(id)) {
        return Err(not_found(format_args!("tool {missing}")));
    }
    sqlx::query("DELETE FROM agent_version_tools WHERE agent_version_id = $1 AND tenant_id = $2")
        .bind(path.version_id)
        .bind(claims.tenant_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO agent_version_tools (tenant_id, agent_version_id, tool_id)
         SELECT $1, $2, unnest($3::uuid[])",
    )
    .bind(claims.tenant_id)
    .bind(path.version_id)
    .bind(&tool_ids)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut tx,
        &claims,
        claims.tenant_id,
        "agent_version.set_tools",
        "agent_version",
        path.version_id,
        json!({"agent_id": path.agent_id, "tool_ids": tool_ids}),
    )
    .await?;
    let version = fetch_version(&mut tx, claims.tenant_id, path.agent_id, path.version_id).await?;
    tx.commit().await?;
    Ok(Json(version))
}
