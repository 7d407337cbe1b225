//! `/internal/tools`: the tenant's tools (a name, a description and the JSON
//! Schema their input must match) and each tool's n8n endpoint.

use axum::extract::State;
use axum::http::{HeaderName, StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::auth::InternalPrincipal;
use shared::automation::tool_endpoint_headers_aad;
use shared::crypto::{CryptoError, Sealed, SecretBox};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::error::{AppError, AppResult};
use crate::http::extract::{Json, Path, Query};
use crate::http::pagination::{Cursor, Page};
use crate::management::{TenantListQuery, audit, is_unique_violation, text_field};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_tool, list_tools))
        .routes(routes!(get_tool))
        .routes(routes!(set_tool_endpoint))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Tool {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub description: String,
    /// The JSON Schema a call's input must match.
    #[schema(value_type = Object)]
    pub input_schema: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Where the tool runs; `null` until an endpoint is set.
    #[sqlx(skip)]
    pub endpoint: Option<ToolEndpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "UPPERCASE")]
#[sqlx(type_name = "text", rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct ToolEndpoint {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub tool_id: Uuid,
    pub integration_id: Uuid,
    /// Relative to the integration's `base_url` (e.g. `/webhook/lookup-order`).
    pub webhook_path: String,
    pub method: HttpMethod,
    /// The headers the worker sends, by name only: their values may hold
    /// credentials, so they are sealed at rest and never returned. To change
    /// one, set the endpoint again with every header.
    #[sqlx(rename = "header_names", try_from = "Vec<String>")]
    #[schema(value_type = Vec<EndpointHeader>)]
    pub headers: RedactedHeaders,
    pub timeout_ms: i32,
    pub max_retries: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One header of an endpoint as the api shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct EndpointHeader {
    #[schema(example = "authorization")]
    pub name: String,
    /// Always true: the value is write-only.
    pub redacted: bool,
}

/// An endpoint's header names, each shown as [`EndpointHeader`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RedactedHeaders(pub Vec<EndpointHeader>);

impl From<Vec<String>> for RedactedHeaders {
    fn from(names: Vec<String>) -> Self {
        Self(
            names
                .into_iter()
                .map(|name| EndpointHeader {
                    name,
                    redacted: true,
                })
                .collect(),
        )
    }
}

/// Seals an endpoint's header values (the whole object of name to value)
/// bound to its tenant, tool and integration; none without headers. The
/// api's handler and its start-up reseal both seal with this.
pub fn seal_headers(
    secrets: &SecretBox,
    tenant_id: Uuid,
    tool_id: Uuid,
    integration_id: Uuid,
    template: &Value,
) -> Result<Option<Sealed>, CryptoError> {
    if template.as_object().is_none_or(serde_json::Map::is_empty) {
        return Ok(None);
    }
    secrets
        .seal(
            template.to_string().as_bytes(),
            &tool_endpoint_headers_aad(tenant_id, tool_id, integration_id),
        )
        .map(Some)
}

/// The names of a template's headers, as given.
pub fn header_names(template: &Value) -> Vec<String> {
    template
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTool {
    pub tenant_id: Uuid,
    /// `^[a-z][a-z0-9_]{0,63}$`, unique in the tenant.
    #[schema(pattern = "^[a-z][a-z0-9_]{0,63}$", example = "lookup_order")]
    pub name: String,
    /// Up to 2000 characters; default empty.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: String,
    /// A JSON Schema object (draft from `$schema`, default 2020-12). Remote
    /// `$ref`s are refused.
    #[schema(value_type = Object)]
    pub input_schema: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetToolEndpoint {
    /// One of the tenant's n8n integrations.
    pub integration_id: Uuid,
    /// The webhook's path under `<base_url>/webhook/`, 1 to 500 characters,
    /// no scheme, host or whitespace.
    #[schema(min_length = 1, max_length = 500, example = "lookup-order")]
    pub webhook_path: String,
    /// Default `POST`.
    pub method: Option<HttpMethod>,
    /// An object of header name to string value; default `{}`. Values may
    /// hold placeholders the worker fills (`{{call_id}}`, `{{call_sid}}`,
    /// `{{tenant_id}}`, `{{agent_id}}`, `{{trace_id}}`, `{{execution_id}}`).
    /// Write-only: values are sealed at rest and answers show only the
    /// names (`headers`).
    #[schema(value_type = Option<Object>)]
    pub headers_template: Option<Value>,
    /// 100 to 60000, default 8000.
    #[schema(minimum = 100, maximum = 60000)]
    pub timeout_ms: Option<i32>,
    /// 0 to 10, default 2.
    #[schema(minimum = 0, maximum = 10)]
    pub max_retries: Option<i32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ToolPath {
    pub tool_id: Uuid,
}

pub fn validate_tool_name(name: &str) -> AppResult<()> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(AppError::bad_request(
            "name must match ^[a-z][a-z0-9_]{0,63}$ (a lowercase letter, then lowercase letters, digits or _)",
        ))
    }
}

/// Compiles the schema (checking it against its meta-schema too); the
/// compiler's message is the 400's. jsonschema is built without its
/// resolvers, so a remote `$ref` is an error here, never a fetch.
pub fn validate_input_schema(schema: &Value) -> AppResult<()> {
    if !schema.is_object() {
        return Err(AppError::bad_request(
            "input_schema must be a JSON Schema object",
        ));
    }
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|err| {
            // For a meta-schema error the instance path points into the schema.
            let at = err.instance_path().as_str();
            let at = if at.is_empty() {
                String::new()
            } else {
                format!(" (at input_schema{at})")
            };
            AppError::bad_request(format!(
                "input_schema is not a valid JSON Schema: {err}{at}"
            ))
        })
}

fn validate_webhook_path(path: &str) -> AppResult<()> {
    let bad = |why: &str| AppError::bad_request(format!("webhook_path {why}"));
    if path.is_empty() || path.len() > 500 {
        return Err(bad("must be 1 to 500 characters"));
    }
    if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err(bad("must not contain whitespace, control characters or \\"));
    }
    // The integration's base URL fixes scheme and host; the path must not
    // override them (an SSRF bypass).
    if path.contains("://") || path.starts_with("//") || path.contains('@') {
        return Err(bad(
            "must be a path relative to the integration's base URL, not a URL",
        ));
    }
    if path.split(['/', '?', '#']).any(|segment| segment == "..") {
        return Err(bad("must not contain .. segments"));
    }
    Ok(())
}

fn validate_headers_template(template: &Value) -> AppResult<()> {
    let Some(map) = template.as_object() else {
        return Err(AppError::bad_request(
            "headers_template must be an object of header name to string value",
        ));
    };
    if map.len() > 50 {
        return Err(AppError::bad_request(
            "headers_template: at most 50 headers",
        ));
    }
    for (name, value) in map {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(AppError::bad_request(format!(
                "headers_template: {name:?} is not a valid header name"
            )));
        }
        if shared::automation::is_framing_header(name) {
            return Err(AppError::bad_request(format!(
                "headers_template: {name} is set by the worker itself and cannot be templated"
            )));
        }
        let Some(text) = value.as_str() else {
            return Err(AppError::bad_request(format!(
                "headers_template.{name} must be a string"
            )));
        };
        if text.len() > 4096 || text.chars().any(|c| c == '\r' || c == '\n') {
            return Err(AppError::bad_request(format!(
                "headers_template.{name} must be one line of at most 4096 bytes"
            )));
        }
    }
    Ok(())
}

const TOOL_COLUMNS_SELECT: &str =
    "SELECT id, tenant_id, name, description, input_schema, created_at, updated_at FROM tools";
const ENDPOINT_COLUMNS: &str = "id, tenant_id, tool_id, integration_id, webhook_path, method, header_names, timeout_ms, max_retries, created_at, updated_at";

async fn attach_endpoints(
    pool: &sqlx::PgPool,
    tenant_id: Uuid,
    tools: &mut [Tool],
) -> AppResult<()> {
    let ids: Vec<Uuid> = tools.iter().map(|t| t.id).collect();
    let sql = format!(
        "SELECT {ENDPOINT_COLUMNS} FROM tool_endpoints WHERE tenant_id = $2 AND tool_id = ANY($1)"
    );
    let endpoints: Vec<ToolEndpoint> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&ids)
        .bind(tenant_id)
        .fetch_all(pool)
        .await?;
    for tool in tools {
        tool.endpoint = endpoints.iter().find(|e| e.tool_id == tool.id).cloned();
    }
    Ok(())
}

/// Creates a tool after compiling its input schema.
#[utoipa::path(post, path = "/internal/tools", tag = "tools",
    security(("bearer" = [])),
    request_body = CreateTool,
    responses(
        (status = 201, body = Tool),
        (status = 400, description = "bad name, or input_schema does not compile (the compiler's message)", body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 409, description = "a tool with that name exists in the tenant", body = shared::error::ErrorBody),
    ))]
async fn create_tool(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Json(body): Json<CreateTool>,
) -> AppResult<(StatusCode, Json<Tool>)> {
    claims.require_tenant(body.tenant_id)?;
    validate_tool_name(&body.name)?;
    let description = text_field("description", &body.description, 0, 2000)?;
    crate::http::size_caps::check(
        "input_schema",
        &body.input_schema,
        state.settings.size_caps.tool_schema,
        "MAX_TOOL_SCHEMA_BYTES",
    )?;
    validate_input_schema(&body.input_schema)?;
    let mut tx = state.pool.begin().await?;
    let inserted = sqlx::query_as::<_, Tool>(
        "INSERT INTO tools (id, tenant_id, name, description, input_schema)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING id, tenant_id, name, description, input_schema, created_at, updated_at",
    )
    .bind(Uuid::now_v7())
    .bind(body.tenant_id)
    .bind(&body.name)
    .bind(&description)
    .bind(&body.input_schema)
    .fetch_one(&mut *tx)
    .await;
    let tool = match inserted {
        Ok(tool) => tool,
        Err(err) if is_unique_violation(&err, "tools_tenant_name_key") => {
            return Err(AppError::Conflict(format!(
                "a tool named {} already exists in the tenant",
                body.name
            )));
        }
        Err(err) => return Err(err.into()),
    };
    audit(
        &mut tx,
        &claims,
        tool.tenant_id,
        "tool.create",
        "tool",
        tool.id,
        json!({"name": tool.name}),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(tool)))
}

/// The tenant's tools with their endpoints, newest first.
#[utoipa::path(get, path = "/internal/tools", tag = "tools",
    security(("bearer" = [])),
    params(TenantListQuery),
    responses(
        (status = 200, body = Page<Tool>),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
    ))]
async fn list_tools(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Query(query): Query<TenantListQuery>,
) -> AppResult<Json<Page<Tool>>> {
    let mut page = query
        .fetch_page(&claims, &state.pool, TOOL_COLUMNS_SELECT, |t: &Tool| {
            Cursor {
                at: t.created_at,
                id: t.id,
            }
        })
        .await?;
    attach_endpoints(&state.pool, query.tenant_id, &mut page.items).await?;
    Ok(Json(page))
}

#[utoipa::path(get, path = "/internal/tools/{tool_id}", tag = "tools",
    security(("bearer" = [])),
    params(ToolPath),
    responses(
        (status = 200, body = Tool),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn get_tool(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<ToolPath>,
) -> AppResult<Json<Tool>> {
    let sql = format!("{TOOL_COLUMNS_SELECT} WHERE id = $1 AND tenant_id = $2");
    let tool: Tool = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(path.tool_id)
        .bind(claims.tenant_id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or(AppError::NotFound("tool"))?;
    let mut tools = [tool];
    attach_endpoints(&state.pool, claims.tenant_id, &mut tools).await?;
    let [tool] = tools;
    Ok(Json(tool))
}

/// Sets the tool's endpoint (one per tool: a second call replaces it).
#[utoipa::path(post, path = "/internal/tools/{tool_id}/endpoints", tag = "tools",
    security(("bearer" = [])),
    params(ToolPath),
    request_body = SetToolEndpoint,
    responses(
        (status = 201, description = "created", body = ToolEndpoint),
        (status = 200, description = "replaced the tool's endpoint", body = ToolEndpoint),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, description = "the tool or the integration", body = shared::error::ErrorBody),
    ))]
async fn set_tool_endpoint(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<ToolPath>,
    Json(body): Json<SetToolEndpoint>,
) -> AppResult<(StatusCode, Json<ToolEndpoint>)> {
    let webhook_path = body.webhook_path.trim();
    validate_webhook_path(webhook_path)?;
    let headers_template = body.headers_template.unwrap_or_else(|| json!({}));
    validate_headers_template(&headers_template)?;
    let timeout_ms = body.timeout_ms.unwrap_or(8000);
    if !(100..=60_000).contains(&timeout_ms) {
        return Err(AppError::bad_request(
            "timeout_ms must be between 100 and 60000",
        ));
    }
    let max_retries = body.max_retries.unwrap_or(2);
    if !(0..=10).contains(&max_retries) {
        return Err(AppError::bad_request(
            "max_retries must be between 0 and 10",
        ));
    }
    let method = body.method.unwrap_or(HttpMethod::Post);
    let header_names = header_names(&headers_template);
    let sealed = seal_headers(
        &state.secrets,
        claims.tenant_id,
        path.tool_id,
        body.integration_id,
        &headers_template,
    )
    .map_err(anyhow::Error::from)?;

    let mut tx = state.pool.begin().await?;
    let tool: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM tools WHERE id = $1 AND tenant_id = $2 FOR UPDATE")
            .bind(path.tool_id)
            .bind(claims.tenant_id)
            .fetch_optional(&mut *tx)
            .await?;
    if tool.is_none() {
        return Err(AppError::NotFound("tool"));
    }
    let integration: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM integrations WHERE id = $1 AND tenant_id = $2)",
    )
    .bind(body.integration_id)
    .bind(claims.tenant_id)
    .fetch_one(&mut *tx)
    .await?;
    if !integration {
        return Err(AppError::NotFound("integration"));
    }
    let sql = format!(
        "INSERT INTO tool_endpoints (id, tenant_id, tool_id, integration_id, webhook_path, method,
                                     headers_template, header_names, headers_ciphertext,
                                     headers_nonce, headers_key_id, timeout_ms, max_retries)
         VALUES ($1, $2, $3, $4, $5, $6, '{{}}', $7, $8, $9, $10, $11, $12)
         ON CONFLICT (tool_id) DO UPDATE SET
             integration_id = EXCLUDED.integration_id,
             webhook_path = EXCLUDED.webhook_path,
             method = EXCLUDED.method,
             headers_template = EXCLUDED.headers_template,
             header_names = EXCLUDED.header_names,
             headers_ciphertext = EXCLUDED.headers_ciphertext,
             headers_nonce = EXCLUDED.headers_nonce,
             headers_key_id = EXCLUDED.headers_key_id,
             timeout_ms = EXCLUDED.timeout_ms,
             max_retries = EXCLUDED.max_retries,
             updated_at = now()
         RETURNING {ENDPOINT_COLUMNS}, (xmax = 0) AS created"
    );
    #[derive(sqlx::FromRow)]
    struct Upserted {
        #[sqlx(flatten)]
        endpoint: ToolEndpoint,
        created: bool,
    }
    let Upserted { endpoint, created } = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::now_v7())
        .bind(claims.tenant_id)
        .bind(path.tool_id)
        .bind(body.integration_id)
        .bind(webhook_path)
        .bind(method)
        .bind(&header_names)
        .bind(sealed.as_ref().map(|s| &s.ciphertext))
        .bind(sealed.as_ref().map(|s| &s.nonce))
        .bind(sealed.as_ref().map(|s| &s.key_id))
        .bind(timeout_ms)
        .bind(max_retries)
        .fetch_one(&mut *tx)
        .await?;
    audit(
        &mut tx,
        &claims,
        claims.tenant_id,
        if created {
            "tool_endpoint.create"
        } else {
            "tool_endpoint.replace"
        },
        "tool_endpoint",
        endpoint.id,
        // Header values may carry credentials: only their names are audited.
        json!({"tool_id": path.tool_id, "integration_id": endpoint.integration_id,
               "webhook_path": endpoint.webhook_path, "method": endpoint.method,
               "header_names": header_names,
               "timeout_ms": timeout_ms, "max_retries": max_retries}),
    )
    .await?;
    tx.commit().await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(endpoint)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names() {
        for ok in ["a", "lookup_order", "x9_", &format!("a{}", "b".repeat(63))] {
            assert!(validate_tool_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "9a",
            "_a",
            "Lookup",
            "look-up",
            "look up",
            "é",
            &format!("a{}", "b".repeat(64)),
        ] {
            assert!(validate_tool_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schemas_compile_or_explain() {
        assert!(validate_input_schema(&json!({"type": "object"})).is_ok());
        assert!(validate_input_schema(&json!({"type": 12})).is_err());
        assert!(validate_input_schema(&json!(true)).is_err());
        assert!(validate_input_schema(&json!({"$ref": "https://example.com/s.json"})).is_err());
    }

    #[test]
    fn webhook_paths() {
        for ok in ["/webhook/lookup", "webhook/x?y=1", "/webhook/:id"] {
            assert!(validate_webhook_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "https://evil.example/x",
            "//evil.example/x",
            "/a b",
            "/../admin",
            "/x@evil",
        ] {
            assert!(validate_webhook_path(bad).is_err(), "{bad}");
        }
    }

    /// Arbitrary JSON as a schema, and arbitrary instances against the
    /// schemas that compile: never a panic, always a verdict.
    mod property {
        use super::*;
        use proptest::prelude::*;

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|f| json!(f)),
                ".{0,12}".prop_map(Value::String),
                prop_oneof![
                    Just("type"),
                    Just("properties"),
                    Just("required"),
                    Just("items"),
                    Just("$ref"),
                    Just("pattern"),
                    Just("minimum"),
                    Just("enum"),
                    Just("object"),
                    Just("string"),
                    Just("#"),
                    Just("(a+)+$")
                ]
                .prop_map(|s| Value::String(s.into())),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    proptest::collection::btree_map(
                        prop_oneof![
                            Just("type".to_owned()),
                            Just("properties".to_owned()),
                            Just("required".to_owned()),
                            Just("items".to_owned()),
                            Just("pattern".to_owned()),
                            Just("$ref".to_owned()),
                            Just("enum".to_owned()),
                            ".{0,6}"
                        ],
                        inner,
                        0..6
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn any_schema_compiles_or_is_refused(schema in json(), instance in json()) {
                if validate_input_schema(&schema).is_ok()
                    && let Ok(validator) = jsonschema::validator_for(&schema)
                {
                    let _ = crate::automation::schema_cache::violations(&validator, &instance);
                }
            }
        }
    }
}
