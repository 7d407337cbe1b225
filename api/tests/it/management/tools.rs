use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::support::*;
use api::testing::spawn_app;

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn tools_need_a_good_name_and_a_compiling_schema(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("Acme").await;
    let t = tokens(&app, tenant).operator;
    let schema = json!({"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]});
    let (s, tool) = post(&app, "/internal/tools", &t,
        &json!({"tenant_id": tenant, "name": "lookup_order", "description": "Finds an order", "input_schema": schema})).await;
    assert_eq!(s, 201, "{tool}");
    assert_eq!(tool["input_schema"], schema);
    assert!(tool["endpoint"].is_null());

    let before = snapshot(&app.pool).await;
    let (s, body) = post(
        &app,
        "/internal/tools",
        &t,
        &json!({"tenant_id": tenant, "name": "lookup_order", "input_schema": {}}),
    )
    .await;
    assert_eq!(s, 409, "{body}");
    for (body, field) in [
        (
            json!({"tenant_id": tenant, "name": "Lookup", "input_schema": {}}),
            "name",
        ),
        (
            json!({"tenant_id": tenant, "name": "9x", "input_schema": {}}),
            "name",
        ),
        (
            json!({"tenant_id": tenant, "name": format!("a{}", "b".repeat(64)), "input_schema": {}}),
            "name",
        ),
        (json!({"tenant_id": tenant, "name": "ok"}), "input_schema"),
        (
            json!({"tenant_id": tenant, "name": "ok", "input_schema": "object"}),
            "input_schema",
        ),
        (
            json!({"tenant_id": tenant, "name": "ok", "input_schema": {"type": 12}}),
            "input_schema",
        ),
        (
            json!({"tenant_id": tenant, "name": "ok", "input_schema": {"type": "object", "minProperties": -1}}),
            "input_schema",
        ),
        // Remote references are refused, never fetched.
        (
            json!({"tenant_id": tenant, "name": "ok", "input_schema": {"$ref": "http://127.0.0.1:9/schema.json"}}),
            "input_schema",
        ),
        (
            json!({"tenant_id": tenant, "name": "ok", "input_schema": {}, "description": "x".repeat(2001)}),
            "description",
        ),
    ] {
        let (s, resp) = post(&app, "/internal/tools", &t, &body).await;
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
    // The compiler's own message reaches the client.
    let (_, resp) = post(
        &app,
        "/internal/tools",
        &t,
        &json!({"tenant_id": tenant, "name": "ok", "input_schema": {"type": 12}}),
    )
    .await;
    let message = resp["error"]["message"].as_str().expect("m");
    assert!(message.contains("12"), "{message}");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn endpoints_link_a_tool_to_the_tenants_integration(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = seed(&app, "A", "+14155550100").await;
    let b = seed(&app, "B", "+14155550101").await;
    let t = &a.tokens.operator;
    let path = format!("/internal/tools/{}/endpoints", a.tool);

    let (s, e) = post(
        &app,
        &path,
        t,
        &json!({"integration_id": a.integration, "webhook_path": "/webhook/lookup",
        "headers_template": {"x-call-id": "{{call_id}}"}}),
    )
    .await;
    assert_eq!(s, 201, "{e}");
    // Header values are write-only: the answer names the headers only.
    assert_eq!(
        e["headers"],
        json!([{"name": "x-call-id", "redacted": true}])
    );
    assert!(e.get("headers_template").is_none(), "{e}");
    assert!(!e.to_string().contains("{{call_id}}"), "{e}");
    assert_eq!(
        (
            e["method"].as_str(),
            e["timeout_ms"].as_i64(),
            e["max_retries"].as_i64()
        ),
        (Some("POST"), Some(8000), Some(2))
    );
    let first_id = id_of(&e);
    // A second call replaces the tool's one endpoint.
    let (s, e) = post(
        &app,
        &path,
        t,
        &json!({"integration_id": a.integration, "webhook_path": "/webhook/v2",
        "method": "GET", "headers_template": {}, "timeout_ms": 1000, "max_retries": 0}),
    )
    .await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(id_of(&e), first_id);
    assert_eq!(e["headers"], json!([]));
    assert_eq!(
        (e["webhook_path"].as_str(), e["method"].as_str()),
        (Some("/webhook/v2"), Some("GET"))
    );
    let (s, tool) = get(&app, &format!("/internal/tools/{}", a.tool), t).await;
    assert_eq!(s, 200, "{tool}");
    assert_eq!(tool["endpoint"]["webhook_path"], "/webhook/v2");
    let (s, page) = get(&app, &format!("/internal/tools?tenant_id={}", a.tenant), t).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"][0]["endpoint"]["id"], first_id.to_string());

    let before = snapshot(&app.pool).await;
    // Another tenant's integration or tool: 404.
    let (s, _) = post(
        &app,
        &path,
        t,
        &json!({"integration_id": b.integration, "webhook_path": "/w"}),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = post(
        &app,
        &format!("/internal/tools/{}/endpoints", b.tool),
        t,
        &json!({"integration_id": a.integration, "webhook_path": "/w"}),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = post(
        &app,
        &format!("/internal/tools/{}/endpoints", Uuid::new_v4()),
        t,
        &json!({"integration_id": a.integration, "webhook_path": "/w"}),
    )
    .await;
    assert_eq!(s, 404);
    for (body, field) in [
        (
            json!({"integration_id": a.integration, "webhook_path": "https://evil.example/x"}),
            "webhook_path",
        ),
        (
            json!({"integration_id": a.integration, "webhook_path": ""}),
            "webhook_path",
        ),
        (
            json!({"integration_id": a.integration, "webhook_path": "/w", "method": "TRACE"}),
            "method",
        ),
        (
            json!({"integration_id": a.integration, "webhook_path": "/w", "timeout_ms": 50}),
            "timeout_ms",
        ),
        (
            json!({"integration_id": a.integration, "webhook_path": "/w", "max_retries": 11}),
            "max_retries",
        ),
        (
            json!({"integration_id": a.integration, "webhook_path": "/w", "headers_template": []}),
            "headers_template",
        ),
        (
            json!({"integration_id": a.integration, "webhook_path": "/w", "headers_template": {"x": 1}}),
            "headers_template",
        ),
        (
            json!({"integration_id": a.integration, "webhook_path": "/w", "headers_template": {"bad header": "v"}}),
            "headers_template",
        ),
        // Framing headers: the worker sets them.
        (
            json!({"integration_id": a.integration, "webhook_path": "/w", "headers_template": {"Host": "internal.example"}}),
            "Host",
        ),
        (
            json!({"integration_id": a.integration, "webhook_path": "/w", "headers_template": {"transfer-encoding": "chunked"}}),
            "transfer-encoding",
        ),
        (json!({"webhook_path": "/w"}), "integration_id"),
    ] {
        let (s, resp) = post(&app, &path, t, &body).await;
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
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn integrations_are_listed_without_secrets(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = seed(&app, "A", "+14155550100").await;
    let b = seed(&app, "B", "+14155550101").await;
    let t = &a.tokens.operator;
    let (s, page) = get(
        &app,
        &format!("/internal/integrations?tenant_id={}", a.tenant),
        t,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item["id"], a.integration.to_string());
    assert_eq!(item["has_secret"], true);
    assert_eq!(item["header_name"], "x-api-key");
    let text = page.to_string();
    for secret in [
        "secret_ciphertext",
        "secret_nonce",
        "secret_key_id",
        "deadbeef",
        "ciphertext",
        "nonce",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let (s, one) = get(
        &app,
        &format!("/internal/integrations/{}", a.integration),
        t,
    )
    .await;
    assert_eq!(s, 200, "{one}");
    assert!(one.get("secret_ciphertext").is_none());
    let (s, _) = get(
        &app,
        &format!("/internal/integrations/{}", b.integration),
        t,
    )
    .await;
    assert_eq!(s, 404);
}
