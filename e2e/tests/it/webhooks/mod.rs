//! Tenant event webhooks end to end: events recorded by the triggers in the
//! transaction of their change, relayed over NATS, delivered by the
//! automation-worker to a real local receiver that verifies every request
//! with the Standard Webhooks library; retries, resend and replay, secret
//! rotation, the SSRF guard, one endpoint's trouble kept from another's.

mod bench;
mod events;
mod receiver;

use std::time::Duration;

use serde_json::{Value, json};
use shared::auth::Role;
use sqlx::PgPool;
use uuid::Uuid;

use crate::automation::worker::{Worker, start_worker_with};
use api::testing::fixtures::{Seed, seed};
use api::testing::{TestApp, spawn_app_with, status_json};
use receiver::{Answer, Receiver};

/// The api with private addresses allowed (the receiver is on 127.0.0.1).
async fn app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, |c| c.automation_allow_private_networks = true).await
}

/// A worker with a short schedule: five attempts 100 ms apart.
async fn worker(app: &TestApp) -> Worker {
    worker_with(app, |_| {}).await
}

async fn worker_with(
    app: &TestApp,
    customize: impl FnOnce(&mut automation_worker::config::Config),
) -> Worker {
    start_worker_with(app, |c| {
        c.webhooks.retry_schedule =
            shared::webhooks::RetrySchedule::parse("0s,100ms,100ms,100ms,100ms").expect("schedule");
        c.webhooks.timeout = Duration::from_millis(500);
        c.webhooks.poll_interval = Duration::from_millis(10);
        customize(c);
    })
    .await
}

fn ops(app: &TestApp, tenant: Uuid) -> String {
    app.token(tenant, Role::InternalOperator)
}

/// Creates an endpoint through the api: its id and secret.
async fn endpoint(app: &TestApp, tenant: Uuid, url: &str, types: &[&str]) -> (Uuid, String) {
    let (s, body) = status_json(
        app.post(
            "/internal/webhook-endpoints",
            Some(&ops(app, tenant)),
            &json!({"tenant_id": tenant, "url": url, "event_types": types}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{body}");
    (
        body["id"].as_str().expect("id").parse().expect("uuid"),
        body["secret"].as_str().expect("secret").to_owned(),
    )
}

async fn deliveries(app: &TestApp, tenant: Uuid, endpoint: Uuid) -> Vec<Value> {
    let (s, page) = status_json(
        app.get(
            &format!("/internal/webhook-endpoints/{endpoint}/deliveries"),
            Some(&ops(app, tenant)),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    page["items"].as_array().expect("items").clone()
}

/// Waits until the endpoint has `n` deliveries in `status` (at most 20 s).
async fn wait_deliveries(
    app: &TestApp,
    tenant: Uuid,
    endpoint: Uuid,
    status: &str,
    n: usize,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let all = deliveries(app, tenant, endpoint).await;
        let matching: Vec<Value> = all
            .iter()
            .filter(|d| d["status"] == status)
            .cloned()
            .collect();
        if matching.len() >= n {
            return matching;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} deliveries {status}: {all:?}",
            matching.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The call answers and ends, as the dispatch-worker applies Twilio's
/// callbacks.
async fn answer_and_end(pool: &PgPool, call_id: Uuid) {
    sqlx::query(
        "UPDATE call_sessions SET started_at = now() - interval '50 seconds',
                answered_at = now() - interval '42 seconds' WHERE id = $1",
    )
    .bind(call_id)
    .execute(pool)
    .await
    .expect("answered");
    sqlx::query(
        "UPDATE call_sessions SET status = 'completed', ended_at = now(), duration_seconds = 42 WHERE id = $1",
    )
    .bind(call_id)
    .execute(pool)
    .await
    .expect("ended");
}

/// A message of `tenant` as the triggers record it.
async fn record(pool: &PgPool, tenant: Uuid, event_type: &str, data: Value) -> Uuid {
    sqlx::query_scalar("SELECT record_webhook_event($1, $2, $3)")
        .bind(tenant)
        .bind(event_type)
        .bind(data)
        .fetch_one(pool)
        .await
        .expect("record")
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn call_events_are_delivered_once_and_verify_with_a_standard_webhooks_library(pool: PgPool) {
    let app = app(pool).await;
    let receiver = Receiver::start().await;
    let worker = worker(&app).await;
    let s: Seed = seed(&app.pool).await;
    let (endpoint_id, secret) = endpoint(
        &app,
        s.tenant_id,
        &receiver.url("/crm"),
        &["call.answered", "call.ended"],
    )
    .await;

    answer_and_end(&app.pool, s.call_id).await;
    let received = receiver.wait_for("/crm", 2).await;
    let delivered = wait_deliveries(&app, s.tenant_id, endpoint_id, "succeeded", 2).await;

    let mut types = Vec::new();
    for request in &received {
        assert!(request.verifies_with(&secret), "signature: {request:?}");
        assert!(!request.verifies_with(&shared::webhooks::generate_secret()));
        let body = request.json();
        let event: shared::webhooks::WebhookEvent =
            serde_json::from_value(body.clone()).expect("the documented body");
        shared::webhooks::check_data(&event.event_type, &event.data).expect("its data's schema");
        types.push(event.event_type);
        assert_eq!(body["data"]["call_id"], s.call_id.to_string());
        assert_eq!(body["data"]["tenant_id"], s.tenant_id.to_string());
        assert_eq!(body["data"]["agent_id"], s.agent_id.to_string());
        assert!(request.webhook_id().starts_with("msg_"));
        assert_eq!(request.header("content-type"), "application/json");
        if body["type"] == "call.ended" {
            assert_eq!(body["data"]["status"], "completed");
            assert_eq!(body["data"]["talk_seconds"], 42);
            assert_eq!(body["data"]["ring_seconds"], 8);
            assert_eq!(body["data"]["total_seconds"], 50);
        }
    }
    types.sort();
    assert_eq!(types, ["call.answered", "call.ended"]);
    for delivery in &delivered {
        let attempts = delivery["attempts"].as_array().expect("attempts");
        assert_eq!(attempts.len(), 1, "{delivery}");
        assert_eq!(attempts[0]["http_status"], 200);
    }
    // Delivered once: nothing more arrives while the relay keeps polling.
    let webhook_ids: Vec<String> = received
        .iter()
        .map(receiver::Received::webhook_id)
        .collect();
    assert_ne!(webhook_ids[0], webhook_ids[1]);
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(pending, 0);
    assert_eq!(receiver.received("/crm").len(), 2);
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn failed_attempts_are_retried_until_delivered(pool: PgPool) {
    let app = app(pool).await;
    let receiver = Receiver::start().await;
    let worker = worker(&app).await;
    let tenant = app.create_tenant("Acme").await;
    // A 500, a timeout (the worker gives up after 500 ms), a 429 asking
    // for a second, then 200.
    receiver.script(
        "/flaky",
        [
            Answer::Status(500),
            Answer::Delay(Duration::from_secs(3)),
            Answer::RetryAfter(429, 1),
        ],
    );
    let (endpoint_id, secret) =
        endpoint(&app, tenant, &receiver.url("/flaky"), &["call.ended"]).await;
    record(&app.pool, tenant, "call.ended", json!({"n": 1})).await;

    let delivered = wait_deliveries(&app, tenant, endpoint_id, "succeeded", 1).await;
    let attempts = delivered[0]["attempts"].as_array().expect("attempts");
    let statuses: Vec<Value> = attempts.iter().map(|a| a["http_status"].clone()).collect();
    assert_eq!(
        statuses,
        [json!(500), Value::Null, json!(429), json!(200)],
        "{attempts:?}"
    );
    assert!(
        attempts[1]["error"]
            .as_str()
            .expect("error")
            .contains("timed out"),
        "{attempts:?}"
    );
    // Retry-After: 1 s was honoured over the schedule's 100 ms.
    let at = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(attempts[i]["attempted_at"].as_str().expect("at"))
            .expect("time")
    };
    assert!(
        at(3) - at(2) >= chrono::Duration::milliseconds(900),
        "{attempts:?}"
    );

    // Every attempt carried the same webhook-id and a valid signature.
    let received = receiver.received("/flaky");
    assert_eq!(received.len(), 4);
    assert!(
        received
            .iter()
            .all(|r| r.webhook_id() == received[0].webhook_id())
    );
    assert!(received.iter().all(|r| r.verifies_with(&secret)));
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_refused_connection_is_retried_and_a_client_error_ends_the_chain(pool: PgPool) {
    let app = app(pool).await;
    let receiver = Receiver::start().await;
    // A schedule long enough to move the endpoint before it runs out.
    let worker = worker_with(&app, |c| {
        c.webhooks.retry_schedule =
            shared::webhooks::RetrySchedule::parse("0s,300ms,300ms,300ms,300ms,300ms,300ms,300ms")
                .expect("schedule");
    })
    .await;
    let tenant = app.create_tenant("Acme").await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let (endpoint_id, _) = endpoint(
        &app,
        tenant,
        &format!("http://127.0.0.1:{closed}/gone"),
        &["call.ended"],
    )
    .await;
    record(&app.pool, tenant, "call.ended", json!({"n": 1})).await;
    // Refused, then the endpoint moves to where a receiver listens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while deliveries(&app, tenant, endpoint_id).await[0]["attempts"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(tokio::time::Instant::now() < deadline, "no attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, _) = status_json(
        app.client
            .patch(app.url(&format!("/internal/webhook-endpoints/{endpoint_id}")))
            .bearer_auth(ops(&app, tenant))
            .json(&json!({"url": receiver.url("/moved")}))
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert_eq!(s, 200);
    let delivered = wait_deliveries(&app, tenant, endpoint_id, "succeeded", 1).await;
    let attempts = delivered[0]["attempts"].as_array().expect("attempts");
    assert!(attempts.len() >= 2, "{attempts:?}");
    assert_eq!(attempts[0]["http_status"], Value::Null);
    assert!(
        attempts[0]["error"]
            .as_str()
            .expect("error")
            .contains("connect"),
        "{attempts:?}"
    );
    assert_eq!(attempts.last().expect("last")["http_status"], 200);

    // A 4xx other than 408/409/429 is final.
    receiver.script("/moved", [Answer::Status(422)]);
    record(&app.pool, tenant, "call.ended", json!({"n": 2})).await;
    let failed = wait_deliveries(&app, tenant, endpoint_id, "failed", 1).await;
    assert_eq!(
        failed[0]["attempts"].as_array().map(Vec::len),
        Some(1),
        "{failed:?}"
    );
    assert_eq!(failed[0]["attempts"][0]["http_status"], 422);
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn resend_and_replay_send_what_the_endpoint_missed(pool: PgPool) {
    let app = app(pool).await;
    let receiver = Receiver::start().await;
    let worker = worker(&app).await;
    let tenant = app.create_tenant("Acme").await;
    receiver.script("/down", (0..3).map(|_| Answer::Status(410)));
    let (endpoint_id, secret) =
        endpoint(&app, tenant, &receiver.url("/down"), &["call.ended"]).await;
    for n in 0..3 {
        record(&app.pool, tenant, "call.ended", json!({"n": n})).await;
    }
    let failed = wait_deliveries(&app, tenant, endpoint_id, "failed", 3).await;
    let token = ops(&app, tenant);

    // Resend one: the same message (webhook-id) arrives, delivered.
    let (s, resent) = status_json(
        app.post(
            &format!(
                "/internal/webhook-deliveries/{}/resend",
                failed[0]["id"].as_str().expect("id")
            ),
            Some(&token),
            &json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{resent}");
    let received = receiver.wait_for("/down", 4).await;
    assert_eq!(
        received[3].webhook_id(),
        failed[0]["webhook_id"].as_str().expect("id")
    );
    assert!(received[3].verifies_with(&secret));
    wait_deliveries(&app, tenant, endpoint_id, "succeeded", 1).await;

    // Replay: the two messages never delivered, not the resent one.
    let (s, replayed) = status_json(
        app.post(
            &format!("/internal/webhook-endpoints/{endpoint_id}/replay"),
            Some(&token),
            &json!({"since": chrono::Utc::now() - chrono::Duration::minutes(5)}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{replayed}");
    assert_eq!(replayed["deliveries"], 2);
    let received = receiver.wait_for("/down", 6).await;
    wait_deliveries(&app, tenant, endpoint_id, "succeeded", 3).await;
    let mut ids: Vec<String> = received[3..]
        .iter()
        .map(receiver::Received::webhook_id)
        .collect();
    let mut failed_ids: Vec<String> = failed
        .iter()
        .map(|d| d["webhook_id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    failed_ids.sort();
    assert_eq!(ids, failed_ids, "each missed message once");
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_rotated_secret_signs_beside_the_new_one(pool: PgPool) {
    let app = app(pool).await;
    let receiver = Receiver::start().await;
    let worker = worker(&app).await;
    let tenant = app.create_tenant("Acme").await;
    let (endpoint_id, old) = endpoint(&app, tenant, &receiver.url("/r"), &["call.ended"]).await;
    let (s, rotated) = status_json(
        app.post(
            &format!("/internal/webhook-endpoints/{endpoint_id}/rotate-secret"),
            Some(&ops(&app, tenant)),
            &json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{rotated}");
    let new = rotated["secret"].as_str().expect("secret").to_owned();
    record(&app.pool, tenant, "call.ended", json!({"n": 1})).await;
    let received = receiver.wait_for("/r", 1).await;
    assert_eq!(
        received[0].header("webhook-signature").split(' ').count(),
        2
    );
    assert!(received[0].verifies_with(&new), "new secret");
    assert!(
        received[0].verifies_with(&old),
        "old secret during the overlap"
    );

    // Once the overlap is over, only the new secret signs.
    sqlx::query(
        "UPDATE webhook_endpoints SET previous_secret_expires_at = now() - interval '1 second'",
    )
    .execute(&app.pool)
    .await
    .expect("expire");
    record(&app.pool, tenant, "call.ended", json!({"n": 2})).await;
    let received = receiver.wait_for("/r", 2).await;
    assert_eq!(
        received[1].header("webhook-signature").split(' ').count(),
        1
    );
    assert!(received[1].verifies_with(&new));
    assert!(!received[1].verifies_with(&old));
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_worker_refuses_addresses_its_policy_refuses(pool: PgPool) {
    let app = app(pool).await;
    let receiver = Receiver::start().await;
    // This worker does not allow private networks: a name that resolves
    // to loopback is refused on its resolved address, once, for good.
    let worker = worker_with(&app, |c| c.automation.allow_private_networks = false).await;
    let tenant = app.create_tenant("Acme").await;
    let port = receiver.base.rsplit(':').next().expect("port");
    let (endpoint_id, _) = endpoint(
        &app,
        tenant,
        &format!("http://localhost:{port}/internal"),
        &["call.ended"],
    )
    .await;
    record(&app.pool, tenant, "call.ended", json!({"n": 1})).await;
    let failed = wait_deliveries(&app, tenant, endpoint_id, "failed", 1).await;
    let attempts = failed[0]["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let error = attempts[0]["error"].as_str().expect("error");
    assert!(error.contains("loopback, private"), "{error}");
    assert!(
        !error.contains("127.0.0.1"),
        "the address stays out: {error}"
    );
    assert!(receiver.received("/internal").is_empty());
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_test_route_answers_with_the_attempt(pool: PgPool) {
    let app = app(pool).await;
    let receiver = Receiver::start().await;
    let worker = worker(&app).await;
    let tenant = app.create_tenant("Acme").await;
    // Subscribed to something else: a test event goes all the same.
    let (endpoint_id, secret) = endpoint(&app, tenant, &receiver.url("/t"), &["call.ended"]).await;
    let path = format!("/internal/webhook-endpoints/{endpoint_id}/test");
    let (s, answer) =
        status_json(app.post(&path, Some(&ops(&app, tenant)), &json!({})).await).await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(answer["attempt"]["delivered"], true);
    assert_eq!(answer["attempt"]["http_status"], 200);
    assert_eq!(answer["attempt"]["delivery_status"], "succeeded");
    let received = receiver.received("/t");
    assert_eq!(received.len(), 1, "sent before the answer");
    assert_eq!(received[0].json()["type"], "webhook.test");
    assert!(received[0].verifies_with(&secret));

    // A failing endpoint: the answer says so, and retries follow.
    receiver.script("/t", [Answer::Status(503)]);
    let (s, answer) =
        status_json(app.post(&path, Some(&ops(&app, tenant)), &json!({})).await).await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(answer["attempt"]["delivered"], false);
    assert_eq!(answer["attempt"]["http_status"], 503);
    assert_eq!(answer["attempt"]["delivery_status"], "pending");
    receiver.wait_for("/t", 3).await;
    wait_deliveries(&app, tenant, endpoint_id, "succeeded", 2).await;
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_stuck_endpoint_does_not_hold_up_another_tenant(pool: PgPool) {
    let app = app(pool).await;
    let receiver = Receiver::start().await;
    let worker = worker_with(&app, |c| {
        c.webhooks.timeout = Duration::from_secs(30);
        c.webhooks.endpoint_concurrency = 4;
        c.webhooks.endpoint_queue = 4;
    })
    .await;
    let (stuck_tenant, other_tenant) = (
        app.create_tenant("Stuck").await,
        app.create_tenant("Other").await,
    );
    receiver.script("/stuck", (0..100).map(|_| Answer::Hold));
    let (stuck, _) = endpoint(&app, stuck_tenant, &receiver.url("/stuck"), &["call.ended"]).await;
    let (other, _) = endpoint(&app, other_tenant, &receiver.url("/other"), &["call.ended"]).await;
    for n in 0..40 {
        record(&app.pool, stuck_tenant, "call.ended", json!({"n": n})).await;
    }
    // The stuck endpoint holds its four attempts...
    receiver.wait_for("/stuck", 4).await;
    for n in 0..20 {
        record(&app.pool, other_tenant, "call.ended", json!({"n": n})).await;
    }
    // ...while every one of the other tenant's deliveries gets through.
    wait_deliveries(&app, other_tenant, other, "succeeded", 20).await;
    assert_eq!(
        receiver.received("/stuck").len(),
        4,
        "never more than its concurrency"
    );
    let stuck_done: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND status <> 'pending'",
    )
    .bind(stuck)
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(stuck_done, 0);
    // Let it go: every held delivery completes, and the rest follow.
    receiver.release(100);
    wait_deliveries(&app, stuck_tenant, stuck, "succeeded", 40).await;
    worker.shutdown().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_endpoint_failing_long_enough_is_disabled_with_an_audit_entry(pool: PgPool) {
    let app = app(pool).await;
    let receiver = Receiver::start().await;
    let worker = worker_with(&app, |c| {
        c.webhooks.retry_schedule =
            shared::webhooks::RetrySchedule::parse("0s,400ms,400ms,400ms,400ms").expect("schedule");
        c.webhooks.disable_after = Duration::from_millis(500);
    })
    .await;
    let tenant = app.create_tenant("Acme").await;
    receiver.script("/dead", (0..10).map(|_| Answer::Status(500)));
    let (endpoint_id, _) = endpoint(&app, tenant, &receiver.url("/dead"), &["call.ended"]).await;
    record(&app.pool, tenant, "call.ended", json!({"n": 1})).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let disabled = loop {
        let (_, got) = status_json(
            app.get(
                &format!("/internal/webhook-endpoints/{endpoint_id}"),
                Some(&ops(&app, tenant)),
            )
            .await,
        )
        .await;
        if got["disabled"] == true {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not disabled: {got}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .expect("reason")
            .contains("every attempt failed"),
        "{disabled}"
    );
    let audits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'webhook_endpoint.disable' AND target_id = $1
            AND actor = 'automation-worker' AND tenant_id = $2",
    )
    .bind(endpoint_id.to_string())
    .bind(tenant)
    .fetch_one(&app.pool)
    .await
    .expect("audit");
    assert_eq!(audits, 1);
    // The delivery still pending ends without another request.
    let failed = wait_deliveries(&app, tenant, endpoint_id, "failed", 1).await;
    let attempts = failed[0]["attempts"].as_array().expect("attempts");
    assert_eq!(
        attempts.last().expect("last")["error"],
        "the endpoint is disabled"
    );
    let requests = receiver.received("/dead").len();
    assert_eq!(requests, attempts.len() - 1);
    // Nothing new is recorded for it.
    let none: Option<Uuid> =
        sqlx::query_scalar("SELECT record_webhook_event($1, 'call.ended', '{}')")
            .bind(tenant)
            .fetch_one(&app.pool)
            .await
            .expect("record");
    assert_eq!(none, None);
    worker.shutdown().await;
}
