//! End to end: signed webhooks through the in-process ingress, the real
//! dispatch-worker binary, and the api's claim.

use std::time::Duration;

use base64::Engine;
use clap::Parser;
use futures::StreamExt;
use shared::auth::Role;
use shared::calls::HandoffRequested;
use sqlx::PgPool;

use super::world::*;

const INBOUND: &str = "/twilio/webhook/inbound";

/// The api in-process on a random port; returns its base URL and a token
/// for `tenant_id`.
pub async fn spawn_api(pool: PgPool, prefix: &str, tenant_id: uuid::Uuid) -> (String, String) {
    let mut config = api::config::Config::try_parse_from(["api", "--app-env", "development"])
        .expect("api defaults");
    config.nats.nats_subject_prefix = prefix.to_owned();
    config.auth.jwt_secret = Some("e2e-secret-that-is-long-enough-for-prod-0123".into());
    config.encryption.encryption_key = Some(shared::config::DEV_ENCRYPTION_KEY.into());
    let secret = config.auth.secret(&config.common).expect("secret");
    let key = config.encryption.key(&config.common).expect("key");
    let nats = async_nats::connect(NATS_URL).await.expect("nats");
    let state = api::startup::build_state(&config, pool, nats, &secret, &key).expect("state");
    let token = state
        .jwt
        .issue(
            "runtime-1",
            tenant_id,
            Role::InternalOperator,
            true,
            Duration::from_secs(600),
        )
        .expect("token");
    let app = api::startup::router(state, shared::telemetry::install_metrics(), &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(shared::http::serve(listener, app, std::future::pending()));
    (base, token)
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn signed_webhook_becomes_one_dispatch_one_handoff_and_one_claim(pool: PgPool) {
    let w = world(pool).await;
    let seeded = seed_number(&w.pool, "+14155550201").await;
    let mut handoffs = w
        .nats
        .subscribe(w.subjects.runtime_handoff_all())
        .await
        .expect("subscribe");
    let mut worker = w.spawn_worker_binary();

    let call = inbound_params("CA00000000000000000000000000000201", &seeded.e164);
    let (status, twiml) = w.post_signed(INBOUND, &call).await;
    assert_eq!(status, 200, "{twiml}");
    // Twilio retries the same webhook five times.
    for _ in 0..5 {
        let (status, again) = w.post_signed(INBOUND, &call).await;
        assert_eq!(status, 200);
        assert_eq!(again, twiml);
    }

    let message = tokio::time::timeout(Duration::from_secs(20), handoffs.next())
        .await
        .expect("a handoff within 20s")
        .expect("subscription open");
    assert_eq!(
        message.subject.as_str(),
        w.subjects.runtime_handoff_requested(seeded.tenant_id)
    );
    // The trace started at the webhook travels with the call to the runtime.
    let carried = shared::trace::TraceContext::from_nats(message.headers.as_ref())
        .expect("traceparent header on the handoff");
    let stored: String =
        sqlx::query_scalar("SELECT trace_id FROM call_events WHERE type = 'call.inbound'")
            .fetch_one(&w.pool)
            .await
            .expect("inbound event trace");
    assert_eq!(
        shared::trace::TraceContext::parse(&stored)
            .expect("stored traceparent")
            .trace_id,
        carried.trace_id
    );
    let text = String::from_utf8(message.payload.to_vec()).expect("utf-8");
    assert!(!text.contains("token"), "{text}");
    let handoff: HandoffRequested = serde_json::from_str(&text).expect("handoff body");
    assert_eq!(handoff.call_sid, "CA00000000000000000000000000000201");
    assert_eq!(handoff.tenant_id, seeded.tenant_id);
    assert_eq!(handoff.agent_id, Some(seeded.agent_id));
    assert_eq!(handoff.agent_version_id, Some(seeded.version_id));
    assert_eq!(handoff.agent_version, Some(3));
    assert_eq!(handoff.from, "+14155550100");
    assert_eq!(handoff.to, seeded.e164);
    assert!(twiml.contains(&handoff.call_id.to_string()));

    // Everything settles to exactly one of each.
    assert!(
        eventually(Duration::from_secs(10), || async {
            w.scalar(
                "SELECT count(*) FROM call_events WHERE needs_publish AND (published_at IS NULL OR processed_at IS NULL)",
            )
            .await
                == 0
        })
        .await
    );
    assert_eq!(w.scalar("SELECT count(*) FROM call_sessions").await, 1);
    assert_eq!(w.scalar("SELECT count(*) FROM runtime_dispatches").await, 1);
    assert_eq!(
        w.scalar("SELECT count(*) FROM call_events WHERE type = 'call.inbound'")
            .await,
        1
    );
    assert_eq!(
        w.stream_messages(&w.subjects.runtime_handoffs_stream())
            .await,
        1
    );
    // No second handoff on the wire either.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), handoffs.next())
            .await
            .is_err()
    );

    // The runtime claims: the token once, then 409.
    let (api, bearer) = spawn_api(w.pool.clone(), &w.prefix, seeded.tenant_id).await;
    let claim = |api: String, bearer: String| {
        let client = w.client.clone();
        async move {
            let resp = client
                .post(format!("{api}/internal/runtime/dispatches/claim"))
                .bearer_auth(bearer)
                .json(&serde_json::json!({"dispatch_id": handoff.dispatch_id}))
                .send()
                .await
                .expect("claim");
            let status = resp.status().as_u16();
            (
                status,
                resp.json::<serde_json::Value>().await.expect("json"),
            )
        }
    };
    let (status, body) = claim(api.clone(), bearer.clone()).await;
    assert_eq!(status, 200, "{body}");
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body["join_token"].as_str().expect("join_token"))
        .expect("base64url");
    assert_eq!(token.len(), 32);
    let (status, _) = claim(api, bearer).await;
    assert_eq!(status, 409);

    worker.kill().await.expect("kill");
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn worker_killed_mid_flight_and_restarted_loses_nothing(pool: PgPool) {
    const CALLS: usize = 40;
    let w = world(pool).await;
    let seeded = seed_number(&w.pool, "+14155550202").await;
    let mut worker = w.spawn_worker_binary();

    let posts = futures::future::join_all((0..CALLS).map(|i| {
        let call = inbound_params(&format!("CA{i:032}"), &seeded.e164);
        let w = &w;
        async move { w.post_signed(INBOUND, &call).await.0 }
    }));
    let kill_soon = async {
        // Kill as soon as the worker is mid-way, with messages in flight.
        assert!(
            eventually(Duration::from_secs(20), || async {
                w.scalar("SELECT count(*) FROM runtime_dispatches").await >= 1
            })
            .await,
            "the worker never started dispatching"
        );
        worker.start_kill().expect("SIGKILL");
    };
    let (statuses, ()) = tokio::join!(posts, kill_soon);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let _ = worker.wait().await;
    let killed_at = w.scalar("SELECT count(*) FROM runtime_dispatches").await;
    eprintln!("dispatches when the worker was killed: {killed_at} of {CALLS}");

    let mut restarted = w.spawn_worker_binary();
    let calls = CALLS as i64;
    assert!(
        eventually(Duration::from_secs(60), || async {
            w.scalar("SELECT count(*) FROM runtime_dispatches").await == calls
                && w.scalar(
                    "SELECT count(*) FROM call_events WHERE needs_publish AND (published_at IS NULL OR processed_at IS NULL)",
                )
                .await
                    == 0
        })
        .await,
        "dispatches: {} (killed at {killed_at})",
        w.scalar("SELECT count(*) FROM runtime_dispatches").await
    );
    assert_eq!(w.scalar("SELECT count(*) FROM call_sessions").await, calls);
    assert_eq!(
        w.scalar("SELECT count(*) FROM call_events WHERE type = 'runtime.handoff_requested'")
            .await,
        calls
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            w.stream_messages(&w.subjects.runtime_handoffs_stream())
                .await
                == CALLS as u64
        })
        .await,
        "handoffs in stream: {}",
        w.stream_messages(&w.subjects.runtime_handoffs_stream())
            .await
    );
    restarted.kill().await.expect("kill");
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn bad_signature_publishes_nothing(pool: PgPool) {
    let w = world(pool).await;
    let seeded = seed_number(&w.pool, "+14155550203").await;
    let mut worker = w.spawn_worker_binary();
    let call = inbound_params("CA00000000000000000000000000000203", &seeded.e164);
    let (status, _) = w.post(INBOUND, &call, "RSOYDt4T1cUTdK1PDd93/VVr8B8=").await;
    assert_eq!(status, 403);
    // A signed call afterwards goes through, so the pipeline was live.
    let good = inbound_params("CA00000000000000000000000000000204", &seeded.e164);
    assert_eq!(w.post_signed(INBOUND, &good).await.0, 200);
    assert!(
        eventually(Duration::from_secs(20), || async {
            w.stream_messages(&w.subjects.runtime_handoffs_stream())
                .await
                == 1
        })
        .await
    );
    assert_eq!(w.scalar("SELECT count(*) FROM call_sessions").await, 1);
    assert_eq!(w.scalar("SELECT count(*) FROM runtime_dispatches").await, 1);
    // The work-queue stream drops the one accepted call once it is acked.
    assert!(
        eventually(Duration::from_secs(10), || async {
            w.stream_messages(&w.subjects.calls_stream()).await == 0
        })
        .await
    );
    worker.kill().await.expect("kill");
    w.delete_streams().await;
}
