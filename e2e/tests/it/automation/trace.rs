//! W3C trace context through the real automation-worker: the api continues
//! the caller's `traceparent` and the worker's log line for the execution
//! carries it. (What the api sends is tested in the api's own tests, with
//! a stand-in subscriber.)

use std::time::Duration;

use api::testing::fixtures::{ToolSpec, insert_integration, insert_tool, seed};
use api::testing::spawn_app;
use serde_json::json;
use shared::auth::Role;
use shared::trace::TRACEPARENT;
use sqlx::PgPool;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The real worker continues the trace: its log line for the execution
/// carries the W3C trace id in its span (`span.trace_id`), beside the
/// execution's own `trace_id`.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_worker_logs_the_execution_in_the_callers_trace(pool: PgPool) {
    let db_url = shared::testing::database_url(&pool);
    let app = spawn_app(pool).await;
    let n8n = api::testing::n8n::FakeN8n::start().await;
    let mut worker = crate::automation::faults::WorkerProcess::new(&app, db_url, "info");
    worker.start("aw-traced").await;
    let s = seed(&app.pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let tool_id = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("lookup_order", "ok"),
    )
    .await;
    let resp = app
        .client
        .post(app.url(&format!("/internal/automation/tools/{tool_id}/execute")))
        .bearer_auth(app.token(s.tenant_id, Role::InternalOperator))
        .header(TRACEPARENT, PARENT)
        .json(&json!({"call_id": s.call_id, "input_json": {"order_id": "A-123"}, "trace_id": "call-trace-9"}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let out: serde_json::Value = resp.json().await.expect("json");
    let execution_id = out["execution_id"].as_str().expect("id").to_owned();

    // The line is written before the reply; poll the file briefly anyway.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&worker.log_path).unwrap_or_default();
        if let Some(line) = text.lines().find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v["message"] == "tool execution finished")
        }) {
            break line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no 'tool execution finished' line in {}",
            worker.log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["execution_id"], execution_id.as_str(), "{line}");
    assert_eq!(line["trace_id"], "call-trace-9", "{line}");
    assert_eq!(
        line["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{line}"
    );
    assert_eq!(line["span"]["worker_id"], "aw-traced", "{line}");
    worker.kill9();
}
