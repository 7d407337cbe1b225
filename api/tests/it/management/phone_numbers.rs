use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::support::*;
use api::testing::spawn_app;

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn numbers_are_validated_routed_once_and_rerouted(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = seed(&app, "A", "+14155550100").await;
    let b = seed(&app, "B", "+14155550101").await;
    let t = &a.tokens.operator;

    let (s, n) = post(&app, "/internal/phone-numbers", t,
        &json!({"tenant_id": a.tenant, "e164": "+442071838750", "twilio_sid": "PN2", "status": "inactive"})).await;
    assert_eq!(s, 201, "{n}");
    assert!(n["agent_id"].is_null());
    assert_eq!(n["status"], "inactive");
    let number = id_of(&n);

    let before = snapshot(&app.pool).await;
    // Routed anywhere already (here: by tenant B): 409.
    let (s, body) = post(
        &app,
        "/internal/phone-numbers",
        t,
        &json!({"tenant_id": a.tenant, "e164": "+14155550101", "twilio_sid": "PN3"}),
    )
    .await;
    assert_eq!(s, 409, "{body}");
    // An agent of another tenant: 404, like a missing one.
    let (s1, foreign) = post(&app, "/internal/phone-numbers", t,
        &json!({"tenant_id": a.tenant, "e164": "+14155550199", "twilio_sid": "PN4", "agent_id": b.agent})).await;
    let (s2, missing) = post(&app, "/internal/phone-numbers", t,
        &json!({"tenant_id": a.tenant, "e164": "+14155550199", "twilio_sid": "PN4", "agent_id": Uuid::new_v4()})).await;
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(foreign, missing);
    for (body, field) in [
        (
            json!({"tenant_id": a.tenant, "e164": "4155550100", "twilio_sid": "PN"}),
            "e164",
        ),
        (
            json!({"tenant_id": a.tenant, "e164": "+1415", "twilio_sid": "PN"}),
            "e164",
        ),
        (
            json!({"tenant_id": a.tenant, "e164": "+1 415 555 0100", "twilio_sid": "PN"}),
            "e164",
        ),
        (
            json!({"tenant_id": a.tenant, "e164": "+1234567890123456", "twilio_sid": "PN"}),
            "e164",
        ),
        (
            json!({"tenant_id": a.tenant, "e164": 14155550100_i64, "twilio_sid": "PN"}),
            "e164",
        ),
        (
            json!({"tenant_id": a.tenant, "e164": "+14155550177", "twilio_sid": ""}),
            "twilio_sid",
        ),
        (
            json!({"tenant_id": a.tenant, "e164": "+14155550177"}),
            "twilio_sid",
        ),
        (
            json!({"tenant_id": a.tenant, "e164": "+14155550177", "twilio_sid": "PN", "status": "paused"}),
            "status",
        ),
        (
            json!({"tenant_id": a.tenant, "e164": "+14155550177", "twilio_sid": "PN", "agent_id": "x"}),
            "agent_id",
        ),
    ] {
        let (s, resp) = post(&app, "/internal/phone-numbers", t, &body).await;
        assert_eq!(s, 400, "{body}: {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .expect("m")
                .contains(field),
            "{body}: {resp}"
        );
    }
    assert_eq!(snapshot(&app.pool).await, before);

    // Route, reroute to nowhere, and the refusals.
    let path = format!("/internal/phone-numbers/{number}/agent");
    let (s, n) = patch(&app, &path, t, &json!({"agent_id": a.agent})).await;
    assert_eq!(s, 200, "{n}");
    assert_eq!(n["agent_id"], a.agent.to_string());
    let (s, n) = patch(&app, &path, t, &json!({"agent_id": null})).await;
    assert_eq!(s, 200, "{n}");
    assert!(n["agent_id"].is_null());
    let (s, _) = patch(&app, &path, t, &json!({"agent_id": b.agent})).await;
    assert_eq!(s, 404);
    let (s, body) = patch(&app, &path, t, &json!({})).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("agent_id"),
        "{body}"
    );
    let (s, _) = patch(
        &app,
        &format!("/internal/phone-numbers/{}/agent", b.phone_number),
        t,
        &json!({"agent_id": null}),
    )
    .await;
    assert_eq!(s, 404);

    // Listed with the limit of the original service's clients.
    let (s, page) = get(
        &app,
        &format!("/internal/phone-numbers?tenant_id={}&limit=200", a.tenant),
        t,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    let e164s: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|n| n["e164"].as_str().expect("e"))
        .collect();
    assert_eq!(e164s, ["+442071838750", "+14155550100"]);
    let (s, page) = get(
        &app,
        &format!("/internal/phone-numbers?tenant_id={}&limit=1", a.tenant),
        t,
    )
    .await;
    assert_eq!(s, 200);
    assert!(page["next_cursor"].is_string());

    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE target_type = 'phone_number' AND tenant_id = $1",
    )
    .bind(a.tenant)
    .fetch_all(&app.pool)
    .await
    .expect("audit");
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "phone_number.set_agent")
            .count(),
        2
    );
}
