//! The reference runtime (`examples/runtime`, the real binary) against the
//! platform on the secured bus (`deploy/nats/nats.conf`, each service its
//! own user, the runtime as `runtime`): a signed inbound call is handed off,
//! claimed once although two runtime fleets receive it, talked through
//! (transcript, a tool call through the automation gateway to a fake n8n,
//! the end of the conversation), and completed by Twilio's status callback;
//! the tenant's staff see all of it through the client API.

use std::process::Stdio;
use std::time::Duration;

use api::testing::fixtures::{ToolSpec, insert_integration, insert_tool};
use api::testing::n8n::FakeN8n;
use api::testing::{TestApp, spawn_app_with, status_json};
use serde_json::Value;
use shared::auth::Role;
use shared::testing::nats_server::SecuredNats;
use sqlx::PgPool;

use super::world::*;
use crate::automation::worker::start_worker_with;

const INBOUND: &str = "/twilio/webhook/inbound";
const STATUS: &str = "/twilio/webhook/status";

/// The reference runtime as a process, with its own durable consumer.
fn spawn_runtime(
    bus: &SecuredNats,
    app: &TestApp,
    token: &str,
    consumer: &str,
) -> tokio::process::Child {
    tokio::process::Command::new(e2e::binary("reference-runtime"))
        .env("NATS_URL", bus.url())
        .env("NATS_USER", "runtime")
        .env("NATS_PASSWORD", bus.password("runtime"))
        .env("RUNTIME_API_URL", &app.addr)
        .env("RUNTIME_API_TOKEN", token)
        .env("RUNTIME_CONSUMER", consumer)
        .env("RUNTIME_TURN_PAUSE", "10ms")
        .env(
            "RUST_LOG",
            std::env::var("RUNTIME_LOG").unwrap_or_else(|_| "warn".into()),
        )
        // Its log lines (stdout) show beside a failing test's output.
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start reference-runtime")
}

async fn get_json(app: &TestApp, path: &str, token: &str) -> Value {
    let (status, body) = status_json(app.get(path, Some(token)).await).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_reference_runtime_takes_a_call_from_handoff_to_completed(pool: PgPool) {
    let bus = SecuredNats::start().await;
    let dispatch_client = shared::nats::connect(&bus.args("dispatch-worker"), "dispatch-worker")
        .await
        .expect("dispatch-worker connects");
    let w = world_on(pool.clone(), bus.args("webhook-ingress"), dispatch_client).await;
    let dispatch_args = bus.args("dispatch-worker");
    w.spawn_worker(move |config| {
        config.nats = dispatch_args;
        // The api's key: the worker seals the join token the claim opens.
        config.encryption.encryption_key = Some(shared::testing::ENCRYPTION_KEY.into());
    })
    .await;
    let api_args = bus.args("api");
    let app = spawn_app_with(pool, move |config| config.nats = api_args).await;
    let automation_args = bus.args("automation-worker");
    let _automation = start_worker_with(&app, move |config| config.nats = automation_args).await;

    // The agent has one tool, on the tenant's n8n.
    let seeded = seed_number(&w.pool, "+14155550992").await;
    let n8n = FakeN8n::start().await;
    let integration =
        insert_integration(&app, seeded.tenant_id, &n8n.base, "none", None, None).await;
    insert_tool(
        &app.pool,
        seeded.tenant_id,
        Some(integration),
        ToolSpec::new("lookup_order", "ok"),
    )
    .await;

    // A runtime token reaches the runtime's routes only.
    let runtime_token = app.token(seeded.tenant_id, Role::Runtime);
    for path in ["/internal/agents", "/client/calls"] {
        let (status, body) = status_json(app.get(path, Some(&runtime_token)).await).await;
        assert_eq!(status, 403, "{path} with a runtime token: {body}");
    }
    // Two runtime fleets (two durable consumers) both receive the handoff.
    let _first = spawn_runtime(&bus, &app, &runtime_token, "fleet-a");
    let _second = spawn_runtime(&bus, &app, &runtime_token, "fleet-b");

    let sid = "CA00000000000000000000000000000992";
    let (status, twiml) = w
        .post_signed(INBOUND, &inbound_params(sid, &seeded.e164))
        .await;
    assert_eq!(status, 200);
    assert!(twiml.contains("<Connect><Stream"), "{twiml}");

    // The conversation: six utterances, then the runtime's call.ended.
    assert!(
        eventually(Duration::from_secs(30), || async {
            w.scalar("SELECT count(*) FROM call_events WHERE type = 'call.ended'")
                .await
                == 1
                && w.scalar("SELECT count(*) FROM transcript_segments").await >= 6
        })
        .await,
        "the runtime's conversation did not end; see its log above"
    );
    // Twilio's status callback once the caller hangs up.
    let completed = params(&[
        ("CallSid", sid),
        ("CallStatus", "completed"),
        ("CallDuration", "9"),
        ("To", &seeded.e164),
    ]);
    assert_eq!(w.post_signed(STATUS, &completed).await.0, 200);
    assert!(
        eventually(Duration::from_secs(15), || async {
            w.scalar("SELECT count(*) FROM call_sessions WHERE status = 'completed'")
                .await
                == 1
        })
        .await,
        "the call was not completed"
    );

    // Claimed exactly once, by one of the two fleets.
    assert_eq!(
        w.scalar("SELECT count(*) FROM runtime_dispatches WHERE status = 'claimed'")
            .await,
        1
    );
    assert_eq!(
        w.scalar("SELECT count(*) FROM audit_log WHERE action = 'runtime_dispatch.claim'")
            .await,
        1
    );
    assert_eq!(
        n8n.hits("/webhook/ok"),
        1,
        "one conversation, one tool call"
    );

    // What the tenant's staff see.
    let viewer = app.token(seeded.tenant_id, Role::ClientViewer);
    let calls = get_json(&app, "/client/calls?limit=5", &viewer).await;
    let call_id = calls["items"][0]["id"]
        .as_str()
        .expect("the call")
        .to_owned();
    let call = get_json(&app, &format!("/client/calls/{call_id}"), &viewer).await;
    assert_eq!(call["status"], "completed");
    assert_eq!(call["durations"]["talk_seconds"], 9.0, "{call}");
    let timeline = call["timeline"].as_array().expect("timeline");
    let tools: Vec<&Value> = timeline
        .iter()
        .filter(|i| i["kind"] == "tool_execution")
        .collect();
    assert_eq!(tools.len(), 1, "{timeline:?}");
    assert_eq!(tools[0]["tool_name"], "lookup_order");
    assert_eq!(tools[0]["status"], "succeeded");
    assert_eq!(tools[0]["input"]["order_id"], "demo");
    let events: Vec<&str> = timeline.iter().filter_map(|i| i["type"].as_str()).collect();
    for expected in [
        "call.inbound",
        "runtime.handoff_requested",
        "call.ended",
        "call.status",
    ] {
        assert!(
            events.contains(&expected),
            "{expected} missing from {events:?}"
        );
    }

    let transcript = get_json(
        &app,
        &format!("/client/calls/{call_id}/transcript"),
        &viewer,
    )
    .await;
    let segments = transcript["segments"].as_array().expect("segments");
    let said: Vec<(String, String)> = segments
        .iter()
        .map(|s| {
            (
                s["speaker"].as_str().unwrap_or_default().to_owned(),
                s["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(said.len(), 6, "one conversation, not two: {said:?}");
    assert_eq!(said[0].0, "agent");
    assert_eq!(said[1].0, "caller");
    // The agent spoke the tool's answer.
    assert!(
        said.iter()
            .any(|(who, text)| who == "agent" && text.contains("\"answer\":42")),
        "{said:?}"
    );
    let starts: Vec<i64> = segments
        .iter()
        .filter_map(|s| s["start_ms"].as_i64())
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] < w[1]),
        "segments in order: {starts:?}"
    );
}
