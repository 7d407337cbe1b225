//! Secrets at rest: integration secrets are bound to their tenant and row,
//! and rows sealed under the older binding are resealed by the api's
//! start-up step (`api::reseal`). End to end through the api, NATS and the
//! automation-worker, against the fake n8n.

use serde_json::{Value, json};
use shared::auth::Role;
use shared::automation::{integration_secret_aad, legacy_integration_secret_aad};
use shared::crypto::{Sealed, SecretBox};
use sqlx::PgPool;
use uuid::Uuid;

use crate::automation_support::{
    BEARER_SECRET, FakeN8n, Seed, ToolSpec, insert_integration, insert_tool, seed, start_worker,
};
use crate::helpers::{TestApp, spawn_app, status_json};

async fn execute(app: &TestApp, s: &Seed, tool_id: Uuid) -> (u16, Value) {
    status_json(
        app.post(
            &format!("/internal/automation/tools/{tool_id}/execute"),
            Some(&app.token(s.tenant_id, Role::InternalOperator)),
            &json!({"call_id": s.call_id, "input_json": {"order_id": "A-123"}}),
        )
        .await,
    )
    .await
}

/// The execution's recorded status, error code and attempts.
async fn recorded(pool: &PgPool, out: &Value) -> (String, Option<String>, i32) {
    let id: Uuid = out["execution_id"]
        .as_str()
        .expect("execution_id")
        .parse()
        .expect("uuid");
    sqlx::query_as("SELECT status, error_code, attempts FROM tool_executions WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("execution row")
}

fn secret_box(app: &TestApp) -> SecretBox {
    SecretBox::new(&app.config.encryption.key(&app.config.common).expect("key"))
}

async fn sealed_secret(pool: &PgPool, integration_id: Uuid) -> (Sealed, i16) {
    let (ciphertext, nonce, key_id, version): (Vec<u8>, Vec<u8>, String, i16) = sqlx::query_as(
        "SELECT secret_ciphertext, secret_nonce, secret_key_id, secret_aad_version
         FROM integrations WHERE id = $1",
    )
    .bind(integration_id)
    .fetch_one(pool)
    .await
    .expect("integration");
    (
        Sealed {
            ciphertext,
            nonce,
            key_id,
        },
        version,
    )
}

/// A secret sealed for tenant A's integration does not open in tenant B:
/// neither the row moved into B as it is, nor its ciphertext copied into
/// one of B's rows. The execution fails with `secret` (502, recorded, no
/// attempt), and the secret reaches no one; in its own tenant it still works.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_integration_secret_does_not_open_in_another_tenant(pool: PgPool) {
    let app = spawn_app(pool).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let a = seed(&app.pool).await;
    let b = seed(&app.pool).await;
    let base = format!("{}/bearer", n8n.base);
    let moved = insert_integration(
        &app,
        a.tenant_id,
        &base,
        "bearer",
        None,
        Some(BEARER_SECRET),
    )
    .await;
    sqlx::query("UPDATE integrations SET tenant_id = $2 WHERE id = $1")
        .bind(moved)
        .bind(b.tenant_id)
        .execute(&app.pool)
        .await
        .expect("move the row");
    let source = insert_integration(
        &app,
        a.tenant_id,
        &base,
        "bearer",
        None,
        Some(BEARER_SECRET),
    )
    .await;
    let copied = insert_integration(
        &app,
        b.tenant_id,
        &base,
        "bearer",
        None,
        Some("b-own-token"),
    )
    .await;
    sqlx::query(
        "UPDATE integrations c SET secret_ciphertext = s.secret_ciphertext,
                secret_nonce = s.secret_nonce, secret_key_id = s.secret_key_id
         FROM integrations s WHERE c.id = $1 AND s.id = $2",
    )
    .bind(copied)
    .bind(source)
    .execute(&app.pool)
    .await
    .expect("copy the secret");

    for (name, integration) in [("moved_t", moved), ("copied_t", copied)] {
        let tool = insert_tool(
            &app.pool,
            b.tenant_id,
            Some(integration),
            ToolSpec::new(name, "ok"),
        )
        .await;
        let (status, out) = execute(&app, &b, tool).await;
        assert_eq!(status, 502, "{name}: {out}");
        assert_eq!(out["status"], "failed", "{name}: {out}");
        assert_eq!(out["error"]["code"], "secret", "{name}: {out}");
        let (st, code, attempts) = recorded(&app.pool, &out).await;
        assert_eq!(
            (st.as_str(), code.as_deref(), attempts),
            ("failed", Some("secret"), 0),
            "{name}"
        );
    }
    assert!(
        n8n.received().is_empty(),
        "{:?}",
        n8n.hits("/bearer/webhook/ok")
    );

    let tool = insert_tool(
        &app.pool,
        a.tenant_id,
        Some(source),
        ToolSpec::new("own_t", "ok"),
    )
    .await;
    let (status, out) = execute(&app, &a, tool).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(n8n.hits("/bearer/webhook/ok"), 1);
    worker.shutdown().await;
}

/// An integration secret sealed under the binding without the tenant
/// (`secret_aad_version` 1) does not open in the worker; the reseal opens
/// it with that binding and seals it bound to its tenant, after which the
/// tool works. A row that does not open is left alone and counted, and a
/// second reseal has nothing left to do.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn legacy_integration_secrets_work_after_the_reseal(pool: PgPool) {
    let app = spawn_app(pool).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let s = seed(&app.pool).await;
    let secrets = secret_box(&app);
    let base = format!("{}/bearer", n8n.base);
    let legacy = Uuid::now_v7();
    let sealed = secrets
        .seal(
            BEARER_SECRET.as_bytes(),
            &legacy_integration_secret_aad(legacy),
        )
        .expect("seal");
    let broken = Uuid::now_v7();
    let no_secret = Uuid::now_v7();
    for (id, auth_type, sealed) in [
        (legacy, "bearer", Some(sealed)),
        (
            broken,
            "bearer",
            Some(Sealed {
                ciphertext: vec![1; 32],
                nonce: vec![2; 12],
                key_id: secrets.key_id().to_owned(),
            }),
        ),
        (no_secret, "none", None),
    ] {
        // As an api without the tenant binding wrote it: version by default.
        sqlx::query(
            "INSERT INTO integrations (id, tenant_id, base_url, auth_type, secret_ciphertext, secret_nonce, secret_key_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(s.tenant_id)
        .bind(&base)
        .bind(auth_type)
        .bind(sealed.as_ref().map(|s| s.ciphertext.clone()))
        .bind(sealed.as_ref().map(|s| s.nonce.clone()))
        .bind(sealed.as_ref().map(|s| s.key_id.clone()))
        .execute(&app.pool)
        .await
        .expect("legacy integration");
    }
    let tool = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(legacy),
        ToolSpec::new("legacy_t", "ok"),
    )
    .await;
    let (status, out) = execute(&app, &s, tool).await;
    assert_eq!(
        (status, &out["error"]["code"]),
        (502, &json!("secret")),
        "{out}"
    );

    let done = api::reseal::reseal_legacy(&app.pool, &secrets)
        .await
        .expect("reseal");
    assert_eq!((done.integrations, done.skipped), (1, 1), "{done:?}");
    let (resealed, version) = sealed_secret(&app.pool, legacy).await;
    assert_eq!(version, 2);
    assert_eq!(
        secrets
            .open(&resealed, &integration_secret_aad(s.tenant_id, legacy))
            .expect("opens under the tenant binding"),
        BEARER_SECRET.as_bytes()
    );
    assert!(
        secrets
            .open(&resealed, &legacy_integration_secret_aad(legacy))
            .is_err()
    );
    let versions: Vec<(Uuid, i16)> = sqlx::query_as(
        "SELECT id, secret_aad_version FROM integrations WHERE id = ANY($1) ORDER BY id",
    )
    .bind(vec![broken, no_secret])
    .fetch_all(&app.pool)
    .await
    .expect("versions");
    assert_eq!(versions, vec![(broken, 1), (no_secret, 2)]);

    let (status, out) = execute(&app, &s, tool).await;
    assert_eq!(status, 200, "{out}");
    let received = n8n.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].headers["authorization"],
        format!("Bearer {BEARER_SECRET}")
    );

    let again = api::reseal::reseal_legacy(&app.pool, &secrets)
        .await
        .expect("reseal again");
    assert_eq!((again.integrations, again.skipped), (0, 1), "{again:?}");
    worker.shutdown().await;
}
