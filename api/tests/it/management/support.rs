//! Seeding and request helpers for the management tests.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use shared::auth::Role;
use sqlx::PgPool;
use uuid::Uuid;

use api::testing::{TestApp, status_json};

/// Every table of the data model, for before/after snapshots.
pub const TABLES: &[&str] = &[
    "tenants",
    "users",
    "memberships",
    "agents",
    "agent_versions",
    "phone_numbers",
    "integrations",
    "tools",
    "tool_endpoints",
    "agent_version_tools",
    "call_sessions",
    "call_events",
    "transcript_segments",
    "recordings",
    "tool_executions",
    "runtime_dispatches",
    "legal_holds",
    "audit_log",
    "webhook_endpoints",
    "webhook_messages",
    "webhook_deliveries",
    "webhook_attempts",
];

/// A digest of every row of every table: equal snapshots mean nothing
/// changed.
pub async fn snapshot(pool: &PgPool) -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    for table in TABLES {
        let sql = format!(
            "SELECT count(*), COALESCE(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {table} t"
        );
        let (count, digest): (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .expect("snapshot");
        out.push(((*table).to_owned(), count, digest));
    }
    out
}

/// Sends `method path` with an optional bearer token and JSON body.
pub async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    status_json(req.send().await.expect("request")).await
}

pub async fn get(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    send(app, Method::GET, path, Some(token), None).await
}

pub async fn post(app: &TestApp, path: &str, token: &str, body: &Value) -> (u16, Value) {
    send(app, Method::POST, path, Some(token), Some(body)).await
}

pub async fn patch(app: &TestApp, path: &str, token: &str, body: &Value) -> (u16, Value) {
    send(app, Method::PATCH, path, Some(token), Some(body)).await
}

pub async fn delete(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    send(app, Method::DELETE, path, Some(token), None).await
}

/// The `id` field of a JSON object, as a uuid.
pub fn id_of(v: &Value) -> Uuid {
    v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {v}"))
}

/// Tokens of each role in one tenant.
pub struct Tokens {
    pub admin: String,
    pub operator: String,
    pub viewer: String,
}

pub fn tokens(app: &TestApp, tenant: Uuid) -> Tokens {
    Tokens {
        admin: app.token(tenant, Role::InternalAdmin),
        operator: app.token(tenant, Role::InternalOperator),
        viewer: app.token(tenant, Role::ClientViewer),
    }
}

/// Inserts a user (the hash is never checked here) and returns its id.
pub async fn insert_user(pool: &PgPool, email: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, 'x')")
        .bind(id)
        .bind(email)
        .execute(pool)
        .await
        .expect("insert user");
    id
}

/// A token whose sub is `user_id`.
pub fn user_token(app: &TestApp, user_id: Uuid, tenant: Uuid, role: Role) -> String {
    app.jwt
        .issue(
            &user_id.to_string(),
            tenant,
            role,
            role.is_internal(),
            Duration::from_secs(600),
        )
        .expect("token")
}

/// Inserts an n8n integration with an encrypted-looking secret.
pub async fn insert_integration(pool: &PgPool, tenant: Uuid) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO integrations (id, tenant_id, base_url, auth_type, header_name,
                                   secret_ciphertext, secret_nonce, secret_key_id)
         VALUES ($1, $2, 'https://n8n.example.com', 'header', 'x-api-key',
                 '\\xdeadbeef', '\\x000102030405060708090a0b', 'k1')",
    )
    .bind(id)
    .bind(tenant)
    .execute(pool)
    .await
    .expect("insert integration");
    id
}

/// Inserts a call with one transcript segment, one recording and one event.
pub async fn insert_call(pool: &PgPool, tenant: Uuid) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO call_sessions (id, tenant_id, call_sid) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(tenant)
        .bind(format!("CA{}", id.simple()))
        .execute(pool)
        .await
        .expect("insert call");
    sqlx::query(
        "INSERT INTO transcript_segments (id, tenant_id, call_id, speaker, text, start_ms, end_ms, occurred_at)
         VALUES ($1, $2, $3, 'caller', 'hello', 0, 500, now())",
    )
    .bind(Uuid::now_v7())
    .bind(tenant)
    .bind(id)
    .execute(pool)
    .await
    .expect("insert segment");
    sqlx::query(
        "INSERT INTO recordings (id, tenant_id, call_id, recording_sid) VALUES ($1, $2, $3, $4)",
    )
    .bind(Uuid::now_v7())
    .bind(tenant)
    .bind(id)
    .bind(format!("RE{}", id.simple()))
    .execute(pool)
    .await
    .expect("insert recording");
    sqlx::query(
        "INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key)
         VALUES ($1, $2, $3, 'call.inbound', $4)",
    )
    .bind(Uuid::now_v7())
    .bind(tenant)
    .bind(id)
    .bind(format!("CA{}", id.simple()))
    .execute(pool)
    .await
    .expect("insert event");
    id
}

/// A tenant with one of everything, made through the api where there is a
/// route for it.
pub struct Seeded {
    pub tenant: Uuid,
    pub tokens: Tokens,
    pub agent: Uuid,
    pub draft_version: Uuid,
    pub published_version: Uuid,
    pub phone_number: Uuid,
    pub tool: Uuid,
    pub integration: Uuid,
    pub call: Uuid,
    pub hold: Uuid,
    pub webhook_endpoint: Uuid,
    pub webhook_delivery: Uuid,
}

pub async fn seed(app: &TestApp, name: &str, e164: &str) -> Seeded {
    let tenant = app.create_tenant(name).await;
    let tokens = tokens(app, tenant);
    let t = &tokens.admin;
    let (s, agent) = post(
        app,
        "/internal/agents",
        t,
        &serde_json::json!({"tenant_id": tenant, "name": "Front desk"}),
    )
    .await;
    assert_eq!(s, 201, "{agent}");
    let agent = id_of(&agent);
    let versions = format!("/internal/agents/{agent}/versions");
    let cfg = serde_json::json!({"config": {"prompt": "hi"}});
    let (s, v1) = post(app, &versions, t, &cfg).await;
    assert_eq!(s, 201, "{v1}");
    let (s, v2) = post(app, &versions, t, &cfg).await;
    assert_eq!(s, 201, "{v2}");
    let published_version = id_of(&v1);
    let (s, body) = post(
        app,
        &format!("{versions}/{published_version}/publish"),
        t,
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, number) = post(
        app,
        "/internal/phone-numbers",
        t,
        &serde_json::json!({"tenant_id": tenant, "e164": e164, "twilio_sid": "PN1", "agent_id": agent}),
    )
    .await;
    assert_eq!(s, 201, "{number}");
    let (s, tool) = post(
        app,
        "/internal/tools",
        t,
        &serde_json::json!({"tenant_id": tenant, "name": "lookup_order", "description": "d",
                            "input_schema": {"type": "object"}}),
    )
    .await;
    assert_eq!(s, 201, "{tool}");
    let integration = insert_integration(&app.pool, tenant).await;
    let call = insert_call(&app.pool, tenant).await;
    let (s, hold) = post(
        app,
        "/internal/legal-holds",
        t,
        &serde_json::json!({"tenant_id": tenant, "call_id": call, "reason": "litigation"}),
    )
    .await;
    assert_eq!(s, 201, "{hold}");
    let (s, endpoint) = post(
        app,
        "/internal/webhook-endpoints",
        t,
        &serde_json::json!({"tenant_id": tenant, "url": "https://hooks.example.com/calls",
                            "event_types": ["call.answered"]}),
    )
    .await;
    assert_eq!(s, 201, "{endpoint}");
    // An event as the triggers record it, so the endpoint has a delivery.
    let message: Uuid =
        sqlx::query_scalar("SELECT record_webhook_event($1, 'call.answered', '{}')")
            .bind(tenant)
            .fetch_one(&app.pool)
            .await
            .expect("event");
    let webhook_delivery: Uuid =
        sqlx::query_scalar("SELECT id FROM webhook_deliveries WHERE message_id = $1")
            .bind(message)
            .fetch_one(&app.pool)
            .await
            .expect("delivery");
    Seeded {
        webhook_endpoint: id_of(&endpoint),
        webhook_delivery,
        tenant,
        agent,
        draft_version: id_of(&v2),
        published_version,
        phone_number: id_of(&number),
        tool: id_of(&tool),
        integration,
        call,
        hold: id_of(&hold),
        tokens,
    }
}
