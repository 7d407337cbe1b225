//! `/internal/webhook-endpoints` and `/internal/webhook-deliveries`: the
//! endpoint's life (create, read, change, rotate, delete), its checks, and
//! the deliveries it lists, resends and replays. Deliveries themselves are
//! tested end to end with the automation-worker in `e2e/tests/it/webhooks`.

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::support::*;
use api::testing::{TestApp, spawn_app, spawn_app_with};

async fn create(app: &TestApp, token: &str, tenant: Uuid, body: Value) -> (u16, Value) {
    let mut body = body;
    body["tenant_id"] = json!(tenant);
    post(app, "/internal/webhook-endpoints", token, &body).await
}

/// Records `event_type` as the triggers do; the message id, if any endpoint
/// subscribes.
async fn record(pool: &PgPool, tenant: Uuid, event_type: &str) -> Option<Uuid> {
    sqlx::query_scalar("SELECT record_webhook_event($1, $2, '{\"n\": 1}')")
        .bind(tenant)
        .bind(event_type)
        .fetch_one(pool)
        .await
        .expect("record")
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_secret_is_shown_once_and_sealed_at_rest(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("Acme").await;
    let t = tokens(&app, tenant).operator;
    let (s, created) = create(
        &app,
        &t,
        tenant,
        json!({"url": "https://hooks.example.com/calls", "event_types": ["call.ended", "call.answered", "call.ended"],
               "description": "CRM"}),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let secret = created["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(
        created["event_types"],
        json!(["call.answered", "call.ended"])
    );
    assert_eq!(created["disabled"], json!(false));
    let id = id_of(&created);

    let (s, got) = get(&app, &format!("/internal/webhook-endpoints/{id}"), &t).await;
    assert_eq!(s, 200, "{got}");
    assert!(got.get("secret").is_none(), "{got}");
    assert_eq!(got["url"], "https://hooks.example.com/calls");
    let (s, page) = get(
        &app,
        &format!("/internal/webhook-endpoints?tenant_id={tenant}"),
        &t,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    assert!(!page.to_string().contains(&secret));

    // Sealed: neither the secret nor its key bytes are stored in clear.
    let (ciphertext, key_id): (Vec<u8>, String) = sqlx::query_as(
        "SELECT secret_ciphertext, secret_key_id FROM webhook_endpoints WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .expect("row");
    assert!(!key_id.is_empty());
    assert!(
        !ciphertext
            .windows(secret.len())
            .any(|w| w == secret.as_bytes())
    );
    let audit: String = sqlx::query_scalar(
        "SELECT details::text FROM audit_log WHERE action = 'webhook_endpoint.create' AND target_id = $1",
    )
    .bind(id.to_string())
    .fetch_one(&app.pool)
    .await
    .expect("audit entry");
    assert!(
        !audit.contains(&secret) && audit.contains("hooks.example.com"),
        "{audit}"
    );

    // A rotation: a new secret, the old one signs for another 24 hours.
    let (s, rotated) = post(
        &app,
        &format!("/internal/webhook-endpoints/{id}/rotate-secret"),
        &t,
        &json!({}),
    )
    .await;
    assert_eq!(s, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().expect("secret");
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    let (previous, hours): (Option<Vec<u8>>, f64) = sqlx::query_as(
        "SELECT previous_secret_ciphertext,
                date_part('epoch', previous_secret_expires_at - now()) / 3600
         FROM webhook_endpoints WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .expect("row");
    assert_eq!(previous, Some(ciphertext));
    assert!((23.9..=24.0).contains(&hours), "{hours}");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn bad_endpoints_are_refused_with_a_message(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("Acme").await;
    let t = tokens(&app, tenant).operator;
    let types = json!(["call.ended"]);
    for (body, expected) in [
        (
            json!({"url": "https://h.example.com/", "event_types": []}),
            "at least one",
        ),
        (
            json!({"url": "https://h.example.com/", "event_types": ["call.exploded"]}),
            "unknown event type",
        ),
        (
            json!({"url": "not a url", "event_types": types}),
            "url: not a URL",
        ),
        (
            json!({"url": "ftp://h.example.com/", "event_types": types}),
            "scheme ftp",
        ),
        (
            json!({"url": "https://u:p@h.example.com/", "event_types": types}),
            "credentials",
        ),
        (
            json!({"url": "http://127.0.0.1:8080/hook", "event_types": types}),
            "loopback, private",
        ),
        (
            json!({"url": "http://169.254.169.254/latest", "event_types": types}),
            "loopback, private",
        ),
        (
            json!({"url": "http://[::1]/hook", "event_types": types}),
            "loopback, private",
        ),
        (
            json!({"url": "http://10.1.2.3/hook", "event_types": types}),
            "loopback, private",
        ),
        (
            json!({"url": "https://h.example.com/", "event_types": types, "secret": "mine"}),
            "unknown field",
        ),
    ] {
        let (s, answer) = create(&app, &t, tenant, body.clone()).await;
        assert_eq!(s, 400, "{body}: {answer}");
        assert!(answer.to_string().contains(expected), "{body}: {answer}");
    }
    assert_eq!(app.count("webhook_endpoints").await, 0);

    // Where the deployment allows private networks (development), the same
    // setting as the automation-worker's lets them through.
    let dev = spawn_app_with(app.pool.clone(), |c| {
        c.automation_allow_private_networks = true
    })
    .await;
    let (s, created) = create(
        &dev,
        &tokens(&dev, tenant).operator,
        tenant,
        json!({"url": "http://127.0.0.1:8080/hook", "event_types": types}),
    )
    .await;
    assert_eq!(s, 201, "{created}");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_endpoint_changes_disables_and_goes(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("Acme").await;
    let t = tokens(&app, tenant).operator;
    let (_, created) = create(
        &app,
        &t,
        tenant,
        json!({"url": "https://h.example.com/a", "event_types": ["call.ended"]}),
    )
    .await;
    let id = id_of(&created);
    let path = format!("/internal/webhook-endpoints/{id}");

    // Only subscribed types are recorded.
    assert_eq!(record(&app.pool, tenant, "call.answered").await, None);
    assert!(record(&app.pool, tenant, "call.ended").await.is_some());
    let (s, changed) = patch(
        &app,
        &path,
        &t,
        &json!({"event_types": ["call.answered"], "url": "https://h.example.com/b"}),
    )
    .await;
    assert_eq!(s, 200, "{changed}");
    assert_eq!(changed["url"], "https://h.example.com/b");
    assert!(record(&app.pool, tenant, "call.answered").await.is_some());

    // A disabled endpoint gets nothing; enabling it clears its reason and
    // its failure clock.
    let (s, disabled) = patch(
        &app,
        &path,
        &t,
        &json!({"disabled": true, "disabled_reason": "maintenance"}),
    )
    .await;
    assert_eq!(s, 200, "{disabled}");
    assert_eq!(disabled["disabled_reason"], "maintenance");
    assert_eq!(record(&app.pool, tenant, "call.answered").await, None);
    sqlx::query("UPDATE webhook_endpoints SET failing_since = now() WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .expect("failing");
    let (s, enabled) = patch(&app, &path, &t, &json!({"disabled": false})).await;
    assert_eq!(s, 200, "{enabled}");
    assert_eq!(enabled["disabled_reason"], Value::Null);
    assert_eq!(enabled["failing_since"], Value::Null);
    let (s, refused) = patch(&app, &path, &t, &json!({"url": "http://10.0.0.1/"})).await;
    assert_eq!(s, 400, "{refused}");

    let (s, _) = delete(&app, &path, &t).await;
    assert_eq!(s, 204);
    let (s, _) = get(&app, &path, &t).await;
    assert_eq!(s, 404);
    assert_eq!(app.count("webhook_deliveries").await, 0, "cascaded");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn deliveries_page_filter_resend_and_replay(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("Acme").await;
    let t = tokens(&app, tenant).operator;
    let (_, created) = create(
        &app,
        &t,
        tenant,
        json!({"url": "https://h.example.com/a", "event_types": ["call.ended", "call.answered"]}),
    )
    .await;
    let id = id_of(&created);
    let deliveries = format!("/internal/webhook-endpoints/{id}/deliveries");
    for _ in 0..3 {
        record(&app.pool, tenant, "call.ended")
            .await
            .expect("recorded");
    }
    record(&app.pool, tenant, "call.answered")
        .await
        .expect("recorded");
    // Two of the call.ended deliveries failed for good, with an attempt each.
    let failed: Vec<Uuid> = sqlx::query_scalar(
        "WITH f AS (
             UPDATE webhook_deliveries SET status = 'failed', attempts = 1
             WHERE id IN (SELECT d.id FROM webhook_deliveries d JOIN webhook_messages m ON m.id = d.message_id
                          WHERE m.event_type = 'call.ended' ORDER BY d.id LIMIT 2)
             RETURNING id, tenant_id)
         INSERT INTO webhook_attempts (id, tenant_id, delivery_id, attempted_at, http_status, error, latency_ms)
         SELECT gen_random_uuid(), tenant_id, id, now(), 410, 'the endpoint answered 410 Gone', 12 FROM f
         RETURNING delivery_id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("fail two");

    let (s, page) = get(&app, &format!("{deliveries}?limit=3"), &t).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(3));
    let cursor = page["next_cursor"].as_str().expect("more");
    let (_, rest) = get(&app, &format!("{deliveries}?limit=3&cursor={cursor}"), &t).await;
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["next_cursor"], Value::Null);

    let (_, only_failed) = get(&app, &format!("{deliveries}?status=failed"), &t).await;
    let items = only_failed["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    for item in items {
        assert_eq!(item["event_type"], "call.ended");
        assert!(item["webhook_id"].as_str().expect("id").starts_with("msg_"));
        assert_eq!(item["attempts"][0]["http_status"], 410, "{item}");
        assert_eq!(item["attempts"][0]["latency_ms"], 12);
    }
    let (_, answered) = get(&app, &format!("{deliveries}?event_type=call.answered"), &t).await;
    assert_eq!(answered["items"].as_array().map(Vec::len), Some(1));
    let (s, bad) = get(&app, &format!("{deliveries}?status=lost"), &t).await;
    assert_eq!(s, 400, "{bad}");

    // Resend: a new delivery of the same message, due now.
    let (s, resent) = post(
        &app,
        &format!("/internal/webhook-deliveries/{}/resend", failed[0]),
        &t,
        &json!({}),
    )
    .await;
    assert_eq!(s, 202, "{resent}");
    assert_eq!(resent["status"], "pending");
    assert_ne!(id_of(&resent), failed[0]);
    let same_message: bool = sqlx::query_scalar(
        "SELECT (SELECT message_id FROM webhook_deliveries WHERE id = $1)
              = (SELECT message_id FROM webhook_deliveries WHERE id = $2)",
    )
    .bind(failed[0])
    .bind(id_of(&resent))
    .fetch_one(&app.pool)
    .await
    .expect("compare");
    assert!(same_message);

    // Replay: only the failed message nothing else is delivering.
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let (s, replayed) = post(
        &app,
        &format!("/internal/webhook-endpoints/{id}/replay"),
        &t,
        &json!({"since": since}),
    )
    .await;
    assert_eq!(s, 202, "{replayed}");
    assert_eq!(replayed["deliveries"], 1);
    let (s, _) = post(
        &app,
        &format!("/internal/webhook-endpoints/{id}/replay"),
        &t,
        &json!({"since": chrono::Utc::now() - chrono::Duration::days(40)}),
    )
    .await;
    assert_eq!(s, 400);

    // Nothing is sent to a disabled endpoint.
    patch(
        &app,
        &format!("/internal/webhook-endpoints/{id}"),
        &t,
        &json!({"disabled": true}),
    )
    .await;
    let (s, refused) = post(
        &app,
        &format!("/internal/webhook-deliveries/{}/resend", failed[1]),
        &t,
        &json!({}),
    )
    .await;
    assert_eq!(s, 409, "{refused}");
}
