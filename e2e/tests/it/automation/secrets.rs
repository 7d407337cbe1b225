//! Secrets at rest: integration secrets and endpoint header values are
//! sealed bound to their tenant and row, never returned and never sent in
//! clear; rows in an older form (the binding without the tenant, header
//! values in clear) are resealed by the api's start-up step
//! (`api::reseal`). End to end through the api, NATS and the
//! automation-worker, against the fake n8n.

use futures::StreamExt;
use serde_json::{Value, json};
use shared::auth::Role;
use shared::automation::{
    integration_secret_aad, legacy_integration_secret_aad, tool_endpoint_headers_aad,
};
use shared::crypto::{Sealed, SecretBox};
use sqlx::PgPool;
use uuid::Uuid;

use crate::automation::worker::start_worker;
use api::testing::fixtures::{Seed, ToolSpec, insert_integration, insert_tool, seed};
use api::testing::n8n::{BEARER_SECRET, FakeN8n};
use api::testing::{TestApp, spawn_app, status_json};

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

/// Rows in the older forms do not run: an integration secret sealed under
/// the binding without the tenant (`secret_aad_version` 1) does not open in
/// the worker, and header values in clear are never sent. The reseal opens
/// the one and seals it bound to its tenant, seals the other and empties the
/// template, after which both tools work. A row that does not open is left
/// alone and counted, and a second reseal has nothing left to do.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn legacy_rows_work_after_the_reseal(pool: PgPool) {
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
    let plain = insert_integration(
        &app,
        s.tenant_id,
        &format!("{}/plain", n8n.base),
        "none",
        None,
        None,
    )
    .await;
    let clear_tool = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(plain),
        ToolSpec::new("clear_t", "ok"),
    )
    .await;
    let clear = json!({"x-api-token": "legacy-hdr-value", "x-call-id": "{{call_id}}"});
    sqlx::query("UPDATE tool_endpoints SET headers_template = $2 WHERE tool_id = $1")
        .bind(clear_tool)
        .bind(&clear)
        .execute(&app.pool)
        .await
        .expect("clear template");
    let (status, out) = execute(&app, &s, clear_tool).await;
    assert_eq!(
        (status, &out["error"]["code"]),
        (502, &json!("secret")),
        "{out}"
    );
    assert!(
        out["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not sealed")),
        "{out}"
    );
    assert!(n8n.received().is_empty());

    let done = api::reseal::reseal_legacy(&app.pool, &secrets)
        .await
        .expect("reseal");
    assert_eq!(
        (done.integrations, done.endpoints, done.skipped),
        (1, 1, 1),
        "{done:?}"
    );
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

    let (template, names, sealed) = sealed_headers(&app.pool, clear_tool).await;
    assert_eq!(template, json!({}));
    assert_eq!(names, ["x-api-token", "x-call-id"]);
    let opened = secrets
        .open(
            &sealed.expect("sealed"),
            &tool_endpoint_headers_aad(s.tenant_id, clear_tool, plain),
        )
        .expect("opens under the endpoint's binding");
    assert_eq!(
        serde_json::from_slice::<Value>(&opened).expect("json"),
        clear
    );
    assert!(
        !endpoint_row_text(&app.pool, clear_tool)
            .await
            .contains("legacy-hdr-value")
    );

    let (status, out) = execute(&app, &s, tool).await;
    assert_eq!(status, 200, "{out}");
    let (status, out) = execute(&app, &s, clear_tool).await;
    assert_eq!(status, 200, "{out}");
    let received = n8n.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0].headers["authorization"],
        format!("Bearer {BEARER_SECRET}")
    );
    assert_eq!(received[1].headers["x-api-token"], "legacy-hdr-value");
    assert_eq!(received[1].headers["x-call-id"], s.call_id.to_string());

    let again = api::reseal::reseal_legacy(&app.pool, &secrets)
        .await
        .expect("reseal again");
    assert_eq!(
        (again.integrations, again.endpoints, again.skipped),
        (0, 0, 1),
        "{again:?}"
    );
    worker.shutdown().await;
}

const HEADER_CREDENTIAL: &str = "Bearer hdr-cr3dential-0123";

/// The endpoint row as JSON text, every column.
async fn endpoint_row_text(pool: &PgPool, tool_id: Uuid) -> String {
    sqlx::query_scalar("SELECT to_jsonb(e)::text FROM tool_endpoints e WHERE tool_id = $1")
        .bind(tool_id)
        .fetch_one(pool)
        .await
        .expect("endpoint")
}

async fn sealed_headers(pool: &PgPool, tool_id: Uuid) -> (Value, Vec<String>, Option<Sealed>) {
    #[derive(sqlx::FromRow)]
    struct Row {
        headers_template: Value,
        header_names: Vec<String>,
        headers_ciphertext: Option<Vec<u8>>,
        headers_nonce: Option<Vec<u8>>,
        headers_key_id: Option<String>,
    }
    let row: Row = sqlx::query_as(
        "SELECT headers_template, header_names, headers_ciphertext, headers_nonce, headers_key_id
         FROM tool_endpoints WHERE tool_id = $1",
    )
    .bind(tool_id)
    .fetch_one(pool)
    .await
    .expect("endpoint");
    let sealed = match (
        row.headers_ciphertext,
        row.headers_nonce,
        row.headers_key_id,
    ) {
        (Some(ciphertext), Some(nonce), Some(key_id)) => Some(Sealed {
            ciphertext,
            nonce,
            key_id,
        }),
        _ => None,
    };
    (row.headers_template, row.header_names, sealed)
}

/// Header values set through the api are sealed at rest (no column holds
/// them in clear), answered by name only on every read, left out of the
/// audit log, sealed on the bus, and still reach n8n with their
/// placeholders filled.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn endpoint_header_values_are_sealed_at_rest_and_reach_n8n_rendered(pool: PgPool) {
    let app = spawn_app(pool).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let s = seed(&app.pool).await;
    let secrets = secret_box(&app);
    let integration = insert_integration(
        &app,
        s.tenant_id,
        &format!("{}/plain", n8n.base),
        "none",
        None,
        None,
    )
    .await;
    let tool = insert_tool(
        &app.pool,
        s.tenant_id,
        None,
        ToolSpec::new("lookup_order", "ok"),
    )
    .await;
    let token = app.token(s.tenant_id, Role::InternalOperator);
    let template = json!({"Authorization": HEADER_CREDENTIAL, "x-call-id": "{{call_id}}",
                          "x-trace": "t={{trace_id}}"});
    let (status, endpoint) = status_json(
        app.post(
            &format!("/internal/tools/{tool}/endpoints"),
            Some(&token),
            &json!({"integration_id": integration, "webhook_path": "ok", "headers_template": template}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    let redacted = json!([
        {"name": "Authorization", "redacted": true},
        {"name": "x-call-id", "redacted": true},
        {"name": "x-trace", "redacted": true},
    ]);
    assert_eq!(endpoint["headers"], redacted);

    // Every read names the headers only.
    for path in [
        format!("/internal/tools/{tool}"),
        format!("/internal/tools?tenant_id={}", s.tenant_id),
    ] {
        let (status, body) = status_json(app.get(&path, Some(&token)).await).await;
        assert_eq!(status, 200, "{body}");
        let text = body.to_string();
        for value in [
            "hdr-cr3dential",
            "{{call_id}}",
            "{{trace_id}}",
            "headers_template",
        ] {
            assert!(!text.contains(value), "{path} shows {value}: {text}");
        }
        assert!(text.contains("\"x-call-id\""), "{path}: {text}");
    }

    // At rest: the template is empty, the names are in clear, the values
    // only in the ciphertext, which opens under the endpoint's binding.
    let row = endpoint_row_text(&app.pool, tool).await;
    assert!(
        !row.contains("cr3dential") && !row.contains("{{call_id}}"),
        "{row}"
    );
    let (clear, names, sealed) = sealed_headers(&app.pool, tool).await;
    assert_eq!(clear, json!({}));
    assert_eq!(names, ["Authorization", "x-call-id", "x-trace"]);
    let sealed = sealed.expect("sealed header values");
    let opened = secrets
        .open(
            &sealed,
            &tool_endpoint_headers_aad(s.tenant_id, tool, integration),
        )
        .expect("opens under the endpoint's binding");
    assert_eq!(
        serde_json::from_slice::<Value>(&opened).expect("json"),
        template
    );
    let audit: Vec<String> =
        sqlx::query_scalar("SELECT details::text FROM audit_log WHERE tenant_id = $1")
            .bind(s.tenant_id)
            .fetch_all(&app.pool)
            .await
            .expect("audit");
    assert!(audit.iter().any(|d| d.contains("x-call-id")), "{audit:?}");
    assert!(!audit.iter().any(|d| d.contains("cr3dential")), "{audit:?}");

    // On the bus: a plain subscriber sees what the worker gets.
    let mut tap = app
        .nats
        .subscribe(app.subjects.automation_tool_execute())
        .await
        .expect("subscribe");
    app.nats.flush().await.expect("flush");
    let (status, out) = status_json(
        app.post(
            &format!("/internal/automation/tools/{tool}/execute"),
            Some(&token),
            &json!({"call_id": s.call_id, "input_json": {"order_id": "A-123"}, "trace_id": "trace-h-1"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let message = tokio::time::timeout(std::time::Duration::from_secs(5), tap.next())
        .await
        .expect("the request within 5 s")
        .expect("subscription open");
    let payload = String::from_utf8_lossy(&message.payload);
    assert!(payload.contains("headers_ciphertext"), "{payload}");
    assert!(
        !payload.contains("cr3dential") && !payload.contains("{{call_id}}"),
        "{payload}"
    );

    let received = n8n.received();
    assert_eq!(received.len(), 1);
    let headers = &received[0].headers;
    assert_eq!(headers["authorization"], HEADER_CREDENTIAL);
    assert_eq!(headers["x-call-id"], s.call_id.to_string());
    assert_eq!(headers["x-trace"], "t=trace-h-1");
    worker.shutdown().await;
}

/// Sealed header values open only in the row they were sealed for: copied
/// into another tenant's endpoint, or with the endpoint pointed at another
/// integration (another host), the execution fails with `secret` and
/// nothing is sent.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn sealed_header_values_do_not_open_in_another_row(pool: PgPool) {
    let app = spawn_app(pool).await;
    let n8n = FakeN8n::start().await;
    let worker = start_worker(&app).await;
    let a = seed(&app.pool).await;
    let b = seed(&app.pool).await;
    let base = format!("{}/plain", n8n.base);
    let with_headers = |name| {
        let mut spec = ToolSpec::new(name, "ok");
        spec.headers_template = json!({"authorization": HEADER_CREDENTIAL});
        spec
    };
    let a_integration = insert_integration(&app, a.tenant_id, &base, "none", None, None).await;
    let a_other = insert_integration(&app, a.tenant_id, &base, "none", None, None).await;
    let b_integration = insert_integration(&app, b.tenant_id, &base, "none", None, None).await;
    let a_tool = insert_tool(
        &app.pool,
        a.tenant_id,
        Some(a_integration),
        with_headers("a_t"),
    )
    .await;
    let b_tool = insert_tool(
        &app.pool,
        b.tenant_id,
        Some(b_integration),
        with_headers("b_t"),
    )
    .await;
    sqlx::query(
        "UPDATE tool_endpoints c SET headers_ciphertext = s.headers_ciphertext,
                headers_nonce = s.headers_nonce, headers_key_id = s.headers_key_id
         FROM tool_endpoints s WHERE c.tool_id = $1 AND s.tool_id = $2",
    )
    .bind(b_tool)
    .bind(a_tool)
    .execute(&app.pool)
    .await
    .expect("copy the sealed headers");
    let (status, out) = execute(&app, &b, b_tool).await;
    assert_eq!(
        (status, &out["error"]["code"]),
        (502, &json!("secret")),
        "{out}"
    );
    assert_eq!(recorded(&app.pool, &out).await.1.as_deref(), Some("secret"));

    // A's own endpoint works, until it is pointed at another integration.
    let (status, out) = execute(&app, &a, a_tool).await;
    assert_eq!(status, 200, "{out}");
    sqlx::query("UPDATE tool_endpoints SET integration_id = $2 WHERE tool_id = $1")
        .bind(a_tool)
        .bind(a_other)
        .execute(&app.pool)
        .await
        .expect("repoint");
    let (status, out) = execute(&app, &a, a_tool).await;
    assert_eq!(
        (status, &out["error"]["code"]),
        (502, &json!("secret")),
        "{out}"
    );
    assert_eq!(n8n.received().len(), 1, "only A's own call reached n8n");
    worker.shutdown().await;
}
