//! Scale-out of automation-worker: two instances on one NATS prefix share
//! the `automation.tool.execute` queue group; every execution runs once,
//! on one of them, and both do some of the work.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use shared::auth::Role;
use sqlx::PgPool;
use uuid::Uuid;

use crate::automation::worker::start_worker_with;
use api::testing::fixtures::{ToolSpec, insert_integration, insert_tool, seed};
use api::testing::n8n::FakeN8n;
use api::testing::{spawn_app_with, status_json};

const EXECUTIONS: usize = 40;

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn two_workers_share_the_queue_and_nothing_runs_twice(pool: PgPool) {
    let app = spawn_app_with(pool, |c| {
        c.automation_max_executions_per_minute = 10_000;
        c.automation_execute_timeout = Duration::from_secs(10);
    })
    .await;
    let n8n = FakeN8n::start().await;
    let one = start_worker_with(&app, |c| c.automation.worker_id = Some("aw-one".into())).await;
    let two = start_worker_with(&app, |c| c.automation.worker_id = Some("aw-two".into())).await;
    let s = seed(&app.pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let tool_id = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("lookup_order", "ok"),
    )
    .await;
    let token = app.token(s.tenant_id, Role::InternalOperator);

    let answers = join_all((0..EXECUTIONS).map(|i| {
        let app = &app;
        let token = &token;
        async move {
            status_json(
                app.post(
                    &format!("/internal/automation/tools/{tool_id}/execute"),
                    Some(token),
                    &json!({"call_id": s.call_id, "input_json": {"order_id": format!("A-{i:03}")}}),
                )
                .await,
            )
            .await
        }
    }))
    .await;
    let mut ids = Vec::new();
    for (status, out) in &answers {
        assert_eq!(*status, 200, "{out}");
        assert_eq!(out["status"], "succeeded", "{out}");
        ids.push(
            out["execution_id"]
                .as_str()
                .expect("execution_id")
                .parse::<Uuid>()
                .expect("uuid"),
        );
    }

    // n8n saw each execution exactly once.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in n8n.received() {
        if let Some(id) = r.body["execution_id"].as_str() {
            *seen.entry(id.to_owned()).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), EXECUTIONS, "distinct executions n8n saw");
    assert!(
        seen.values().all(|&n| n == 1),
        "an execution reached n8n twice: {seen:?}"
    );
    for id in &ids {
        assert_eq!(seen.get(&id.to_string()), Some(&1), "{id}");
    }

    // One row each, succeeded; one outcome event each, naming its worker.
    let succeeded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tool_executions WHERE tenant_id = $1 AND status = 'succeeded'",
    )
    .bind(s.tenant_id)
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(succeeded, EXECUTIONS as i64);
    let per_worker: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT payload->>'worker_id', count(*) FROM call_events
         WHERE call_id = $1 AND type IN ('tool.succeeded', 'tool.failed')
         GROUP BY 1 ORDER BY 1",
    )
    .bind(s.call_id)
    .fetch_all(&app.pool)
    .await
    .expect("per worker");
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT payload->>'execution_id' FROM call_events
         WHERE call_id = $1 AND type IN ('tool.succeeded', 'tool.failed')
         GROUP BY 1 HAVING count(*) > 1) d",
    )
    .bind(s.call_id)
    .fetch_one(&app.pool)
    .await
    .expect("duplicates");
    println!(
        "scale-out: executions {EXECUTIONS}, succeeded {succeeded}, n8n calls {}, duplicate outcomes {duplicates}, per worker {per_worker:?}",
        seen.values().sum::<usize>()
    );
    assert_eq!(duplicates, 0);
    let count = |name: &str| {
        per_worker
            .iter()
            .find(|(w, _)| w.as_deref() == Some(name))
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(
        count("aw-one") + count("aw-two"),
        EXECUTIONS as i64,
        "{per_worker:?}"
    );
    assert!(count("aw-one") > 0, "aw-one did nothing: {per_worker:?}");
    assert!(count("aw-two") > 0, "aw-two did nothing: {per_worker:?}");

    // The reply names the instance that answered.
    let integration_req = shared::automation::ToolExecuteRequest {
        execution_id: ids[0],
        tenant_id: s.tenant_id,
        // Without the context, as an older api sent it: refused, and a
        // finished execution keeps its outcome.
        context: None,
    };
    let payload = serde_json::to_vec(&integration_req).expect("json");
    let key = app.config.encryption.key(&app.config.common).expect("key");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        shared::automation::REQUEST_SIGNATURE_HEADER,
        shared::automation::RequestSigner::new(&key)
            .sign(shared::automation::RequestKind::ToolExecute, &payload)
            .as_str(),
    );
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        app.nats.request_with_headers(
            app.subjects.automation_tool_execute(),
            headers,
            payload.into(),
        ),
    )
    .await
    .expect("in time")
    .expect("a worker answers");
    let worker = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(automation_worker::startup::WORKER_ID_HEADER))
        .map(|v| v.as_str().to_owned());
    assert!(
        matches!(worker.as_deref(), Some("aw-one" | "aw-two")),
        "{worker:?}"
    );
    // A repeated request for a finished execution answers its record and
    // does not call n8n again.
    assert_eq!(n8n.received().len(), EXECUTIONS);

    one.shutdown().await;
    two.shutdown().await;
}
