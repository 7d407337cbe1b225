use serde_json::json;
use shared::auth::Role;
use sqlx::PgPool;
use uuid::Uuid;

use super::support::*;
use api::testing::{AUTH_KEY, spawn_app, status_json};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn admin_creates_a_tenant_and_can_log_into_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    let home = app.create_tenant("Ops home").await;
    let resp = app
        .client
        .post(app.url("/auth/bootstrap/user"))
        .header("x-auth-bootstrap-key", AUTH_KEY)
        .json(
            &json!({"email": "admin@example.com", "password": "correct horse battery",
                      "memberships": [{"tenant_id": home, "role": "internal_admin"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 201);
    let login = |tenant: Option<Uuid>| {
        let body = json!({"email": "admin@example.com", "password": "correct horse battery", "tenant_id": tenant});
        let req = app.client.post(app.url("/auth/login")).json(&body);
        async move { status_json(req.send().await.expect("send")).await }
    };
    let (s, home_login) = login(Some(home)).await;
    assert_eq!(s, 200, "{home_login}");
    let token = home_login["token"].as_str().expect("token").to_owned();

    let (s, created) = post(
        &app,
        "/internal/tenants",
        &token,
        &json!({"name": "  Acme Dental  ", "retention_days": 90}),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["name"], "Acme Dental");
    assert_eq!(created["retention_days"], 90);
    let new_tenant = id_of(&created);
    assert_ne!(new_tenant, home);

    // The creator is the new tenant's admin and can log into it.
    let (s, new_login) = login(Some(new_tenant)).await;
    assert_eq!(s, 200, "{new_login}");
    let claims = app
        .jwt
        .verify(new_login["token"].as_str().expect("t"))
        .expect("valid");
    assert_eq!(
        (claims.tenant_id, claims.role),
        (new_tenant, Role::InternalAdmin)
    );

    // Both tenants are listed, newest first, with the role.
    let (s, list) = get(&app, "/internal/tenants", &token).await;
    assert_eq!(s, 200, "{list}");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], new_tenant.to_string());
    assert_eq!(items[0]["role"], "internal_admin");
    assert!(list["next_cursor"].is_null());

    let audited: (String, Option<Uuid>) =
        sqlx::query_as("SELECT actor, tenant_id FROM audit_log WHERE action = 'tenant.create'")
            .fetch_one(&app.pool)
            .await
            .expect("audit");
    assert_eq!(audited.0, claims.sub);
    assert_eq!(audited.1, Some(new_tenant));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn create_tenant_refusals_write_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let home = app.create_tenant("Home").await;
    let user = insert_user(&app.pool, "a@example.com").await;
    sqlx::query(
        "INSERT INTO memberships (user_id, tenant_id, role) VALUES ($1, $2, 'internal_admin')",
    )
    .bind(user)
    .bind(home)
    .execute(&app.pool)
    .await
    .expect("membership");
    let admin = user_token(&app, user, home, Role::InternalAdmin);
    let before = snapshot(&app.pool).await;

    let ok_body = json!({"name": "New"});
    // Roles.
    for role in [Role::InternalOperator, Role::ClientViewer] {
        let (s, body) = post(
            &app,
            "/internal/tenants",
            &user_token(&app, user, home, role),
            &ok_body,
        )
        .await;
        assert_eq!(s, 403, "{role:?}: {body}");
    }
    // A token whose sub is not a user (a dev or service token), or a
    // user that no longer exists.
    let (s, body) = post(
        &app,
        "/internal/tenants",
        &app.token(home, Role::InternalAdmin),
        &ok_body,
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("user"),
        "{body}"
    );
    let ghost = user_token(&app, Uuid::new_v4(), home, Role::InternalAdmin);
    assert_eq!(
        post(&app, "/internal/tenants", &ghost, &ok_body).await.0,
        403
    );
    // Bad bodies name the field.
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(201)}), "name"),
        (json!({}), "name"),
        (json!({"name": 5}), "name"),
        (json!({"name": "n", "retention_days": 0}), "retention_days"),
        (
            json!({"name": "n", "retention_days": 3651}),
            "retention_days",
        ),
        (
            json!({"name": "n", "retention_days": "ten"}),
            "retention_days",
        ),
        (json!({"name": "n", "colour": "red"}), "colour"),
    ] {
        let (s, resp) = post(&app, "/internal/tenants", &admin, &body).await;
        assert_eq!(s, 400, "{body}: {resp}");
        let message = resp["error"]["message"].as_str().expect("message");
        assert!(message.contains(field), "{body}: {message}");
    }
    assert_eq!(snapshot(&app.pool).await, before);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn read_and_update_the_own_tenant_only(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mine = app.create_tenant("Mine").await;
    let other = app.create_tenant("Other").await;
    let t = tokens(&app, mine);

    let (s, tenant) = get(&app, &format!("/internal/tenants/{mine}"), &t.operator).await;
    assert_eq!(s, 200, "{tenant}");
    assert_eq!(tenant["name"], "Mine");
    assert!(tenant["retention_days"].is_null());

    // Another tenant's id answers exactly like a missing one.
    let (s1, foreign) = get(&app, &format!("/internal/tenants/{other}"), &t.operator).await;
    let (s2, missing) = get(
        &app,
        &format!("/internal/tenants/{}", Uuid::new_v4()),
        &t.operator,
    )
    .await;
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(foreign, missing);
    let (s, body) = get(&app, "/internal/tenants/not-a-uuid", &t.operator).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("tenant_id"),
        "{body}"
    );

    let path = format!("/internal/tenants/{mine}");
    let (s, updated) = patch(
        &app,
        &path,
        &t.operator,
        &json!({"name": "Renamed", "retention_days": 30}),
    )
    .await;
    assert_eq!(s, 200, "{updated}");
    assert_eq!(
        (updated["name"].as_str(), updated["retention_days"].as_i64()),
        (Some("Renamed"), Some(30))
    );
    // Absent leaves a field alone; null clears the retention.
    let (s, updated) = patch(&app, &path, &t.operator, &json!({"retention_days": null})).await;
    assert_eq!(s, 200, "{updated}");
    assert_eq!(updated["name"], "Renamed");
    assert!(updated["retention_days"].is_null());
    let (s, body) = patch(&app, &path, &t.operator, &json!({})).await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = patch(&app, &path, &t.operator, &json!({"retention_days": -1})).await;
    assert_eq!(s, 400, "{body}");
    let audits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'tenant.update' AND tenant_id = $1",
    )
    .bind(mine)
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(audits, 2);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn membership_list_pages(pool: PgPool) {
    let app = spawn_app(pool).await;
    let user = insert_user(&app.pool, "u@example.com").await;
    let mut tenants = Vec::new();
    for i in 0..3 {
        let t = app.create_tenant(&format!("T{i}")).await;
        sqlx::query("INSERT INTO memberships (user_id, tenant_id, role) VALUES ($1, $2, 'internal_operator')")
            .bind(user)
            .bind(t)
            .execute(&app.pool)
            .await
            .expect("membership");
        tenants.push(t);
    }
    let token = user_token(&app, user, tenants[0], Role::InternalOperator);
    let (s, first) = get(&app, "/internal/tenants?limit=2", &token).await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["items"].as_array().expect("items").len(), 2);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (s, second) = get(
        &app,
        &format!("/internal/tenants?limit=2&cursor={cursor}"),
        &token,
    )
    .await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["items"].as_array().expect("items").len(), 1);
    assert!(second["next_cursor"].is_null());
    let mut seen: Vec<String> = first["items"]
        .as_array()
        .expect("items")
        .iter()
        .chain(second["items"].as_array().expect("items"))
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect();
    seen.sort();
    let mut expected: Vec<String> = tenants.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(seen, expected);

    for bad in [
        "limit=0",
        "limit=201",
        "limit=-1",
        "limit=ten",
        "cursor=garbage",
    ] {
        let (s, body) = get(&app, &format!("/internal/tenants?{bad}"), &token).await;
        assert_eq!(s, 400, "{bad}: {body}");
        let field = bad.split('=').next().expect("field");
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("m")
                .contains(field),
            "{bad}: {body}"
        );
    }
    // A service token (sub is not a user) has no memberships.
    let (s, empty) = get(
        &app,
        "/internal/tenants",
        &app.token(tenants[0], Role::InternalAdmin),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(empty["items"], json!([]));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_storage_mode_is_set_audited_and_checked(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mine = app.create_tenant("Mine").await;
    let t = tokens(&app, mine);
    let path = format!("/internal/tenants/{mine}");
    let (s, tenant) = get(&app, &path, &t.operator).await;
    assert_eq!(s, 200, "{tenant}");
    assert_eq!(tenant["data_storage"], "everything");

    for mode in [
        "everything_except_pii",
        "basic_attributes_only",
        "everything",
    ] {
        let (s, updated) = patch(&app, &path, &t.operator, &json!({"data_storage": mode})).await;
        assert_eq!(s, 200, "{updated}");
        assert_eq!(updated["data_storage"], mode);
        let stored: String = sqlx::query_scalar("SELECT data_storage FROM tenants WHERE id = $1")
            .bind(mine)
            .fetch_one(&app.pool)
            .await
            .expect("mode");
        assert_eq!(stored, mode);
    }
    let modes: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT details->'data_storage' FROM audit_log
         WHERE action = 'tenant.update' AND tenant_id = $1 ORDER BY created_at, id",
    )
    .bind(mine)
    .fetch_all(&app.pool)
    .await
    .expect("audit");
    assert_eq!(
        modes,
        vec![
            json!("everything_except_pii"),
            json!("basic_attributes_only"),
            json!("everything")
        ]
    );
    // An unknown mode is a 400 naming the field, and changes nothing.
    let (s, body) = patch(&app, &path, &t.operator, &json!({"data_storage": "some"})).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("data_storage"),
        "{body}"
    );
    let (_, tenant) = get(&app, &path, &t.operator).await;
    assert_eq!(tenant["data_storage"], "everything");
}
