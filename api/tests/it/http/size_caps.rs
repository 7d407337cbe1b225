//! Size caps: an agent config, a tool schema or a tool input over its cap
//! gets 413 naming the setting, and nothing is stored; a tool input that
//! would not fit in one NATS message gets 413 too, never a worker timeout.

use serde_json::{Value, json};
use shared::auth::Role;
use shared::testing::nats_server::SecuredNats;
use sqlx::PgPool;

use api::testing::fixtures::{ToolSpec, insert_integration, insert_tool, seed};
use api::testing::{TestApp, spawn_app_with, status_json};

const CAP: usize = 2048;

fn padded(bytes: usize) -> String {
    "x".repeat(bytes)
}

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

fn assert_too_large(status: u16, body: &Value, setting: &str) {
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(setting), "{message}");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn agent_configs_and_tool_schemas_over_their_caps_are_refused(pool: PgPool) {
    let app = spawn_app_with(pool, |c| {
        c.max_agent_config_bytes = CAP;
        c.max_tool_schema_bytes = CAP;
    })
    .await;
    let s = seed(&app.pool).await;
    let token = app.token(s.tenant_id, Role::InternalAdmin);
    let versions = format!("/internal/agents/{}/versions", s.agent_id);
    let before = count(&app, "SELECT count(*) FROM agent_versions").await;

    let big = json!({"config": {"prompt": padded(CAP)}});
    let (status, body) = status_json(app.post(&versions, Some(&token), &big).await).await;
    assert_too_large(status, &body, "MAX_AGENT_CONFIG_BYTES");
    let small = json!({"config": {"prompt": padded(CAP / 2)}});
    let (status, body) = status_json(app.post(&versions, Some(&token), &small).await).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        count(&app, "SELECT count(*) FROM agent_versions").await,
        before + 1
    );
    // Growing a draft past the cap is refused the same way.
    let draft = format!("{versions}/{}", body["id"].as_str().expect("id"));
    let resp = app
        .client
        .patch(app.url(&draft))
        .bearer_auth(&token)
        .json(&big)
        .send()
        .await
        .expect("send");
    let (status, body) = status_json(resp).await;
    assert_too_large(status, &body, "MAX_AGENT_CONFIG_BYTES");

    let tool = |schema: Value| json!({"tenant_id": s.tenant_id, "name": "lookup", "description": "", "input_schema": schema});
    let big_schema = json!({"type": "object", "description": padded(CAP)});
    let (status, body) = status_json(
        app.post("/internal/tools", Some(&token), &tool(big_schema))
            .await,
    )
    .await;
    assert_too_large(status, &body, "MAX_TOOL_SCHEMA_BYTES");
    assert_eq!(count(&app, "SELECT count(*) FROM tools").await, 0);
    let (status, body) = status_json(
        app.post(
            "/internal/tools",
            Some(&token),
            &tool(json!({"type": "object"})),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

async fn execute(app: &TestApp, token: &str, tool: uuid::Uuid, body: &Value) -> (u16, Value) {
    status_json(
        app.post(
            &format!("/internal/automation/tools/{tool}/execute"),
            Some(token),
            body,
        )
        .await,
    )
    .await
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_tool_input_over_its_cap_is_refused_before_it_is_recorded(pool: PgPool) {
    let app = spawn_app_with(pool, |c| c.max_tool_input_bytes = CAP).await;
    let s = seed(&app.pool).await;
    let integration =
        insert_integration(&app, s.tenant_id, "http://n8n.invalid", "none", None, None).await;
    let tool = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("t", "p"),
    )
    .await;
    let token = app.token(s.tenant_id, Role::InternalOperator);
    let input = json!({"call_id": s.call_id, "input_json": {"order_id": padded(CAP)}});
    let (status, body) = execute(&app, &token, tool, &input).await;
    assert_too_large(status, &body, "MAX_TOOL_INPUT_BYTES");
    assert_eq!(count(&app, "SELECT count(*) FROM tool_executions").await, 0);
    assert_eq!(count(&app, "SELECT count(*) FROM call_events").await, 0);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_tool_request_too_large_for_nats_is_refused_not_timed_out(pool: PgPool) {
    // A server carrying at most 32 KiB per message, and an input cap above it.
    let bus = SecuredNats::start_with("max_payload: 32768").await;
    let api_nats = bus.args("api");
    let app = spawn_app_with(pool, move |c| {
        c.nats = api_nats;
        c.max_tool_input_bytes = 64 * 1024;
    })
    .await;
    let s = seed(&app.pool).await;
    let integration =
        insert_integration(&app, s.tenant_id, "http://n8n.invalid", "none", None, None).await;
    let token = app.token(s.tenant_id, Role::InternalOperator);

    // Too large with any context: refused before anything is recorded.
    let plain = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("plain", "p"),
    )
    .await;
    let input = json!({"call_id": s.call_id, "input_json": {"order_id": padded(20 * 1024)}});
    let (status, body) = execute(&app, &token, plain, &input).await;
    assert_eq!(status, 413, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_payload is 32768"), "{message}");
    assert_eq!(count(&app, "SELECT count(*) FROM tool_executions").await, 0);

    // Small enough alone, too large with this tool's headers: never sent,
    // recorded as failed with its reason, answered 413 at once.
    let mut spec = ToolSpec::new("heavy", "p");
    spec.headers_template = (0..48)
        .map(|i| (format!("x-h{i}"), Value::String(padded(500))))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let heavy = insert_tool(&app.pool, s.tenant_id, Some(integration), spec).await;
    let input = json!({"call_id": s.call_id, "input_json": {"order_id": padded(8 * 1024)}});
    let started = std::time::Instant::now();
    let (status, body) = execute(&app, &token, heavy, &input).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        started.elapsed() < app.config.automation_execute_timeout,
        "answered only after the execute timeout"
    );
    let (state, code): (String, Option<String>) =
        sqlx::query_as("SELECT status, error_code FROM tool_executions")
            .fetch_one(&app.pool)
            .await
            .expect("one execution");
    assert_eq!(state, "failed");
    assert_eq!(code.as_deref(), Some("request_too_large"));
}
