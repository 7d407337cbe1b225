//! Tool calls end to end: api + NATS + automation-worker (in-process, or
//! the real binary in `faults`) against a fake n8n on 127.0.0.1. Rows the
//! management API would create are inserted with SQL
//! (`api::testing::fixtures`).

pub(crate) mod bench;
mod bus;
mod faults;
mod plans;
mod scale;
mod secrets;
mod trace;
pub mod worker;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::auth::Role;
use shared::tool_executions::{EventKind, ToolEvent, event_key};
use sqlx::PgPool;
use uuid::Uuid;

use crate::automation::worker::{start_worker, start_worker_with};
use api::testing::fixtures::{
    Seed, ToolSpec, allow, events, insert_integration, insert_tool, seed,
};
use api::testing::n8n::{BASIC_SECRET, BEARER_SECRET, FakeN8n, HEADER_SECRET};
use api::testing::{TestApp, spawn_app, spawn_app_with, status_json};

fn ops(app: &TestApp, seed: &Seed) -> String {
    app.token(seed.tenant_id, Role::InternalOperator)
}

async fn execute(app: &TestApp, token: &str, tool_id: Uuid, body: &Value) -> (u16, Value) {
    status_json(
        app.post(
            &format!("/internal/automation/tools/{tool_id}/execute"),
            Some(token),
            body,
        )
        .await,
    )
    .await
}

async fn execute_by_name(app: &TestApp, token: &str, name: &str, body: &Value) -> (u16, Value) {
    status_json(
        app.post(
            &format!("/internal/automation/tools/by-name/{name}/execute"),
            Some(token),
            body,
        )
        .await,
    )
    .await
}

fn good_input(call_id: Uuid) -> Value {
    json!({"call_id": call_id, "input_json": {"order_id": "A-123", "quantity": 2}})
}

async fn row(pool: &PgPool, id: &Value) -> (String, Option<String>, i32, Option<i32>) {
    let id: Uuid = id.as_str().expect("execution_id").parse().expect("uuid");
    sqlx::query_as(
        "SELECT status, error_code, attempts, http_status FROM tool_executions WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("execution row")
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn execute_calls_n8n_with_context_records_and_answers(pool: PgPool) {
    let app = spawn_app(pool).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let s = seed(&app.pool).await;
    let integration = insert_integration(
        &app,
        s.tenant_id,
        &format!("{}/bearer", n8n.base),
        "bearer",
        None,
        Some(BEARER_SECRET),
    )
    .await;
    let mut spec = ToolSpec::new("lookup_order", "ok");
    spec.headers_template = json!({
        "x-call-id": "{{call_id}}", "x-call-sid": "{{call_sid}}", "x-tenant": "{{tenant_id}}",
        "x-agent": "{{agent_id}}", "x-trace": "{{trace_id}}", "x-exec": "{{execution_id}}"
    });
    let tool_id = insert_tool(&app.pool, s.tenant_id, Some(integration), spec).await;
    let token = ops(&app, &s);

    let mut body = good_input(s.call_id);
    body["trace_id"] = json!("trace-abc-1");
    let (status, out) = execute(&app, &token, tool_id, &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["status"], "succeeded");
    assert_eq!(out["trace_id"], "trace-abc-1");
    assert_eq!(out["attempts"], 1);
    assert_eq!(out["output"]["answer"], 42);
    assert_eq!(out["output"]["received_input"]["order_id"], "A-123");
    assert!(out["latency_ms"].is_u64(), "{out}");
    let execution_id = out["execution_id"].as_str().expect("id").to_owned();

    // What n8n saw: the call's context, the filled headers, the auth.
    let received = n8n.received();
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/bearer/webhook/ok");
    assert_eq!(r.body["tool"], "lookup_order");
    assert_eq!(r.body["input"], json!({"order_id": "A-123", "quantity": 2}));
    assert_eq!(r.body["execution_id"], execution_id.as_str());
    assert_eq!(r.body["trace_id"], "trace-abc-1");
    assert_eq!(r.body["call"]["id"], s.call_id.to_string());
    assert_eq!(r.body["call"]["sid"], format!("CA{}", s.call_id.simple()));
    assert_eq!(r.body["call"]["from"], "+15550001111");
    assert_eq!(r.body["call"]["to"], "+15550002222");
    assert_eq!(r.body["call"]["tenant_id"], s.tenant_id.to_string());
    assert_eq!(r.body["call"]["agent_id"], s.agent_id.to_string());
    assert_eq!(r.body["call"]["agent_version"], 3);
    assert_eq!(r.headers["x-call-id"], s.call_id.to_string());
    assert_eq!(r.headers["x-call-sid"], format!("CA{}", s.call_id.simple()));
    assert_eq!(r.headers["x-tenant"], s.tenant_id.to_string());
    assert_eq!(r.headers["x-agent"], s.agent_id.to_string());
    assert_eq!(r.headers["x-trace"], "trace-abc-1");
    assert_eq!(r.headers["x-exec"], execution_id);
    assert_eq!(
        r.headers["authorization"],
        format!("Bearer {BEARER_SECRET}")
    );
    assert!(!r.headers["user-agent"].to_lowercase().contains("bot"));

    let (st, code, attempts, http) = row(&app.pool, &out["execution_id"]).await;
    assert_eq!(
        (st.as_str(), code, attempts, http),
        ("succeeded", None, 1, Some(200))
    );
    let timeline = events(&app.pool, s.call_id).await;
    assert_eq!(
        timeline,
        vec![
            (
                "tool.requested".into(),
                format!("tool:{execution_id}:requested"),
                Some("trace-abc-1".into())
            ),
            (
                "tool.succeeded".into(),
                format!("tool:{execution_id}:succeeded"),
                Some("trace-abc-1".into())
            ),
        ]
    );

    // By name too, with a generated trace id.
    let (status, out2) = status_json(
        app.post(
            "/internal/automation/tools/by-name/lookup_order/execute",
            Some(&token),
            &good_input(s.call_id),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{out2}");
    assert_eq!(out2["trace_id"].as_str().map(str::len), Some(32));

    // What happened, afterwards.
    let (status, one) = status_json(
        app.get(
            &format!("/internal/automation/executions/{execution_id}"),
            Some(&token),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["status"], "succeeded");
    assert_eq!(one["tool_name"], "lookup_order");
    assert_eq!(one["http_status"], 200);
    assert_eq!(one["input"]["order_id"], "A-123");
    assert_eq!(one["output"]["answer"], 42);
    let (status, list) = status_json(
        app.get(
            &format!("/internal/calls/{}/tool-executions?limit=1", s.call_id),
            Some(&token),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"][0]["id"], execution_id.as_str());
    let cursor = list["next_cursor"].as_str().expect("a second page");
    let (_, page2) = status_json(
        app.get(
            &format!(
                "/internal/calls/{}/tool-executions?limit=1&cursor={cursor}",
                s.call_id
            ),
            Some(&token),
        )
        .await,
    )
    .await;
    assert_eq!(page2["items"][0]["id"], out2["execution_id"]);
    assert!(page2["next_cursor"].is_null());

    // Another tenant sees none of it.
    let other = app.token(Uuid::now_v7(), Role::InternalAdmin);
    let (status, _) = status_json(
        app.get(
            &format!("/internal/automation/executions/{execution_id}"),
            Some(&other),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = status_json(
        app.get(
            &format!("/internal/calls/{}/tool-executions", s.call_id),
            Some(&other),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn retries_count_only_retryable_failures(pool: PgPool) {
    let app = spawn_app(pool).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let s = seed(&app.pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let token = ops(&app, &s);
    let tool = |name: &'static str, path: &'static str, retries: i32| {
        let mut spec = ToolSpec::new(name, path);
        spec.max_retries = retries;
        insert_tool(&app.pool, s.tenant_id, Some(integration), spec)
    };

    // 500, 500, then success: three attempts, succeeded.
    let flaky = tool("flaky", "flaky", 2).await;
    let (status, out) = execute(&app, &token, flaky, &good_input(s.call_id)).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["attempts"], 3);
    assert_eq!(out["output"]["recovered"], true);
    assert_eq!(n8n.hits("/webhook/flaky"), 3);

    // Always 500: 1 + max_retries attempts, then 502 with the same shape.
    let broken = tool("broken", "always500", 1).await;
    let (status, out) = execute(&app, &token, broken, &good_input(s.call_id)).await;
    assert_eq!(status, 502, "{out}");
    assert_eq!(out["status"], "failed");
    assert_eq!(out["attempts"], 2);
    assert_eq!(out["http_status"], 500);
    assert_eq!(out["error"]["code"], "http_status");
    assert!(out["execution_id"].is_string() && out["trace_id"].is_string());
    assert_eq!(n8n.hits("/webhook/always500"), 2);
    let (st, code, attempts, http) = row(&app.pool, &out["execution_id"]).await;
    assert_eq!(
        (st.as_str(), code.as_deref(), attempts, http),
        ("failed", Some("http_status"), 2, Some(500))
    );

    // 429 is retried too.
    let limited = tool("limited", "ratelimited", 1).await;
    let (status, out) = execute(&app, &token, limited, &good_input(s.call_id)).await;
    assert_eq!(status, 502, "{out}");
    assert_eq!(out["attempts"], 2);
    assert_eq!(out["http_status"], 429);

    // Other 4xx are not.
    let bad = tool("bad", "badrequest", 3).await;
    let (status, out) = execute(&app, &token, bad, &good_input(s.call_id)).await;
    assert_eq!(status, 502, "{out}");
    assert_eq!(out["attempts"], 1);
    assert_eq!(n8n.hits("/webhook/badrequest"), 1);

    // n8n's "not registered" 404: a clear error, no retry.
    let inactive = tool("inactive", "not-active-yet", 3).await;
    let (status, out) = execute(&app, &token, inactive, &good_input(s.call_id)).await;
    assert_eq!(status, 502, "{out}");
    assert_eq!(out["error"]["code"], "tool_endpoint_inactive");
    assert_eq!(out["attempts"], 1);
    assert_eq!(out["http_status"], 404);
    let timeline = events(&app.pool, s.call_id).await;
    assert_eq!(
        timeline.last().map(|e| e.0.as_str()),
        Some("tool.failed"),
        "{timeline:?}"
    );

    // A plain-text answer is kept as a string; an oversized one fails.
    let text = tool("text", "text", 0).await;
    let (status, out) = execute(&app, &token, text, &good_input(s.call_id)).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["output"], "plain text answer");
    let big = tool("big", "big", 0).await;
    let (status, out) = execute(&app, &token, big, &good_input(s.call_id)).await;
    assert_eq!(status, 502, "{out}");
    assert_eq!(out["error"]["code"], "output_too_large");
    // An answer Postgres cannot store (U+0000) fails clearly, recorded.
    let nul = tool("nul", "nul", 0).await;
    let (status, out) = execute(&app, &token, nul, &good_input(s.call_id)).await;
    assert_eq!(status, 502, "{out}");
    assert_eq!(out["error"]["code"], "invalid_output");
    let (recorded, code, _, _) = row(&app.pool, &out["execution_id"]).await;
    assert_eq!(
        (recorded.as_str(), code.as_deref()),
        ("failed", Some("invalid_output"))
    );
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn timeouts_and_the_whole_call_deadline(pool: PgPool) {
    let app = spawn_app_with(pool, |c| {
        c.automation_execute_timeout = Duration::from_millis(1200);
    })
    .await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let s = seed(&app.pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let token = ops(&app, &s);

    // Per-attempt timeout (200 ms) against a 1.5 s answer, one retry.
    let mut spec = ToolSpec::new("slow_short", "slow");
    spec.timeout_ms = 200;
    spec.max_retries = 1;
    let short = insert_tool(&app.pool, s.tenant_id, Some(integration), spec).await;
    let started = Instant::now();
    let (status, out) = execute(&app, &token, short, &good_input(s.call_id)).await;
    assert_eq!(status, 502, "{out}");
    assert_eq!(out["error"]["code"], "timeout");
    assert_eq!(out["attempts"], 2);
    assert!(started.elapsed() < Duration::from_millis(1500));

    // Long per-attempt timeouts and many retries: the 1.2 s deadline wins.
    let mut spec = ToolSpec::new("slow_long", "slow");
    spec.timeout_ms = 10_000;
    spec.max_retries = 5;
    let long = insert_tool(&app.pool, s.tenant_id, Some(integration), spec).await;
    let started = Instant::now();
    let (status, out) = execute(&app, &token, long, &good_input(s.call_id)).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 502, "{out}");
    assert_eq!(out["error"]["code"], "deadline_exceeded");
    assert_eq!(out["attempts"], 1);
    // The worker stops 250 ms before the 1.2 s deadline; the api would
    // answer 504 past 2.2 s.
    assert!(elapsed < Duration::from_millis(2100), "{elapsed:?}");
    let (st, code, _, _) = row(&app.pool, &out["execution_id"]).await;
    assert_eq!(
        (st.as_str(), code.as_deref()),
        ("failed", Some("deadline_exceeded"))
    );
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_slow_tool_shows_running_and_every_execution_records_its_start(pool: PgPool) {
    let app = spawn_app(pool).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let s = seed(&app.pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let token = ops(&app, &s);
    let slow = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("slow_answer", "slow"),
    )
    .await;
    let fast = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("fast_answer", "ok"),
    )
    .await;
    // While n8n works on it (1.5 s), the execution reads `running`.
    let saw_running = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let running: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM tool_executions
                 WHERE tool_id = $1 AND status = 'running' AND started_at IS NOT NULL",
            )
            .bind(slow)
            .fetch_one(&app.pool)
            .await
            .expect("count");
            if running == 1 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    let input = good_input(s.call_id);
    let ((status, out), saw_running) =
        tokio::join!(execute(&app, &token, slow, &input), saw_running);
    assert_eq!(status, 200, "{out}");
    assert!(saw_running, "the slow execution never showed running");
    let (status, out) = execute(&app, &token, fast, &good_input(s.call_id)).await;
    assert_eq!(status, 200, "{out}");
    let unstamped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tool_executions
         WHERE status <> 'succeeded' OR started_at IS NULL OR started_at > finished_at",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(unstamped, 0);
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn auth_modes_reach_n8n_and_wrong_secrets_fail(pool: PgPool) {
    let app = spawn_app(pool).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let s = seed(&app.pool).await;
    let token = ops(&app, &s);
    let cases = [
        ("hdr", "header", Some("x-n8n-key"), HEADER_SECRET),
        ("basic", "basic", None, BASIC_SECRET),
        ("bearer", "bearer", None, BEARER_SECRET),
    ];
    for (prefix, auth_type, header_name, secret) in cases {
        let base = format!("{}/{prefix}", n8n.base);
        let good = insert_integration(
            &app,
            s.tenant_id,
            &base,
            auth_type,
            header_name,
            Some(secret),
        )
        .await;
        let wrong = insert_integration(
            &app,
            s.tenant_id,
            &base,
            auth_type,
            header_name,
            Some("wrong:secret"),
        )
        .await;
        let ok_tool = insert_tool(
            &app.pool,
            s.tenant_id,
            Some(good),
            ToolSpec::new(&format!("{prefix}_ok"), "ok"),
        )
        .await;
        let bad_tool = insert_tool(
            &app.pool,
            s.tenant_id,
            Some(wrong),
            ToolSpec::new(&format!("{prefix}_bad"), "ok"),
        )
        .await;
        let (status, out) = execute(&app, &token, ok_tool, &good_input(s.call_id)).await;
        assert_eq!(status, 200, "{auth_type}: {out}");
        let (status, out) = execute(&app, &token, bad_tool, &good_input(s.call_id)).await;
        assert_eq!(status, 502, "{auth_type}: {out}");
        assert_eq!(out["http_status"], 403);
        assert_eq!(out["attempts"], 1, "403 is not retried");
        assert!(!out.to_string().contains(secret));
    }
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn checks_run_in_the_documented_order(pool: PgPool) {
    let app = spawn_app_with(pool, |c| {
        c.automation_require_agent_tool_mapping = Some(true)
    })
    .await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let s = seed(&app.pool).await;
    let other = seed(&app.pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let tool_id = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("lookup", "ok"),
    )
    .await;
    let no_endpoint = insert_tool(&app.pool, s.tenant_id, None, ToolSpec::new("bare", "ok")).await;
    let token = ops(&app, &s);
    let invalid = |call_id: Uuid| json!({"call_id": call_id, "input_json": {"order_id": 7, "quantity": 0, "extra": true}});

    // 1. Unknown call, or another tenant's: 404 (before anything else).
    let (status, out) = execute(&app, &token, Uuid::now_v7(), &invalid(Uuid::now_v7())).await;
    assert_eq!(
        (status, out["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{out}"
    );
    assert!(
        out["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("call")
    );
    let (status, _) = execute(&app, &token, tool_id, &good_input(other.call_id)).await;
    assert_eq!(status, 404);
    // 2. Unknown tool (or another tenant's): 404.
    let (status, out) = execute(&app, &token, Uuid::now_v7(), &invalid(s.call_id)).await;
    assert_eq!(status, 404);
    assert!(
        out["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("tool")
    );
    // 3. Not on the allowlist: 403 naming the rule, even with bad input.
    let (status, out) = execute(&app, &token, tool_id, &invalid(s.call_id)).await;
    assert_eq!(status, 403, "{out}");
    assert_eq!(out["error"]["code"], "tool_not_allowed");
    assert!(
        out["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("AUTOMATION_REQUIRE_AGENT_TOOL_MAPPING")
    );
    allow(&app.pool, s.tenant_id, s.version_id, tool_id).await;
    // 4. Every schema violation, with JSON pointers.
    let (status, out) = execute(&app, &token, tool_id, &invalid(s.call_id)).await;
    assert_eq!(status, 400, "{out}");
    assert_eq!(out["error"]["code"], "invalid_input");
    let mut pointers: Vec<&str> = out["error"]["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| v["pointer"].as_str().expect("pointer"))
        .collect();
    pointers.sort_unstable();
    assert_eq!(pointers, vec!["", "/order_id", "/quantity"], "{out}");
    // Nothing was recorded for refused requests.
    assert_eq!(app.count("tool_executions").await, 0);
    // A tool without an endpoint cannot run.
    allow(&app.pool, s.tenant_id, s.version_id, no_endpoint).await;
    let (status, out) = execute(&app, &token, no_endpoint, &good_input(s.call_id)).await;
    assert_eq!(status, 422, "{out}");
    assert_eq!(out["error"]["code"], "tool_endpoint_missing");
    // Allowed and valid: it runs.
    let (status, out) = execute(&app, &token, tool_id, &good_input(s.call_id)).await;
    assert_eq!(status, 200, "{out}");
    // A disabled integration: refused before anything is recorded.
    let before = app.count("tool_executions").await;
    sqlx::query("UPDATE integrations SET status = 'disabled' WHERE id = $1")
        .bind(integration)
        .execute(&app.pool)
        .await
        .expect("disable");
    let (status, out) = execute(&app, &token, tool_id, &good_input(s.call_id)).await;
    assert_eq!(status, 422, "{out}");
    assert_eq!(out["error"]["code"], "integration_disabled");
    assert_eq!(app.count("tool_executions").await, before);
    // A client token is not an internal one.
    let viewer = app.token(s.tenant_id, Role::ClientViewer);
    let (status, _) = execute(&app, &viewer, tool_id, &good_input(s.call_id)).await;
    assert_eq!(status, 403);
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn allowlist_off_lets_any_tenant_tool_run_and_catalog_follows_the_setting(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let s = seed(&app.pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let mapped = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("mapped", "ok"),
    )
    .await;
    let unmapped = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("unmapped", "ok"),
    )
    .await;
    insert_tool(
        &app.pool,
        s.tenant_id,
        None,
        ToolSpec::new("no_endpoint", "ok"),
    )
    .await;
    allow(&app.pool, s.tenant_id, s.version_id, mapped).await;
    let token = ops(&app, &s);

    let (status, out) = execute(&app, &token, unmapped, &good_input(s.call_id)).await;
    assert_eq!(status, 200, "{out}");
    let (status, catalog) = status_json(
        app.get(
            &format!("/internal/automation/tools/catalog?call_id={}", s.call_id),
            Some(&token),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{catalog}");
    let names: Vec<&str> = catalog["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["mapped", "unmapped"]);
    assert_eq!(
        catalog["tools"][0]["input_schema"]["required"],
        json!(["order_id"])
    );
    assert_eq!(catalog["tools"][0]["description"], "the mapped tool");
    worker.shutdown().await;

    // The same data with the mapping required.
    let strict = spawn_app_with(pool, |c| {
        c.automation_require_agent_tool_mapping = Some(true)
    })
    .await;
    let (status, catalog) = status_json(
        strict
            .get(
                &format!("/internal/automation/tools/catalog?call_id={}", s.call_id),
                Some(&token),
            )
            .await,
    )
    .await;
    assert_eq!(status, 200, "{catalog}");
    assert_eq!(catalog["tools"].as_array().map(Vec::len), Some(1));
    assert_eq!(catalog["tools"][0]["name"], "mapped");
    assert_eq!(catalog["allowlist_enforced"], true);
    let (status, _) = status_json(
        strict
            .get(
                &format!(
                    "/internal/automation/tools/catalog?call_id={}",
                    Uuid::now_v7()
                ),
                Some(&token),
            )
            .await,
    )
    .await;
    assert_eq!(status, 404);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn concurrent_executions_respect_the_rate_limit_exactly(pool: PgPool) {
    let app = spawn_app_with(pool, |c| c.automation_max_executions_per_minute = 10).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let s = seed(&app.pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let tool_id = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("lookup", "ok"),
    )
    .await;
    let token = ops(&app, &s);
    let url = app.url(&format!("/internal/automation/tools/{tool_id}/execute"));
    let requests = (0..50).map(|_| {
        let req = app
            .client
            .post(&url)
            .bearer_auth(&token)
            .json(&good_input(s.call_id));
        async move {
            let resp = req.send().await.expect("request");
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            (resp.status().as_u16(), retry_after)
        }
    });
    let results = futures::future::join_all(requests).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let limited: Vec<_> = results.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(ok, 10, "{results:?}");
    assert_eq!(limited.len(), 40, "{results:?}");
    assert!(
        limited
            .iter()
            .all(|(_, ra)| ra.is_some_and(|r| (1..=60).contains(&r)))
    );
    assert_eq!(app.count("tool_executions").await, 10);
    assert_eq!(n8n.hits("/webhook/ok"), 10);
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn no_worker_is_503_and_recorded_failed(pool: PgPool) {
    let app = spawn_app(pool).await;
    let s = seed(&app.pool).await;
    let integration =
        insert_integration(&app, s.tenant_id, "http://127.0.0.1:9", "none", None, None).await;
    let tool_id = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("lookup", "ok"),
    )
    .await;
    let token = ops(&app, &s);
    let (status, out) = execute(&app, &token, tool_id, &good_input(s.call_id)).await;
    assert_eq!(status, 503, "{out}");
    assert_eq!(out["error"]["code"], "worker_unavailable");
    let (st, code, _, _) = row(&app.pool, &out["execution_id"]).await;
    assert_eq!(
        (st.as_str(), code.as_deref()),
        ("failed", Some("worker_unavailable"))
    );
    let kinds: Vec<String> = events(&app.pool, s.call_id)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(kinds, vec!["tool.requested", "tool.failed"]);
    // `tool.requested`'s key is built in SQL (`execute_tool_checked`),
    // `tool.failed`'s in Rust: both are the key builder's.
    let execution_id: Uuid = out["execution_id"]
        .as_str()
        .expect("execution_id")
        .parse()
        .expect("uuid");
    let keys: Vec<String> = events(&app.pool, s.call_id)
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(
        keys,
        vec![
            event_key(execution_id, EventKind::Requested),
            event_key(execution_id, EventKind::Failed)
        ]
    );
    let event = failed_event(&app.pool, s.call_id).await;
    assert_eq!(event.execution_id, execution_id);
    assert_eq!(event.tool_id, tool_id);
    assert_eq!(event.tool, "lookup");
    assert_eq!(
        event.error.map(|e| e.code).as_deref(),
        Some("worker_unavailable")
    );
    assert_eq!(event.worker_id, None);
}

/// The payload of the call's `tool.failed` event, which must parse as the
/// one payload type (it refuses unknown fields).
async fn failed_event(pool: &PgPool, call_id: Uuid) -> ToolEvent {
    let payload: Value = sqlx::query_scalar(
        "SELECT payload FROM call_events WHERE call_id = $1 AND type = 'tool.failed'",
    )
    .bind(call_id)
    .fetch_one(pool)
    .await
    .expect("tool.failed");
    serde_json::from_value(payload).expect("a ToolEvent")
}

/// Sends `request` as the api would, signed, and returns the reply and the
/// `worker-id` header that came with it.
async fn send_signed(
    app: &TestApp,
    request: &shared::automation::ToolExecuteRequest,
) -> (shared::automation::ToolExecuteReply, Option<String>) {
    let payload = serde_json::to_vec(request).expect("json");
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
    (
        serde_json::from_slice(&reply.payload).expect("a reply"),
        worker,
    )
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_request_without_its_context_is_refused_and_recorded_failed(pool: PgPool) {
    let app = spawn_app(pool).await;
    let n8n = FakeN8n::start().await;
    let worker =
        start_worker_with(&app, |c| c.automation.worker_id = Some("aw-strict".into())).await;
    let s = seed(&app.pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let tool_id = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("lookup", "ok"),
    )
    .await;
    // Queued as the api queues it, then sent without its context, as an
    // older api sent it.
    let execution_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO tool_executions (id, tenant_id, call_id, tool_id, trace_id, status, input, deadline_at)
         VALUES ($1, $2, $3, $4, 'trace-old-api', 'queued', '{}', now() + interval '1 minute')",
    )
    .bind(execution_id)
    .bind(s.tenant_id)
    .bind(s.call_id)
    .bind(tool_id)
    .execute(&app.pool)
    .await
    .expect("queued execution");
    let request = shared::automation::ToolExecuteRequest {
        execution_id,
        tenant_id: s.tenant_id,
        context: None,
    };
    let (reply, worker_id) = send_signed(&app, &request).await;
    assert_eq!(worker_id.as_deref(), Some("aw-strict"));
    assert_eq!(reply.execution_id, execution_id);
    assert_eq!(reply.status, shared::automation::ExecutionStatus::Failed);
    assert_eq!(
        reply.error.as_ref().map(|e| e.code.as_str()),
        Some("context_missing")
    );
    assert_eq!(reply.attempts, 0);
    let (st, code, attempts, _) = row(&app.pool, &json!(execution_id)).await;
    assert_eq!(
        (st.as_str(), code.as_deref(), attempts),
        ("failed", Some("context_missing"), 0)
    );
    let event = failed_event(&app.pool, s.call_id).await;
    assert_eq!(event.tool, "lookup");
    assert_eq!(event.worker_id.as_deref(), Some("aw-strict"));
    assert_eq!(
        event.error.map(|e| e.code).as_deref(),
        Some("context_missing")
    );
    // Refused before any n8n call; asked again, it answers the record.
    let (again, _) = send_signed(&app, &request).await;
    assert_eq!(
        again.error.as_ref().map(|e| e.code.as_str()),
        Some("context_missing")
    );
    assert_eq!(events(&app.pool, s.call_id).await.len(), 1);
    assert!(n8n.received().is_empty());
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_worker_missing_the_deadline_gives_504_and_the_reaper_closes_it(pool: PgPool) {
    let app = spawn_app_with(pool, |c| {
        c.automation_execute_timeout = Duration::from_millis(300)
    })
    .await;
    let s = seed(&app.pool).await;
    let integration =
        insert_integration(&app, s.tenant_id, "http://127.0.0.1:9", "none", None, None).await;
    let tool_id = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("lookup", "ok"),
    )
    .await;
    let token = ops(&app, &s);
    // A "worker" that takes requests and dies without answering.
    let _black_hole = app
        .nats
        .queue_subscribe(
            app.subjects.automation_tool_execute(),
            app.subjects.automation_queue_group(),
        )
        .await
        .expect("subscribe");
    app.nats.flush().await.expect("flush");
    let started = Instant::now();
    let (status, out) = execute(&app, &token, tool_id, &good_input(s.call_id)).await;
    assert_eq!(status, 504, "{out}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(out["status"], "queued");
    let execution_id = out["execution_id"].clone();

    // The reaper (of any live worker) closes it once its deadline passed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        automation_worker::reaper::reap_once(&app.pool, Duration::ZERO)
            .await
            .expect("reap");
        let (st, code, _, _) = row(&app.pool, &execution_id).await;
        if st == "failed" {
            assert_eq!(code.as_deref(), Some("worker_lost"));
            break;
        }
        assert!(Instant::now() < deadline, "never reaped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kinds: Vec<String> = events(&app.pool, s.call_id)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(kinds, vec!["tool.requested", "tool.failed"]);
    // The reaper's event has the one payload shape, the tool's name included.
    let event = failed_event(&app.pool, s.call_id).await;
    assert_eq!(event.tool, "lookup");
    assert_eq!(event.worker_id, None);
    assert_eq!(event.error.map(|e| e.code).as_deref(), Some("worker_lost"));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn graceful_shutdown_finishes_executions_in_flight(pool: PgPool) {
    let app = spawn_app(pool).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let s = seed(&app.pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let tool_id = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("slow", "slow"),
    )
    .await;
    let token = ops(&app, &s);
    let url = app.url(&format!("/internal/automation/tools/{tool_id}/execute"));
    let req = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .json(&good_input(s.call_id));
    let in_flight =
        tokio::spawn(async move { req.send().await.expect("request").status().as_u16() });
    // Wait until n8n has the request, then ask the worker to stop.
    let deadline = Instant::now() + Duration::from_secs(5);
    while n8n.hits("/webhook/slow") == 0 {
        assert!(Instant::now() < deadline, "request never reached n8n");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.stop.cancel();
    assert_eq!(in_flight.await.expect("join"), 200);
    let stopped = tokio::time::timeout(Duration::from_secs(5), worker.handle).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    // Stopped: new requests find no worker.
    let (status, _) = execute(&app, &token, tool_id, &good_input(s.call_id)).await;
    assert_eq!(status, 503);
}

// --- n8n integration test ------------------------------------------------

async fn test_integration(app: &TestApp, token: &str, body: &Value) -> (u16, Value, String) {
    let resp = app
        .post("/internal/integrations/n8n/test", Some(token), body)
        .await;
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, json, text)
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn integration_is_stored_only_when_reachable_and_never_shows_its_secret(pool: PgPool) {
    // Capture every log line of this test (the runtime is single-threaded,
    // so the thread-local subscriber sees the api and the worker).
    let logs = LogCapture::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(logs.clone())
            .finish(),
    );
    let app = spawn_app(pool).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    // Tests on other threads (no subscriber there) may have cached a log
    // callsite as uninteresting while this subscriber was being added;
    // recompute, so every line of the api and the worker reaches it.
    tracing::callsite::rebuild_interest_cache();
    let s = seed(&app.pool).await;
    let token = app.token(s.tenant_id, Role::InternalAdmin);

    for (prefix, auth_type, header_name, secret) in [
        ("hdr", "header", Some("X-N8N-Key"), HEADER_SECRET),
        ("basic", "basic", None, BASIC_SECRET),
        ("bearer", "bearer", None, BEARER_SECRET),
    ] {
        let body = json!({"tenant_id": s.tenant_id, "base_url": format!("{}/{prefix}/", n8n.base),
                          "auth_type": auth_type, "header_name": header_name, "secret": secret});
        let (status, out, text) = test_integration(&app, &token, &body).await;
        assert_eq!(status, 201, "{auth_type}: {text}");
        assert!(!text.contains(secret));
        assert_eq!(out["has_secret"], true);
        assert_eq!(out["auth_type"], auth_type);
        assert_eq!(out["base_url"], format!("{}/{prefix}", n8n.base));
        // Stored sealed, and it opens with the row's AAD.
        let id: Uuid = out["id"].as_str().expect("id").parse().expect("uuid");
        let (ciphertext, nonce, key_id): (Vec<u8>, Vec<u8>, String) = sqlx::query_as(
            "SELECT secret_ciphertext, secret_nonce, secret_key_id FROM integrations WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("row");
        assert!(
            !ciphertext
                .windows(secret.len())
                .any(|w| w == secret.as_bytes())
        );
        let key = app.config.encryption.key(&app.config.common).expect("key");
        let opened = shared::crypto::SecretBox::new(&key)
            .open(
                &shared::crypto::Sealed {
                    ciphertext,
                    nonce,
                    key_id,
                },
                &shared::automation::integration_secret_aad(s.tenant_id, id),
            )
            .expect("opens");
        assert_eq!(opened, secret.as_bytes());
        // The stored integration works for tool calls.
        let tool = insert_tool(
            &app.pool,
            s.tenant_id,
            Some(id),
            ToolSpec::new(&format!("{prefix}_t"), "ok"),
        )
        .await;
        let (status, out) = execute(&app, &token, tool, &good_input(s.call_id)).await;
        assert_eq!(status, 200, "{out}");
    }
    let stored = app.count("integrations").await;
    assert_eq!(stored, 3);

    // Unreachable for each reason: 422 with the reason, nothing stored.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let cases = [
        (
            json!({"base_url": format!("{}/bearer", n8n.base), "auth_type": "bearer", "secret": "wrong-token"}),
            "http_status",
            Some(403u64),
        ),
        (
            json!({"base_url": format!("{}/down", n8n.base), "auth_type": "none"}),
            "http_status",
            Some(503),
        ),
        (
            json!({"base_url": format!("http://127.0.0.1:{closed_port}"), "auth_type": "none"}),
            "connect",
            None,
        ),
        // (No DNS failure case here: resolving a missing name would query the
        // machine's resolver, which is not on loopback; the `dns` reason is
        // covered by automation-worker's unit tests.)
    ];
    for (mut body, reason, http_status) in cases {
        body["tenant_id"] = json!(s.tenant_id);
        let (status, out, text) = test_integration(&app, &token, &body).await;
        assert_eq!(status, 422, "{text}");
        assert_eq!(out["error"]["code"], "integration_unreachable");
        assert_eq!(out["error"]["reason"], reason, "{text}");
        assert_eq!(out["error"]["http_status"].as_u64(), http_status);
        assert!(!text.contains("wrong-token"));
    }
    // The failed probes were retried (bounded): 1 + AUTOMATION_PROBE_RETRIES.
    assert_eq!(n8n.hits("/down/healthz"), 2);
    assert_eq!(app.count("integrations").await, stored);

    // Bad input is a 400; another tenant's id a 403.
    for body in [
        json!({"tenant_id": s.tenant_id, "base_url": "not a url", "auth_type": "none"}),
        json!({"tenant_id": s.tenant_id, "base_url": n8n.base, "auth_type": "bearer"}),
        json!({"tenant_id": s.tenant_id, "base_url": n8n.base, "auth_type": "header", "secret": "x"}),
        json!({"tenant_id": s.tenant_id, "base_url": n8n.base, "auth_type": "basic", "secret": "nocolon"}),
        json!({"tenant_id": s.tenant_id, "base_url": n8n.base, "auth_type": "none", "secret": "x"}),
        json!({"tenant_id": s.tenant_id, "base_url": "ftp://example.com", "auth_type": "none"}),
    ] {
        let (status, _, text) = test_integration(&app, &token, &body).await;
        assert_eq!(status, 400, "{body}: {text}");
    }
    let (status, _, _) = test_integration(
        &app,
        &token,
        &json!({"tenant_id": Uuid::now_v7(), "base_url": n8n.base, "auth_type": "none"}),
    )
    .await;
    assert_eq!(status, 403);

    worker.shutdown().await;
    // No worker: 503, nothing stored.
    let (status, out, _) = test_integration(
        &app,
        &token,
        &json!({"tenant_id": s.tenant_id, "base_url": n8n.base, "auth_type": "none"}),
    )
    .await;
    assert_eq!(status, 503, "{out}");
    assert_eq!(app.count("integrations").await, stored);

    let logged = logs.text();
    assert!(
        logged.contains("tool execution finished"),
        "logs were captured"
    );
    for secret in [HEADER_SECRET, BASIC_SECRET, BEARER_SECRET, "wrong-token"] {
        assert!(!logged.contains(secret), "secret {secret} in logs");
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn ssrf_refuses_loopback_private_and_metadata_before_connecting(pool: PgPool) {
    let app = spawn_app(pool).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker_with(&app, |c| c.automation.allow_private_networks = false).await;
    let s = seed(&app.pool).await;
    let token = app.token(s.tenant_id, Role::InternalAdmin);
    let port = n8n.port();
    // Refused before any connection: none of these is ever contacted.
    for base in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        format!("http://[::1]:{port}"),
        "http://10.0.0.1".to_owned(),
        "http://192.168.1.10:5678".to_owned(),
        "http://169.254.169.254".to_owned(),
    ] {
        let body = json!({"tenant_id": s.tenant_id, "base_url": base, "auth_type": "none"});
        let (status, out, text) = test_integration(&app, &token, &body).await;
        assert_eq!(status, 422, "{base}: {text}");
        assert_eq!(out["error"]["reason"], "address_refused", "{base}: {text}");
        assert!(
            out["error"]["attempts"].as_u64() <= Some(1),
            "refusals are not retried: {text}"
        );
    }
    assert_eq!(app.count("integrations").await, 0);

    // A stored integration pointing at loopback cannot be used either.
    let integration = insert_integration(
        &app,
        s.tenant_id,
        &format!("http://localhost:{port}"),
        "none",
        None,
        None,
    )
    .await;
    let tool_id = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("lookup", "ok"),
    )
    .await;
    let (status, out) = execute(&app, &token, tool_id, &good_input(s.call_id)).await;
    assert_eq!(status, 502, "{out}");
    assert_eq!(out["error"]["code"], "address_refused");
    assert_eq!(out["attempts"], 1);
    assert!(
        n8n.received().is_empty(),
        "n8n was contacted: {:?}",
        n8n.received()
    );
    worker.shutdown().await;
}

/// A `MakeWriter` that keeps everything written.
#[derive(Clone, Default)]
struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The api caches tools and their compiled schemas; an edited schema, a
/// renamed or deleted tool must still take effect on the very next request.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn edited_renamed_and_deleted_tools_take_effect_at_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let s = seed(&app.pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let tool_id = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("lookup", "ok"),
    )
    .await;
    let token = ops(&app, &s);

    // Cached by id and by name.
    let (status, out) = execute(&app, &token, tool_id, &good_input(s.call_id)).await;
    assert_eq!(status, 200, "{out}");
    let (status, out) = execute_by_name(&app, &token, "lookup", &good_input(s.call_id)).await;
    assert_eq!(status, 200, "{out}");

    // A stricter schema refuses the same input at once, by id and by name.
    sqlx::query(
        "UPDATE tools SET input_schema = input_schema || '{\"required\": [\"order_id\", \"quantity\", \"note\"]}', updated_at = now() WHERE id = $1",
    )
    .bind(tool_id)
    .execute(&app.pool)
    .await
    .expect("edit schema");
    let (status, out) = execute(&app, &token, tool_id, &good_input(s.call_id)).await;
    assert_eq!(status, 400, "{out}");
    assert_eq!(
        out["error"]["violations"][0]["message"]
            .as_str()
            .map(|m| m.contains("note")),
        Some(true),
        "{out}"
    );
    let (status, out) = execute_by_name(&app, &token, "lookup", &good_input(s.call_id)).await;
    assert_eq!(status, 400, "{out}");

    // Renamed: the old name is unknown, the new one runs.
    sqlx::query("UPDATE tools SET name = 'lookup_v2', input_schema = input_schema - 'required' WHERE id = $1")
        .bind(tool_id)
        .execute(&app.pool)
        .await
        .expect("rename");
    let (status, out) = execute_by_name(&app, &token, "lookup", &good_input(s.call_id)).await;
    assert_eq!(
        (status, out["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{out}"
    );
    let (status, out) = execute_by_name(&app, &token, "lookup_v2", &good_input(s.call_id)).await;
    assert_eq!(status, 200, "{out}");

    // Deleted: 404 by id and by name.
    sqlx::query("DELETE FROM tools WHERE id = $1")
        .bind(tool_id)
        .execute(&app.pool)
        .await
        .expect("delete");
    let (status, _) = execute(&app, &token, tool_id, &good_input(s.call_id)).await;
    assert_eq!(status, 404);
    let (status, _) = execute_by_name(&app, &token, "lookup_v2", &good_input(s.call_id)).await;
    assert_eq!(status, 404);
    worker.shutdown().await;
}

/// The api answers with the worker's reply type; the document still names
/// it `ExecutionResult`, with the fields the README lists.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn openapi_documents_the_execution_result(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, doc) = status_json(app.get("/openapi.json", None).await).await;
    assert_eq!(status, 200);
    let execute = &doc["paths"]["/internal/automation/tools/{tool_id}/execute"]["post"];
    for code in ["200", "502", "503", "504"] {
        let reference = execute["responses"][code]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(
            reference, "#/components/schemas/ExecutionResult",
            "{code}: {execute}"
        );
    }
    let schema = &doc["components"]["schemas"]["ExecutionResult"]["properties"];
    for field in [
        "execution_id",
        "trace_id",
        "status",
        "output",
        "attempts",
        "latency_ms",
        "http_status",
        "error",
    ] {
        assert!(schema[field].is_object(), "{field} missing: {schema}");
    }
}

/// Under `everything_except_pii` and `basic_attributes_only` n8n gets the
/// input as the runtime sent it, the runtime gets n8n's answer, and
/// Postgres keeps them redacted or not at all.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn tool_inputs_and_outputs_are_stored_under_the_storage_mode(pool: PgPool) {
    let app = spawn_app(pool).await;
    let n8n = FakeN8n::start().await;
    let _worker = start_worker(&app).await;
    let s = seed(&app.pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let tool_id = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("lookup_order", "ok"),
    )
    .await;
    let token = ops(&app, &s);
    let input = json!({"order_id": "A-123 for jane.doe@example.com, card 4111111111111111",
                       "quantity": 2});
    let redacted = json!({"order_id": "A-123 for [EMAIL], card [CARD]", "quantity": 2});
    for (mode, stored_input, stored_output) in [
        (
            "everything_except_pii",
            redacted.clone(),
            json!({"answer": 42, "received_input": redacted}),
        ),
        ("basic_attributes_only", json!({}), json!({})),
    ] {
        sqlx::query("UPDATE tenants SET data_storage = $2 WHERE id = $1")
            .bind(s.tenant_id)
            .bind(mode)
            .execute(&app.pool)
            .await
            .expect("mode");
        let (status, out) = execute(
            &app,
            &token,
            tool_id,
            &json!({"call_id": s.call_id, "input_json": input}),
        )
        .await;
        assert_eq!(status, 200, "{out}");
        assert_eq!(
            out["output"]["received_input"], input,
            "the runtime gets n8n's answer"
        );
        let sent = n8n.received().last().expect("n8n was called").body.clone();
        assert_eq!(sent["input"], input, "n8n gets the input as sent");
        let id: Uuid = out["execution_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("id");
        let (row_input, row_output): (Value, Option<Value>) =
            sqlx::query_as("SELECT input, output FROM tool_executions WHERE id = $1")
                .bind(id)
                .fetch_one(&app.pool)
                .await
                .expect("row");
        assert_eq!(row_input, stored_input, "{mode}");
        assert_eq!(row_output, Some(stored_output), "{mode}");
    }
}
