//! The plan guard for tool executions: on a freshly migrated, empty
//! database, with the generic plans a pooled connection keeps, every read
//! of a per-call table that the api (`execute_tool_checked` and the
//! statements inside it), the automation-worker (running mark, outcome)
//! and the reaper make pins one row through a unique key, apart from the
//! per-call rate window. See `shared::testing::plans` and
//! docs/decisions/0037-plan-stable-keys.md.

use serde_json::json;
use shared::auth::Role;
use shared::testing::plans;
use sqlx::PgPool;

use crate::automation::worker::start_worker;
use api::testing::fixtures::{ToolSpec, insert_integration, insert_tool, seed};
use api::testing::n8n::FakeN8n;
use api::testing::{spawn_app, status_json};

/// Read on purpose through non-unique indexes, with ranges bounded by one
/// call or by the open executions, not by the tables' size: the per-call
/// rate window and the reaper's open executions.
const BOUNDED: &[&str] = &[
    "tool_executions_call_idx",
    "tool_executions_open_idx",
    // The webhook relay and backlog gauge: bounded by the deliveries due.
    "webhook_deliveries_due_idx",
];

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn every_per_call_read_of_a_tool_execution_pins_one_row(pool: PgPool) {
    let _alone = plans::exclusive().await;
    // The flow's connections plan generically and log their plans.
    let app_pool = plans::capture_plans(&pool).await;
    let app = spawn_app(app_pool).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let s = seed(&pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let ok = insert_tool(
        &pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("lookup_order", "ok"),
    )
    .await;
    let failing = insert_tool(
        &pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("always_fails", "always500"),
    )
    .await;
    let token = app.token(s.tenant_id, Role::InternalOperator);
    let input = json!({"call_id": s.call_id, "input_json": {"order_id": "A-1", "quantity": 1}});
    // More executions than the five custom plans Postgres tries before it
    // keeps a generic one (forced here anyway): successes and failures.
    for (tool, expected) in [
        (ok, 200),
        (ok, 200),
        (ok, 200),
        (failing, 502),
        (ok, 200),
        (failing, 502),
        (ok, 200),
    ] {
        let (status, body) = status_json(
            app.post(
                &format!("/internal/automation/tools/{tool}/execute"),
                Some(&token),
                &input,
            )
            .await,
        )
        .await;
        assert_eq!(status, expected, "{body}");
    }
    worker.shutdown().await;

    let captured = plans::captured();
    // The capture saw the flow: the tool's execution inserted (its
    // foreign-key check) and the outcome recorded.
    assert!(
        !captured
            .reads_of("call_sessions", "FOR KEY SHARE")
            .is_empty(),
        "no foreign-key check captured: {} reads",
        captured.reads.len()
    );
    assert!(
        !captured
            .reads_of("tool_executions", "finished_at")
            .is_empty()
    );
    captured
        .assert_per_call_reads_pin_one_row(&pool, BOUNDED)
        .await;
}
