//! Tool executions with least privilege on the bus (`deploy/nats/nats.conf`
//! on a private nats-server): the api sends as `api`, the automation-worker
//! answers as `automation-worker`, which may only answer the requests it
//! receives. The runtime's refusals are in the dispatch-worker's bus test.

use serde_json::json;
use shared::auth::Role;
use shared::testing::nats_server::SecuredNats;
use sqlx::PgPool;

use crate::automation_support::{
    FakeN8n, ToolSpec, insert_integration, insert_tool, seed, start_worker_with,
};
use crate::helpers::{spawn_app_with, status_json};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn tool_executions_cross_the_bus_as_their_own_nats_users(pool: PgPool) {
    let bus = SecuredNats::start().await;
    let api_nats = bus.args("api");
    let app = spawn_app_with(pool, move |config| config.nats = api_nats).await;
    let n8n = FakeN8n::start().await;
    let worker_nats = bus.args("automation-worker");
    let worker = start_worker_with(&app, move |config| config.nats = worker_nats).await;
    let s = seed(&app.pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let tool = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("lookup_order", "ok"),
    )
    .await;
    let token = app.token(s.tenant_id, Role::InternalOperator);
    let (status, body) = status_json(
        app.post(
            &format!("/internal/automation/tools/{tool}/execute"),
            Some(&token),
            &json!({"call_id": s.call_id, "input_json": {"order_id": "A-1", "quantity": 1}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["output"]["answer"], 42);
    worker.shutdown().await;
}
