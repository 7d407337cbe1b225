//! Rows the management API would create, inserted with SQL: a tenant with
//! a live call, integrations and tools sealed as the api seals them.

use serde_json::{Value, json};
use shared::automation::integration_secret_aad;
use shared::crypto::SecretBox;
use sqlx::PgPool;
use uuid::Uuid;

use super::{TestApp, test_config};

/// A tenant with an agent, a version and a live call.
#[derive(Debug, Clone, Copy)]
pub struct Seed {
    pub tenant_id: Uuid,
    pub agent_id: Uuid,
    pub version_id: Uuid,
    pub call_id: Uuid,
}

pub async fn seed(pool: &PgPool) -> Seed {
    let tenant_id = Uuid::now_v7();
    let agent_id = Uuid::now_v7();
    let version_id = Uuid::now_v7();
    let call_id = Uuid::now_v7();
    let mut tx = pool.begin().await.expect("tx");
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'Acme')")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await
        .expect("tenant");
    sqlx::query("INSERT INTO agents (id, tenant_id, name) VALUES ($1, $2, 'Front desk')")
        .bind(agent_id)
        .bind(tenant_id)
        .execute(&mut *tx)
        .await
        .expect("agent");
    sqlx::query(
        "INSERT INTO agent_versions (id, tenant_id, agent_id, version, config) VALUES ($1, $2, $3, 3, '{}')",
    )
    .bind(version_id)
    .bind(tenant_id)
    .bind(agent_id)
    .execute(&mut *tx)
    .await
    .expect("version");
    sqlx::query(
        "INSERT INTO call_sessions (id, tenant_id, call_sid, agent_id, agent_version_id, from_number, to_number, status)
         VALUES ($1, $2, $3, $4, $5, '+15550001111', '+15550002222', 'in-progress')",
    )
    .bind(call_id)
    .bind(tenant_id)
    .bind(format!("CA{}", call_id.simple()))
    .bind(agent_id)
    .bind(version_id)
    .execute(&mut *tx)
    .await
    .expect("call");
    tx.commit().await.expect("commit");
    Seed {
        tenant_id,
        agent_id,
        version_id,
        call_id,
    }
}

/// Inserts an integration with its secret sealed as the api seals it.
pub async fn insert_integration(
    app: &TestApp,
    tenant_id: Uuid,
    base_url: &str,
    auth_type: &str,
    header_name: Option<&str>,
    secret: Option<&str>,
) -> Uuid {
    let id = Uuid::now_v7();
    let key = app.config.encryption.key(&app.config.common).expect("key");
    let sealed = secret.map(|s| {
        SecretBox::new(&key)
            .seal(s.as_bytes(), &integration_secret_aad(tenant_id, id))
            .expect("seal")
    });
    sqlx::query(
        "INSERT INTO integrations (id, tenant_id, base_url, auth_type, header_name, secret_ciphertext, secret_nonce, secret_key_id, secret_aad_version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 2)",
    )
    .bind(id)
    .bind(tenant_id)
    .bind(base_url)
    .bind(auth_type)
    .bind(header_name)
    .bind(sealed.as_ref().map(|s| s.ciphertext.clone()))
    .bind(sealed.as_ref().map(|s| s.nonce.clone()))
    .bind(sealed.as_ref().map(|s| s.key_id.clone()))
    .execute(&app.pool)
    .await
    .expect("integration");
    id
}

/// The schema most tests use.
pub fn order_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "minLength": 3},
            "quantity": {"type": "integer", "minimum": 1}
        },
        "required": ["order_id"],
        "additionalProperties": false
    })
}

pub struct ToolSpec<'a> {
    pub name: &'a str,
    pub webhook_path: &'a str,
    pub timeout_ms: i32,
    pub max_retries: i32,
    pub headers_template: Value,
    pub method: &'a str,
}

impl<'a> ToolSpec<'a> {
    pub fn new(name: &'a str, webhook_path: &'a str) -> Self {
        Self {
            name,
            webhook_path,
            timeout_ms: 2000,
            max_retries: 2,
            headers_template: json!({}),
            method: "POST",
        }
    }
}

/// The api's key (every test app uses the same).
pub fn test_secrets() -> SecretBox {
    let config = test_config();
    SecretBox::new(&config.encryption.key(&config.common).expect("key"))
}

/// A tool, with an endpoint on `integration_id` when given (its header
/// values sealed as the api seals them).
pub async fn insert_tool(
    pool: &PgPool,
    tenant_id: Uuid,
    integration_id: Option<Uuid>,
    spec: ToolSpec<'_>,
) -> Uuid {
    let tool_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO tools (id, tenant_id, name, description, input_schema) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tool_id)
    .bind(tenant_id)
    .bind(spec.name)
    .bind(format!("the {} tool", spec.name))
    .bind(order_schema())
    .execute(pool)
    .await
    .expect("tool");
    if let Some(integration_id) = integration_id {
        let sealed = crate::management::tools::seal_headers(
            &test_secrets(),
            tenant_id,
            tool_id,
            integration_id,
            &spec.headers_template,
        )
        .expect("seal");
        sqlx::query(
            "INSERT INTO tool_endpoints (id, tenant_id, tool_id, integration_id, webhook_path, method,
                                         header_names, headers_ciphertext, headers_nonce, headers_key_id,
                                         timeout_ms, max_retries)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(Uuid::now_v7())
        .bind(tenant_id)
        .bind(tool_id)
        .bind(integration_id)
        .bind(spec.webhook_path)
        .bind(spec.method)
        .bind(crate::management::tools::header_names(&spec.headers_template))
        .bind(sealed.as_ref().map(|s| s.ciphertext.clone()))
        .bind(sealed.as_ref().map(|s| s.nonce.clone()))
        .bind(sealed.as_ref().map(|s| s.key_id.clone()))
        .bind(spec.timeout_ms)
        .bind(spec.max_retries)
        .execute(pool)
        .await
        .expect("endpoint");
    }
    tool_id
}

pub async fn allow(pool: &PgPool, tenant_id: Uuid, version_id: Uuid, tool_id: Uuid) {
    sqlx::query(
        "INSERT INTO agent_version_tools (tenant_id, agent_version_id, tool_id) VALUES ($1, $2, $3)",
    )
    .bind(tenant_id)
    .bind(version_id)
    .bind(tool_id)
    .execute(pool)
    .await
    .expect("allow");
}

/// `(type, idempotency_key, trace_id)` of a call's timeline, in order.
pub async fn events(pool: &PgPool, call_id: Uuid) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT type, idempotency_key, trace_id FROM call_events WHERE call_id = $1 ORDER BY occurred_at, id",
    )
    .bind(call_id)
    .fetch_all(pool)
    .await
    .expect("events")
}
