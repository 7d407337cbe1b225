//! W3C trace context from the api to automation-worker: the api continues
//! the request's `traceparent` (or starts one) and sends it in the NATS
//! request headers, with the context the worker runs the execution from. A
//! test subscriber stands in for the worker and looks at the message it gets.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use shared::auth::Role;
use shared::automation::{ExecutionStatus, ToolExecuteReply, ToolExecuteRequest};
use shared::trace::{TRACEPARENT, TraceContext};
use sqlx::PgPool;

use api::testing::fixtures::{Seed, ToolSpec, insert_integration, insert_tool, seed};
use api::testing::{TestApp, spawn_app};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Sends one execute request (with `traceparent` when given) and returns
/// the api's answer and the NATS headers the stand-in worker received.
async fn execute_capturing(
    app: &TestApp,
    traceparent: Option<&str>,
    body_trace_id: Option<&str>,
) -> (
    serde_json::Value,
    async_nats::HeaderMap,
    ToolExecuteRequest,
    Seed,
) {
    let s = seed(&app.pool).await;
    let integration = insert_integration(
        app,
        s.tenant_id,
        "http://127.0.0.1:9",
        "bearer",
        None,
        Some(SEALED_SECRET),
    )
    .await;
    let tool_id = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("lookup_order", "ok"),
    )
    .await;
    let mut sub = app
        .nats
        .subscribe(app.subjects.automation_tool_execute())
        .await
        .expect("subscribe");
    app.nats.flush().await.expect("flush");
    let nats = app.nats.clone();
    let stand_in = tokio::spawn(async move {
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a request within 10 s")
            .expect("subscription open");
        let req: ToolExecuteRequest =
            serde_json::from_slice(&msg.payload).expect("request payload");
        let reply = ToolExecuteReply {
            execution_id: req.execution_id,
            trace_id: String::new(),
            status: ExecutionStatus::Succeeded,
            output: Some(json!({"ok": true})),
            error: None,
            http_status: Some(200),
            attempts: 1,
            latency_ms: Some(1),
        };
        nats.publish(
            msg.reply.clone().expect("a request has a reply subject"),
            serde_json::to_vec(&reply).expect("json").into(),
        )
        .await
        .expect("reply");
        (msg.headers.expect("the request carries headers"), req)
    });
    let mut body = json!({"call_id": s.call_id, "input_json": {"order_id": "A-123"}});
    if let Some(t) = body_trace_id {
        body["trace_id"] = json!(t);
    }
    let mut request = app
        .client
        .post(app.url(&format!("/internal/automation/tools/{tool_id}/execute")))
        .bearer_auth(app.token(s.tenant_id, Role::InternalOperator))
        .json(&body);
    if let Some(t) = traceparent {
        request = request.header(TRACEPARENT, t);
    }
    let resp = request.send().await.expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let out: serde_json::Value = resp.json().await.expect("json");
    let (headers, req) = stand_in.await.expect("stand-in worker");
    (out, headers, req, s)
}

const SEALED_SECRET: &str = "ctx-bearer-token-0123";

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_request_carries_what_the_worker_needs_with_the_secret_sealed(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (out, _, req, s) = execute_capturing(&app, None, None).await;
    let ctx = req.context.expect("the api sends the execution's context");
    assert_eq!(out["execution_id"], json!(req.execution_id));
    assert_eq!((ctx.id, ctx.tenant_id), (req.execution_id, s.tenant_id));
    assert_eq!(ctx.call_id, s.call_id);
    assert_eq!(ctx.tool_name, "lookup_order");
    assert_eq!(ctx.input, json!({"order_id": "A-123"}));
    assert_eq!(ctx.base_url.as_deref(), Some("http://127.0.0.1:9"));
    assert_eq!(ctx.auth_type.as_deref(), Some("bearer"));
    assert_eq!(ctx.integration_status.as_deref(), Some("active"));
    assert!(ctx.webhook_path.is_some() && ctx.method.is_some());
    assert!(ctx.deadline_at > chrono::Utc::now());
    let (call_sid, agent_id, version): (String, Option<uuid::Uuid>, i32) = sqlx::query_as(
        "SELECT c.call_sid, c.agent_id, v.version FROM call_sessions c
         JOIN agent_versions v ON v.id = c.agent_version_id WHERE c.id = $1",
    )
    .bind(s.call_id)
    .fetch_one(&app.pool)
    .await
    .expect("call");
    assert_eq!(
        (ctx.call_sid.as_str(), ctx.agent_id, ctx.agent_version),
        (call_sid.as_str(), agent_id, Some(version))
    );
    // Sealed on the wire, and it opens to the integration's secret.
    let sealed = shared::crypto::Sealed {
        ciphertext: ctx.secret_ciphertext.clone().expect("ciphertext"),
        nonce: ctx.secret_nonce.clone().expect("nonce"),
        key_id: ctx.secret_key_id.clone().expect("key id"),
    };
    assert!(
        !sealed
            .ciphertext
            .windows(SEALED_SECRET.len())
            .any(|w| w == SEALED_SECRET.as_bytes())
    );
    let key = app.config.encryption.key(&app.config.common).expect("key");
    let opened = shared::crypto::SecretBox::new(&key)
        .open(
            &sealed,
            &shared::automation::integration_secret_aad(
                s.tenant_id,
                ctx.integration_id.expect("integration"),
            ),
        )
        .expect("opens");
    assert_eq!(opened, SEALED_SECRET.as_bytes());
}

fn carried(headers: &async_nats::HeaderMap) -> TraceContext {
    let value = headers
        .get(TRACEPARENT)
        .expect("traceparent header on the NATS request")
        .as_str();
    TraceContext::parse(value).expect("a valid traceparent")
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_callers_traceparent_reaches_the_worker_continued(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (out, headers, ..) = execute_capturing(&app, Some(PARENT), None).await;
    let ctx = carried(&headers);
    let parent = TraceContext::parse(PARENT).expect("parent");
    // Same trace, one hop further.
    assert_eq!(ctx.trace_id, parent.trace_id);
    assert_ne!(ctx.parent_id, parent.parent_id);
    assert!(ctx.sampled);
    // With no trace_id in the body, the record uses the W3C trace id, so
    // the timeline, the api's logs and the worker's logs share one id.
    assert_eq!(out["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        headers.get("x-trace-id").map(|v| v.as_str()),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn without_traceparent_the_api_starts_a_trace(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (out, headers, ..) = execute_capturing(&app, None, None).await;
    let ctx = carried(&headers);
    assert_eq!(out["trace_id"], ctx.trace_id_hex());
    // A malformed header is ignored (a new root), never an error.
    let (out, headers, ..) = execute_capturing(&app, Some("00-zz-bad-01"), None).await;
    assert_eq!(out["trace_id"], carried(&headers).trace_id_hex());
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_explicit_trace_id_is_kept_beside_the_traceparent(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (out, headers, ..) = execute_capturing(&app, Some(PARENT), Some("call-trace-7")).await;
    assert_eq!(out["trace_id"], "call-trace-7");
    assert_eq!(
        headers.get("x-trace-id").map(|v| v.as_str()),
        Some("call-trace-7")
    );
    assert_eq!(
        carried(&headers).trace_id_hex(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
}
