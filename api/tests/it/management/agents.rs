use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::support::*;
use api::testing::spawn_app;

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn agents_are_created_listed_and_read(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("Acme").await;
    let t = tokens(&app, tenant);
    let mut ids = Vec::new();
    for name in ["One", "Two", "Three"] {
        let (s, agent) = post(
            &app,
            "/internal/agents",
            &t.operator,
            &json!({"tenant_id": tenant, "name": name}),
        )
        .await;
        assert_eq!(s, 201, "{agent}");
        assert!(agent["active_version_id"].is_null());
        ids.push(id_of(&agent));
    }
    let (s, page) = get(
        &app,
        &format!("/internal/agents?tenant_id={tenant}&limit=2"),
        &t.operator,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    let names: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|a| a["name"].as_str().expect("n"))
        .collect();
    assert_eq!(names, ["Three", "Two"]);
    let cursor = page["next_cursor"].as_str().expect("cursor");
    let (s, page) = get(
        &app,
        &format!("/internal/agents?tenant_id={tenant}&limit=2&cursor={cursor}"),
        &t.operator,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"][0]["name"], "One");
    assert!(page["next_cursor"].is_null());

    let (s, agent) = get(&app, &format!("/internal/agents/{}", ids[0]), &t.operator).await;
    assert_eq!(s, 200, "{agent}");
    assert_eq!(agent["tenant_id"], tenant.to_string());
    let (s, _) = get(
        &app,
        &format!("/internal/agents/{}", Uuid::new_v4()),
        &t.operator,
    )
    .await;
    assert_eq!(s, 404);

    for (body, field) in [
        (json!({"tenant_id": tenant, "name": ""}), "name"),
        (json!({"tenant_id": tenant}), "name"),
        (json!({"name": "x"}), "tenant_id"),
        (json!({"tenant_id": "nope", "name": "x"}), "tenant_id"),
        (json!({"tenant_id": tenant, "name": ["x"]}), "name"),
    ] {
        let (s, resp) = post(&app, "/internal/agents", &t.operator, &body).await;
        assert_eq!(s, 400, "{body}: {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .expect("m")
                .contains(field),
            "{body}: {resp}"
        );
    }
    let (s, resp) = get(&app, "/internal/agents", &t.operator).await;
    assert_eq!(s, 400, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .expect("m")
            .contains("tenant_id"),
        "{resp}"
    );
    let (s, resp) = get(&app, "/internal/agents/12", &t.operator).await;
    assert_eq!(s, 400, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .expect("m")
            .contains("agent_id"),
        "{resp}"
    );
    let audits: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'agent.create'")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(audits, 3);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn versions_number_publish_freeze_and_activate(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("Acme").await;
    let t = tokens(&app, tenant).operator;
    let (_, agent) = post(
        &app,
        "/internal/agents",
        &t,
        &json!({"tenant_id": tenant, "name": "A"}),
    )
    .await;
    let agent = id_of(&agent);
    let versions = format!("/internal/agents/{agent}/versions");

    let mut ids = Vec::new();
    for n in 1..=3 {
        let (s, v) = post(
            &app,
            &versions,
            &t,
            &json!({"config": {"prompt": format!("v{n}"), "voice": {"id": "x"}}}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["version"], n);
        assert_eq!(v["status"], "draft");
        assert_eq!(v["config"]["voice"]["id"], "x");
        ids.push(id_of(&v));
    }
    for (body, field) in [
        (json!({"config": "prompt"}), "config"),
        (json!({"config": [1]}), "config"),
        (json!({}), "config"),
    ] {
        let (s, resp) = post(&app, &versions, &t, &body).await;
        assert_eq!(s, 400, "{body}: {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .expect("m")
                .contains(field),
            "{resp}"
        );
    }

    // Listed highest first, in pages.
    let (s, page) = get(&app, &format!("{versions}?limit=2"), &t).await;
    assert_eq!(s, 200, "{page}");
    let numbers: Vec<i64> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|v| v["version"].as_i64().expect("n"))
        .collect();
    assert_eq!(numbers, [3, 2]);
    let cursor = page["next_cursor"].as_str().expect("cursor");
    let (_, page) = get(&app, &format!("{versions}?limit=2&cursor={cursor}"), &t).await;
    assert_eq!(page["items"][0]["version"], 1);
    assert!(page["next_cursor"].is_null());

    // A draft's config can change.
    let v1 = format!("{versions}/{}", ids[0]);
    let (s, v) = patch(&app, &v1, &t, &json!({"config": {"prompt": "edited"}})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["config"], json!({"prompt": "edited"}));

    // A draft cannot be activated.
    let (s, body) = post(&app, &format!("{v1}/activate"), &t, &json!({})).await;
    assert_eq!(s, 409, "{body}");

    // Publish freezes it.
    let (s, v) = post(&app, &format!("{v1}/publish"), &t, &json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "published");
    assert!(v["published_at"].is_string());
    let (s, body) = post(&app, &format!("{v1}/publish"), &t, &json!({})).await;
    assert_eq!(s, 409, "{body}");
    let (s, body) = patch(&app, &v1, &t, &json!({"config": {"prompt": "sneaky"}})).await;
    assert_eq!(s, 409, "{body}");
    let (s, body) = post(&app, &format!("{v1}/tools"), &t, &json!({"tool_ids": []})).await;
    assert_eq!(s, 409, "{body}");
    let (_, v) = get(&app, &v1, &t).await;
    assert_eq!(v["config"], json!({"prompt": "edited"}));

    // Activate, then switch to another published version: one active.
    let (s, a) = post(&app, &format!("{v1}/activate"), &t, &json!({})).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["active_version_id"], ids[0].to_string());
    let v2 = format!("{versions}/{}", ids[1]);
    post(&app, &format!("{v2}/publish"), &t, &json!({})).await;
    let (s, a) = post(&app, &format!("{v2}/activate"), &t, &json!({})).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["active_version_id"], ids[1].to_string());
    let (_, page) = get(&app, &versions, &t).await;
    let active: Vec<i64> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|v| v["is_active"] == true)
        .map(|v| v["version"].as_i64().expect("n"))
        .collect();
    assert_eq!(active, [2]);
    // Re-activating the active one is a no-op.
    let (s, _) = post(&app, &format!("{v2}/activate"), &t, &json!({})).await;
    assert_eq!(s, 200);

    // A version id under the wrong agent is not found.
    let (_, other) = post(
        &app,
        "/internal/agents",
        &t,
        &json!({"tenant_id": tenant, "name": "B"}),
    )
    .await;
    let (s, _) = post(
        &app,
        &format!(
            "/internal/agents/{}/versions/{}/publish",
            id_of(&other),
            ids[2]
        ),
        &t,
        &json!({}),
    )
    .await;
    assert_eq!(s, 404);

    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE target_type = 'agent_version' ORDER BY created_at, id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("audit");
    for expected in [
        "agent_version.create",
        "agent_version.update",
        "agent_version.publish",
        "agent_version.activate",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} in {actions:?}"
        );
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn concurrent_version_creation_numbers_consecutively(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("Acme").await;
    let t = tokens(&app, tenant).operator;
    let (_, agent) = post(
        &app,
        "/internal/agents",
        &t,
        &json!({"tenant_id": tenant, "name": "A"}),
    )
    .await;
    let path = format!("/internal/agents/{}/versions", id_of(&agent));
    let body = json!({"config": {}});
    let results = futures::future::join_all((0..8).map(|_| post(&app, &path, &t, &body))).await;
    let mut numbers: Vec<i64> = results
        .iter()
        .map(|(s, v)| {
            assert_eq!(*s, 201, "{v}");
            v["version"].as_i64().expect("n")
        })
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn allowlist_is_replaced_while_draft_and_checked_per_tenant(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = seed(&app, "A", "+14155550100").await;
    let b = seed(&app, "B", "+14155550101").await;
    let t = &a.tokens.operator;
    let (_, tool2) = post(
        &app,
        "/internal/tools",
        t,
        &json!({"tenant_id": a.tenant, "name": "book", "input_schema": {"type": "object"}}),
    )
    .await;
    let tool2 = id_of(&tool2);
    let path = format!(
        "/internal/agents/{}/versions/{}/tools",
        a.agent, a.draft_version
    );

    let (s, v) = post(
        &app,
        &path,
        t,
        &json!({"tool_ids": [a.tool, tool2, a.tool]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let mut expected = vec![a.tool.to_string(), tool2.to_string()];
    expected.sort();
    assert_eq!(v["tool_ids"], json!(expected));
    // Replaces, not appends.
    let (s, v) = post(&app, &path, t, &json!({"tool_ids": [tool2]})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tool_ids"], json!([tool2]));

    // Another tenant's tool, or an unknown one: 404 naming it, nothing changed.
    let before = snapshot(&app.pool).await;
    for foreign in [b.tool, Uuid::new_v4()] {
        let (s, body) = post(&app, &path, t, &json!({"tool_ids": [a.tool, foreign]})).await;
        assert_eq!(s, 404, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("m")
                .contains(&foreign.to_string()),
            "{body}"
        );
    }
    let (s, body) = post(&app, &path, t, &json!({"tool_ids": ["x"]})).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("tool_ids"),
        "{body}"
    );
    assert_eq!(snapshot(&app.pool).await, before);

    // Frozen with the version on publish.
    let publish = format!(
        "/internal/agents/{}/versions/{}/publish",
        a.agent, a.draft_version
    );
    let (s, v) = post(&app, &publish, t, &json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tool_ids"], json!([tool2]));
    let (s, _) = post(&app, &path, t, &json!({"tool_ids": [a.tool]})).await;
    assert_eq!(s, 409);
}
