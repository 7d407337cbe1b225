use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::support::*;
use api::testing::spawn_app;

async fn call_rows(pool: &PgPool, call: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM call_sessions WHERE id = $1)
              + (SELECT count(*) FROM transcript_segments WHERE call_id = $1)
              + (SELECT count(*) FROM recordings WHERE call_id = $1)
              + (SELECT count(*) FROM call_events WHERE call_id = $1)",
    )
    .bind(call)
    .fetch_one(pool)
    .await
    .expect("count")
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_held_call_is_not_deleted_until_released(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = seed(&app, "A", "+14155550100").await;
    let t = &a.tokens;
    let call_path = format!("/internal/calls/{}", a.call);
    assert_eq!(call_rows(&app.pool, a.call).await, 4);

    // The seed placed a hold on the call: 409 naming it, nothing deleted.
    let (s, body) = delete(&app, &call_path, &t.operator).await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["error"]["code"], "legal_hold");
    let message = body["error"]["message"].as_str().expect("m");
    assert!(
        message.contains(&a.hold.to_string()) && message.contains("litigation"),
        "{message}"
    );
    assert_eq!(call_rows(&app.pool, a.call).await, 4);

    // A tenant-wide hold covers every call, even after the call's own hold goes.
    let (s, tenant_hold) = post(
        &app,
        "/internal/legal-holds",
        &t.admin,
        &json!({"tenant_id": a.tenant, "reason": "regulator request"}),
    )
    .await;
    assert_eq!(s, 201, "{tenant_hold}");
    assert!(tenant_hold["call_id"].is_null());
    assert_eq!(tenant_hold["active"], true);
    let (s, released) = post(
        &app,
        &format!("/internal/legal-holds/{}/release", a.hold),
        &t.admin,
        &json!({}),
    )
    .await;
    assert_eq!(s, 200, "{released}");
    assert_eq!(released["active"], false);
    assert_eq!(released["released_by"], "test-user");
    let (s, body) = post(
        &app,
        &format!("/internal/legal-holds/{}/release", a.hold),
        &t.admin,
        &json!({}),
    )
    .await;
    assert_eq!(s, 409, "{body}");
    let (s, body) = delete(&app, &call_path, &t.operator).await;
    assert_eq!(s, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains(&id_of(&tenant_hold).to_string()),
        "{body}"
    );

    // Released: the call goes with its transcript, recordings and events.
    let (s, _) = post(
        &app,
        &format!("/internal/legal-holds/{}/release", id_of(&tenant_hold)),
        &t.admin,
        &json!({}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, deleted) = delete(&app, &call_path, &t.operator).await;
    assert_eq!(s, 200, "{deleted}");
    assert_eq!(
        (
            deleted["transcript_segments"].as_i64(),
            deleted["recordings"].as_i64(),
            deleted["call_events"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(call_rows(&app.pool, a.call).await, 0);
    let (s, _) = delete(&app, &call_path, &t.operator).await;
    assert_eq!(s, 404);
    // The hold records outlive the call.
    let (s, page) = get(
        &app,
        &format!("/internal/legal-holds?tenant_id={}", a.tenant),
        &t.operator,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"].as_array().expect("items").len(), 2);
    let (_, active) = get(
        &app,
        &format!("/internal/legal-holds?tenant_id={}&active=true", a.tenant),
        &t.operator,
    )
    .await;
    assert_eq!(active["items"], json!([]));

    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log WHERE tenant_id = $1 AND target_type IN ('legal_hold', 'call') ORDER BY created_at, id")
        .bind(a.tenant)
        .fetch_all(&app.pool)
        .await
        .expect("audit");
    assert_eq!(
        actions,
        [
            "legal_hold.create",
            "legal_hold.create",
            "legal_hold.release",
            "legal_hold.release",
            "call.delete"
        ]
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn holds_are_checked_per_tenant_and_for_admins(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = seed(&app, "A", "+14155550100").await;
    let b = seed(&app, "B", "+14155550101").await;
    let before = snapshot(&app.pool).await;
    // Another tenant's call: 404 like a missing one.
    let (s1, foreign) = post(
        &app,
        "/internal/legal-holds",
        &a.tokens.admin,
        &json!({"tenant_id": a.tenant, "call_id": b.call, "reason": "r"}),
    )
    .await;
    let (s2, missing) = post(
        &app,
        "/internal/legal-holds",
        &a.tokens.admin,
        &json!({"tenant_id": a.tenant, "call_id": Uuid::new_v4(), "reason": "r"}),
    )
    .await;
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(foreign, missing);
    for (body, field) in [
        (json!({"tenant_id": a.tenant, "reason": ""}), "reason"),
        (json!({"tenant_id": a.tenant}), "reason"),
        (
            json!({"tenant_id": a.tenant, "reason": "r", "call_id": 7}),
            "call_id",
        ),
    ] {
        let (s, resp) = post(&app, "/internal/legal-holds", &a.tokens.admin, &body).await;
        assert_eq!(s, 400, "{body}: {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .expect("m")
                .contains(field),
            "{resp}"
        );
    }
    let (s, _) = post(
        &app,
        "/internal/legal-holds",
        &a.tokens.operator,
        &json!({"tenant_id": a.tenant, "reason": "r"}),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = post(
        &app,
        &format!("/internal/legal-holds/{}/release", a.hold),
        &a.tokens.operator,
        &json!({}),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = post(
        &app,
        &format!("/internal/legal-holds/{}/release", b.hold),
        &a.tokens.admin,
        &json!({}),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = delete(
        &app,
        &format!("/internal/calls/{}", b.call),
        &a.tokens.admin,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(snapshot(&app.pool).await, before);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_unheld_call_of_a_held_free_tenant_is_deleted_and_others_stay(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = seed(&app, "A", "+14155550100").await;
    let free = insert_call(&app.pool, a.tenant).await;
    let (s, deleted) = delete(&app, &format!("/internal/calls/{free}"), &a.tokens.operator).await;
    assert_eq!(s, 200, "{deleted}");
    assert_eq!(deleted["call_id"], free.to_string());
    assert_eq!(call_rows(&app.pool, free).await, 0);
    // The held call is untouched.
    assert_eq!(call_rows(&app.pool, a.call).await, 4);
}

/// A hold placed while the call is being deleted: either the hold wins (the
/// delete answers 409) or the delete wins (the hold answers 404); never a
/// hold on a deleted call.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_hold_racing_a_delete_never_loses_the_call(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("A").await;
    let t = tokens(&app, tenant);
    for round in 0..6 {
        let call = insert_call(&app.pool, tenant).await;
        let body = if round % 2 == 0 {
            json!({"tenant_id": tenant, "call_id": call, "reason": "race"})
        } else {
            json!({"tenant_id": tenant, "reason": "race, tenant-wide"})
        };
        let hold = post(&app, "/internal/legal-holds", &t.admin, &body);
        let path = format!("/internal/calls/{call}");
        let del = delete(&app, &path, &t.operator);
        let ((hs, hold), (ds, deleted)) = tokio::join!(hold, del);
        let on_call = !body["call_id"].is_null();
        match (on_call, hs, ds) {
            // The hold came first.
            (_, 201, 409) => assert_eq!(call_rows(&app.pool, call).await, 4),
            // The delete came first: a hold on that call finds no call; a
            // tenant-wide hold is placed on what is left.
            (true, 404, 200) | (false, 201, 200) => {
                assert_eq!(call_rows(&app.pool, call).await, 0);
            }
            other => panic!("round {round}: {other:?} {hold} {deleted}"),
        }
        if hs == 201 {
            let (s, _) = post(
                &app,
                &format!("/internal/legal-holds/{}/release", id_of(&hold)),
                &t.admin,
                &json!({}),
            )
            .await;
            assert_eq!(s, 200);
        }
    }
}
