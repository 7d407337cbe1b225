use base64::Engine;
use serde_json::json;
use shared::auth::Role;
use shared::crypto::SecretBox;
use sqlx::PgPool;
use uuid::Uuid;

use api::testing::{TestApp, spawn_app, status_json};

const CLAIM: &str = "/internal/runtime/dispatches/claim";

/// A call with a pending dispatch expiring in `ttl_secs` (negative: already
/// expired); returns the dispatch id and the plaintext join token.
async fn seed_dispatch(app: &TestApp, tenant_id: Uuid, ttl_secs: i64) -> (Uuid, [u8; 32]) {
    let call_id = Uuid::now_v7();
    let dispatch_id = Uuid::now_v7();
    sqlx::query("INSERT INTO call_sessions (id, tenant_id, call_sid) VALUES ($1, $2, $3)")
        .bind(call_id)
        .bind(tenant_id)
        .bind(format!("CA{}", call_id.simple()))
        .execute(&app.pool)
        .await
        .expect("session");
    let key = app.config.encryption.key(&app.config.common).expect("key");
    let token = shared::crypto::random_bytes::<32>();
    let sealed = SecretBox::new(&key)
        .seal(&token, &shared::calls::join_token_aad(dispatch_id))
        .expect("seal");
    sqlx::query(
        "INSERT INTO runtime_dispatches (id, tenant_id, call_id, status, join_token_ciphertext,
             join_token_nonce, join_token_key_id, expires_at)
         VALUES ($1, $2, $3, 'pending', $4, $5, $6, now() + make_interval(secs => $7))",
    )
    .bind(dispatch_id)
    .bind(tenant_id)
    .bind(call_id)
    .bind(&sealed.ciphertext)
    .bind(&sealed.nonce)
    .bind(&sealed.key_id)
    .bind(ttl_secs as f64)
    .execute(&app.pool)
    .await
    .expect("dispatch");
    (dispatch_id, token)
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn claim_returns_the_token_once_and_scrubs_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("acme").await;
    let (dispatch_id, token) = seed_dispatch(&app, tenant, 60).await;
    let bearer = app.token(tenant, Role::InternalOperator);

    let (status, body) = status_json(
        app.post(CLAIM, Some(&bearer), &json!({"dispatch_id": dispatch_id}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let returned = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body["join_token"].as_str().expect("token"))
        .expect("base64url");
    assert_eq!(returned, token);
    assert_eq!(body["claimed_by"], "test-user");

    type Row = (String, Option<Vec<u8>>, Option<Vec<u8>>, Option<String>);
    let (state, ct, nonce, by): Row =
        sqlx::query_as(
            "SELECT status, join_token_ciphertext, join_token_nonce, claimed_by FROM runtime_dispatches WHERE id = $1",
        )
        .bind(dispatch_id)
        .fetch_one(&app.pool)
        .await
        .expect("row");
    assert_eq!(state, "claimed");
    assert!(ct.is_none() && nonce.is_none());
    assert_eq!(by.as_deref(), Some("test-user"));
    assert_eq!(
        app.count("audit_log WHERE action = 'runtime_dispatch.claim'")
            .await,
        1
    );

    let (status, body) = status_json(
        app.post(CLAIM, Some(&bearer), &json!({"dispatch_id": dispatch_id}))
            .await,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_claimed");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn expired_is_410_and_foreign_or_unknown_is_404(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("acme").await;
    let other = app.create_tenant("other").await;
    let bearer = app.token(tenant, Role::InternalAdmin);

    let (stale, _) = seed_dispatch(&app, tenant, -1).await;
    let (status, body) = status_json(
        app.post(CLAIM, Some(&bearer), &json!({"dispatch_id": stale}))
            .await,
    )
    .await;
    assert_eq!(status, 410, "{body}");
    // After the expiry job too.
    sqlx::raw_sql(include_str!(
        "../../../../scripts/jobs/expire_runtime_dispatches.sql"
    ))
    .execute(&app.pool)
    .await
    .expect("expire");
    let (status, _) = status_json(
        app.post(CLAIM, Some(&bearer), &json!({"dispatch_id": stale}))
            .await,
    )
    .await;
    assert_eq!(status, 410);

    let (foreign, _) = seed_dispatch(&app, other, 60).await;
    let (status, _) = status_json(
        app.post(CLAIM, Some(&bearer), &json!({"dispatch_id": foreign}))
            .await,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = status_json(
        app.post(
            CLAIM,
            Some(&bearer),
            &json!({"dispatch_id": Uuid::now_v7()}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    // The foreign dispatch is untouched.
    let state: String = sqlx::query_scalar("SELECT status FROM runtime_dispatches WHERE id = $1")
        .bind(foreign)
        .fetch_one(&app.pool)
        .await
        .expect("row");
    assert_eq!(state, "pending");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn claim_needs_an_internal_role_and_the_own_tenant(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("acme").await;
    let (dispatch_id, _) = seed_dispatch(&app, tenant, 60).await;
    let body = json!({"dispatch_id": dispatch_id});
    let (status, _) = status_json(app.post(CLAIM, None, &body).await).await;
    assert_eq!(status, 401);
    let viewer = app.token(tenant, Role::ClientViewer);
    let (status, _) = status_json(app.post(CLAIM, Some(&viewer), &body).await).await;
    assert_eq!(status, 403);
    let operator = app.token(tenant, Role::InternalOperator);
    let (status, _) = status_json(
        app.post(
            CLAIM,
            Some(&operator),
            &json!({"dispatch_id": dispatch_id, "tenant_id": Uuid::now_v7()}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = status_json(
        app.post(CLAIM, Some(&operator), &json!({"dispatch_id": "nope"}))
            .await,
    )
    .await;
    assert_eq!(status, 400);
    // Still claimable after all of that.
    let (status, _) = status_json(app.post(CLAIM, Some(&operator), &body).await).await;
    assert_eq!(status, 200);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn fifty_concurrent_claims_yield_exactly_one_token(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("acme").await;
    let (dispatch_id, token) = seed_dispatch(&app, tenant, 60).await;
    let bearer = app.token(tenant, Role::InternalOperator);
    let body = json!({"dispatch_id": dispatch_id});
    let results = futures::future::join_all(
        (0..50).map(|_| async { status_json(app.post(CLAIM, Some(&bearer), &body).await).await }),
    )
    .await;
    let winners: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(results.iter().filter(|(s, _)| *s == 409).count(), 49);
    let returned = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(winners[0].1["join_token"].as_str().expect("token"))
        .expect("base64url");
    assert_eq!(returned, token);
}
