//! Every auth rule of the foundation: first admin (and its race), login,
//! bootstrap users, the dev token route and its absence in production, and
//! bad tokens of every kind against a guarded route.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use shared::auth::Role;
use sqlx::PgPool;
use uuid::Uuid;

use api::testing::{AUTH_KEY, DEV_KEY, spawn_app, spawn_app_with, status_json};

fn first_admin_body() -> Value {
    json!({"email": "Admin@Example.com", "password": "correct horse battery", "tenant_name": "Acme"})
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn first_admin_creates_tenant_user_membership_and_audit(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, body) = status_json(
        app.post("/auth/register-first-admin", None, &first_admin_body())
            .await,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("token");
    let claims = app.jwt.verify(token).expect("valid token");
    assert_eq!(claims.role, Role::InternalAdmin);
    assert!(claims.is_internal);
    assert_eq!(
        claims.tenant_id.to_string(),
        body["tenant"]["id"].as_str().expect("tenant id")
    );
    assert_eq!(claims.sub, body["user"]["id"].as_str().expect("user id"));
    assert_eq!(app.count("users").await, 1);
    assert_eq!(app.count("tenants").await, 1);
    let role: String = sqlx::query_scalar("SELECT role FROM memberships")
        .fetch_one(&app.pool)
        .await
        .expect("membership");
    assert_eq!(role, "internal_admin");
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&app.pool)
        .await
        .expect("hash");
    assert!(hash.starts_with("$argon2id$"));
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'auth.register_first_admin'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("audit");
    assert_eq!(audited, 1);

    // Only while there are no users.
    let (status, body) = status_json(
        app.post("/auth/register-first-admin", None, &first_admin_body())
            .await,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn concurrent_first_admin_exactly_one_wins(pool: PgPool) {
    let app = spawn_app(pool).await;
    let attempts = (0..8).map(|i| {
        let body = json!({"email": format!("admin{i}@example.com"), "password": "correct horse battery", "tenant_name": format!("T{i}")});
        let req = app.client.post(app.url("/auth/register-first-admin")).json(&body);
        async move { req.send().await.expect("request").status().as_u16() }
    });
    let mut statuses = futures::future::join_all(attempts).await;
    statuses.sort_unstable();
    assert_eq!(statuses, vec![201, 409, 409, 409, 409, 409, 409, 409]);
    assert_eq!(app.count("users").await, 1);
    assert_eq!(app.count("tenants").await, 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn first_admin_rejects_weak_password_bad_email_and_bad_json(pool: PgPool) {
    let app = spawn_app(pool).await;
    for body in [
        json!({"email": "admin@example.com", "password": "short", "tenant_name": "Acme"}),
        json!({"email": "not-an-email", "password": "correct horse battery", "tenant_name": "Acme"}),
        json!({"email": "admin@example.com", "password": "correct horse battery", "tenant_name": ""}),
        json!({"email": "admin@example.com", "password": "correct horse battery"}),
        json!({"email": 5, "password": "correct horse battery", "tenant_name": "Acme"}),
    ] {
        let (status, resp) =
            status_json(app.post("/auth/register-first-admin", None, &body).await).await;
        assert_eq!(status, 400, "{body} -> {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{resp}"
        );
    }
    // The message names the missing field.
    let (_, resp) = status_json(
        app.post(
            "/auth/register-first-admin",
            None,
            &json!({"email": "a@b.co", "password": "correct horse battery"}),
        )
        .await,
    )
    .await;
    assert!(
        resp["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("tenant_name")),
        "{resp}"
    );
    // Not JSON at all.
    let resp = app
        .client
        .post(app.url("/auth/register-first-admin"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(app.count("users").await, 0);
    assert_eq!(app.count("tenants").await, 0);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn login_issues_tokens_per_membership_and_hides_unknown_emails(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (_, first) = status_json(
        app.post("/auth/register-first-admin", None, &first_admin_body())
            .await,
    )
    .await;
    let tenant_a: Uuid = first["tenant"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let tenant_b = app.create_tenant("Beta").await;
    let user_id: Uuid = first["user"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    sqlx::query("INSERT INTO memberships (user_id, tenant_id, role, created_at) VALUES ($1, $2, 'client_viewer', now() + interval '1 second')")
        .bind(user_id).bind(tenant_b).execute(&app.pool).await.expect("membership");
    let other_tenant = app.create_tenant("Gamma").await;

    // Default: the first membership. Email matching ignores case.
    let (status, body) = status_json(
        app.post(
            "/auth/login",
            None,
            &json!({"email": "admin@example.com", "password": "correct horse battery"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let claims = app
        .jwt
        .verify(body["token"].as_str().expect("token"))
        .expect("valid");
    assert_eq!(claims.tenant_id, tenant_a);
    assert_eq!(claims.role, Role::InternalAdmin);
    assert_eq!(
        body["memberships"].as_array().expect("memberships").len(),
        2
    );

    // A chosen tenant.
    let (status, body) = status_json(app.post("/auth/login", None, &json!({"email": "admin@example.com", "password": "correct horse battery", "tenant_id": tenant_b})).await).await;
    assert_eq!(status, 200, "{body}");
    let claims = app
        .jwt
        .verify(body["token"].as_str().expect("token"))
        .expect("valid");
    assert_eq!(claims.tenant_id, tenant_b);
    assert_eq!(claims.role, Role::ClientViewer);
    assert!(!claims.is_internal);

    // No membership there: 403.
    let (status, _) = status_json(app.post("/auth/login", None, &json!({"email": "admin@example.com", "password": "correct horse battery", "tenant_id": other_tenant})).await).await;
    assert_eq!(status, 403);

    // Wrong password and unknown email: the same 401.
    let (s1, wrong) = status_json(
        app.post(
            "/auth/login",
            None,
            &json!({"email": "admin@example.com", "password": "wrong password!!"}),
        )
        .await,
    )
    .await;
    let (s2, unknown) = status_json(
        app.post(
            "/auth/login",
            None,
            &json!({"email": "nobody@example.com", "password": "wrong password!!"}),
        )
        .await,
    )
    .await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(wrong, unknown);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn bootstrap_user_needs_the_key_and_unique_email(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("Acme").await;
    let body = json!({"email": "ops@example.com", "password": "correct horse battery",
                      "memberships": [{"tenant_id": tenant, "role": "internal_operator"}]});
    let send = |key: Option<&'static str>| {
        let mut req = app.client.post(app.url("/auth/bootstrap/user")).json(&body);
        if let Some(k) = key {
            req = req.header("x-auth-bootstrap-key", k);
        }
        async move { status_json(req.send().await.expect("send")).await }
    };
    assert_eq!(send(None).await.0, 401);
    assert_eq!(send(Some("wrong-key")).await.0, 401);
    assert_eq!(app.count("users").await, 0);
    let (status, created) = send(Some(AUTH_KEY)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["memberships"][0]["role"], "internal_operator");
    assert_eq!(send(Some(AUTH_KEY)).await.0, 409);
    assert_eq!(app.count("users").await, 1);
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'auth.bootstrap_user' AND tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(&app.pool)
    .await
    .expect("audit");
    assert_eq!(audited, 1);

    // The new user can log in and gets the operator role.
    let (status, login) = status_json(
        app.post(
            "/auth/login",
            None,
            &json!({"email": "ops@example.com", "password": "correct horse battery"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(
        app.jwt
            .verify(login["token"].as_str().expect("t"))
            .expect("v")
            .role,
        Role::InternalOperator
    );

    // A membership in a tenant that does not exist: 404 and nothing written.
    let missing = json!({"email": "x@example.com", "password": "correct horse battery",
                         "memberships": [{"tenant_id": Uuid::new_v4(), "role": "client_viewer"}]});
    let resp = app
        .client
        .post(app.url("/auth/bootstrap/user"))
        .header("x-auth-bootstrap-key", AUTH_KEY)
        .json(&missing)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(app.count("users").await, 1);

    // `runtime` is a token role for voice runtimes, never a user's: 400.
    let runtime_member = json!({"email": "rt@example.com", "password": "correct horse battery",
                                "memberships": [{"tenant_id": tenant, "role": "runtime"}]});
    let (status, body) = status_json(
        app.client
            .post(app.url("/auth/bootstrap/user"))
            .header("x-auth-bootstrap-key", AUTH_KEY)
            .json(&runtime_member)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("runtime"),
        "{body}"
    );
    assert_eq!(app.count("users").await, 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn dev_token_needs_the_key_and_mints_valid_tokens(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = Uuid::new_v4();
    let body = json!({"user_id": "user-1", "tenant_id": tenant, "role": "internal_operator", "is_internal": true, "expires_in": "15m"});
    let resp = app
        .client
        .post(app.url("/internal/dev/token"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let resp = app
        .client
        .post(app.url("/internal/dev/token"))
        .header("x-dev-bootstrap-key", "nope")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let resp = app
        .client
        .post(app.url("/internal/dev/token"))
        .header("x-dev-bootstrap-key", DEV_KEY)
        .json(&body)
        .send()
        .await
        .expect("send");
    let (status, token) = status_json(resp).await;
    assert_eq!(status, 200, "{token}");
    let claims = app
        .jwt
        .verify(token["token"].as_str().expect("token"))
        .expect("valid");
    assert_eq!(
        (claims.sub.as_str(), claims.tenant_id, claims.role),
        ("user-1", tenant, Role::InternalOperator)
    );
    assert!((claims.exp - claims.iat - 900).abs() <= 1);

    let bad = json!({"user_id": "u", "tenant_id": "tenant-1", "role": "internal_admin", "is_internal": true});
    let resp = app
        .client
        .post(app.url("/internal/dev/token"))
        .header("x-dev-bootstrap-key", DEV_KEY)
        .json(&bad)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn production_has_no_dev_token_route(pool: PgPool) {
    let app = spawn_app_with(pool, |c| {
        c.common.app_env = shared::config::AppEnv::Production
    })
    .await;
    let body = json!({"user_id": "u", "tenant_id": Uuid::new_v4(), "role": "internal_admin", "is_internal": true});
    let resp = app
        .client
        .post(app.url("/internal/dev/token"))
        .header("x-dev-bootstrap-key", DEV_KEY)
        .json(&body)
        .send()
        .await
        .expect("send");
    let (status, body) = status_json(resp).await;
    assert_eq!(status, 404, "{body}");
    // The same answer as a route that never existed.
    let (_, unknown) =
        status_json(app.post("/internal/no-such-route", None, &json!({})).await).await;
    assert_eq!(body, unknown);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn guarded_route_refuses_every_kind_of_bad_token(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("Acme").await;
    let secret = app.config.auth.jwt_secret.clone().expect("secret");
    let now = chrono::Utc::now().timestamp();
    let claims = |iss: &str, aud: &str, exp: i64| {
        json!({"sub": "u", "tenant_id": tenant, "role": "client_viewer",
        "is_internal": false, "iss": iss, "aud": aud, "iat": now, "exp": exp})
    };
    let (iss, aud) = (
        app.config.auth.jwt_issuer.clone(),
        app.config.auth.jwt_audience.clone(),
    );
    let sign = |alg: Algorithm, c: &Value| {
        jsonwebtoken::encode(
            &Header::new(alg),
            c,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    };
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };

    let good = sign(Algorithm::HS256, &claims(&iss, &aud, now + 600));
    let mut tampered_parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    tampered_parts[1] = b64(
        &json!({"sub": "u", "tenant_id": Uuid::new_v4(), "role": "client_viewer",
        "is_internal": false, "iss": iss, "aud": aud, "iat": now, "exp": now + 600}),
    );
    let cases = [
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims(&iss, &aud, now + 600))
            ),
        ),
        (
            "other alg",
            sign(Algorithm::HS384, &claims(&iss, &aud, now + 600)),
        ),
        (
            "expired",
            sign(Algorithm::HS256, &claims(&iss, &aud, now - 3600)),
        ),
        (
            "wrong issuer",
            sign(Algorithm::HS256, &claims("someone-else", &aud, now + 600)),
        ),
        (
            "wrong audience",
            sign(Algorithm::HS256, &claims(&iss, "other-api", now + 600)),
        ),
        ("tampered", tampered_parts.join(".")),
        (
            "other secret",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims(&iss, &aud, now + 600),
                &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
            )
            .expect("encode"),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (what, token) in cases {
        let (status, body) = status_json(app.get("/auth/me", Some(&token)).await).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}");
    }
    let (status, _) = status_json(app.get("/auth/me", None).await).await;
    assert_eq!(status, 401);
    let (status, me) = status_json(app.get("/auth/me", Some(&good)).await).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["tenant_id"], tenant.to_string());
    let _ = Duration::ZERO;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn health_ready_and_metrics(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(app.get("/health", None).await.status().as_u16(), 200);
    let (status, ready) = status_json(app.get("/health/ready", None).await).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["postgres"]["status"], "ok");
    assert_eq!(ready["checks"]["nats"]["status"], "ok");
    assert_eq!(app.get("/health/db", None).await.status().as_u16(), 200);
    let resp = app.get("/health", None).await;
    assert!(resp.headers().get("x-request-id").is_some());
    let metrics = app
        .get("/metrics", None)
        .await
        .text()
        .await
        .expect("metrics");
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(metrics.contains("route=\"/health\""), "{metrics}");
    let (status, doc) = status_json(app.get("/openapi.json", None).await).await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/auth/login"]["post"].is_object(), "{doc}");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn readiness_names_the_failed_dependency(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.pool.close().await;
    let (status, ready) = status_json(app.get("/health/ready", None).await).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["postgres"]["status"], "error");
    assert_eq!(ready["checks"]["nats"]["status"], "ok");
    // Which dependency, in fixed words: the driver's error (here "attempted
    // to acquire a connection on a closed pool") stays in the log.
    assert_eq!(ready["checks"]["postgres"]["message"], "query failed");
    let (status, db) = status_json(app.get("/health/db", None).await).await;
    assert_eq!(status, 503, "{db}");
    assert_eq!(db["message"], "query failed");
    assert!(!format!("{ready}{db}").contains("pool"), "{ready} {db}");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn repeated_failed_logins_are_throttled_with_retry_after(pool: PgPool) {
    let app = spawn_app_with(pool, |c| {
        c.login_max_failures_per_email = 3;
        c.login_max_failures_per_ip = 50;
    })
    .await;
    let (status, _) = status_json(
        app.post("/auth/register-first-admin", None, &first_admin_body())
            .await,
    )
    .await;
    assert_eq!(status, 201);
    let wrong = json!({"email": "admin@example.com", "password": "wrong password!!"});
    for _ in 0..3 {
        assert_eq!(
            app.post("/auth/login", None, &wrong)
                .await
                .status()
                .as_u16(),
            401
        );
    }
    // Even the right password is refused while throttled, before any hashing.
    let right = json!({"email": "ADMIN@example.com", "password": "correct horse battery"});
    let resp = app.post("/auth/login", None, &right).await;
    assert_eq!(resp.status().as_u16(), 429);
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(
        retry_after > 0 && retry_after <= 15 * 60 + 1,
        "{retry_after}"
    );
    let (_, body) = status_json(resp).await;
    assert_eq!(body["error"]["code"], "rate_limited");
    // Other emails from the same address are still served.
    let other = json!({"email": "someone@example.com", "password": "wrong password!!"});
    assert_eq!(
        app.post("/auth/login", None, &other)
            .await
            .status()
            .as_u16(),
        401
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn failures_from_one_address_are_throttled_across_emails(pool: PgPool) {
    let app = spawn_app_with(pool, |c| {
        c.login_max_failures_per_email = 100;
        c.login_max_failures_per_ip = 4;
    })
    .await;
    for i in 0..4 {
        let body = json!({"email": format!("user{i}@example.com"), "password": "wrong password!!"});
        assert_eq!(
            app.post("/auth/login", None, &body).await.status().as_u16(),
            401
        );
    }
    let body = json!({"email": "new@example.com", "password": "wrong password!!"});
    assert_eq!(
        app.post("/auth/login", None, &body).await.status().as_u16(),
        429
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn nul_characters_and_wrong_content_types_are_4xx_not_500(pool: PgPool) {
    let app = spawn_app(pool).await;
    let raw = |path: &str, ct: &str, body: &'static str| {
        app.client
            .post(app.url(path))
            .header("content-type", ct.to_owned())
            .body(body)
            .send()
    };
    let resp = raw(
        "/auth/login",
        "application/json",
        r#"{"email":"a\u0000@x.io","password":"whatever-long"}"#,
    )
    .await
    .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let resp = raw(
        "/auth/register-first-admin",
        "application/json",
        r#"{"email":"a@x.io","password":"correct horse battery","tenant_name":"T\u0000"}"#,
    )
    .await
    .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(app.count("tenants").await, 0);
    let resp = raw(
        "/auth/login",
        "text/plain",
        r#"{"email":"a@x.io","password":"whatever-long"}"#,
    )
    .await
    .expect("send");
    assert_eq!(resp.status().as_u16(), 415);
    let (_, body) = status_json(resp).await;
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    // Lone surrogates are not valid JSON strings for serde: 400.
    let resp = raw(
        "/auth/login",
        "application/json",
        r#"{"email":"\udb93","password":"whatever-long"}"#,
    )
    .await
    .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    // Deep nesting is refused by the parser, not by a stack overflow.
    let deep: &'static str =
        Box::leak(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_boxed_str());
    let resp = raw("/auth/login", "application/json", deep)
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_concurrent_burst_of_bad_logins_cannot_pass_the_limit(pool: PgPool) {
    let app = spawn_app_with(pool, |c| {
        c.login_max_failures_per_email = 1000;
        c.login_max_failures_per_ip = 4;
    })
    .await;
    let attempts = (0..30).map(|i| {
        let body =
            json!({"email": format!("burst{i}@example.com"), "password": "wrong password!!"});
        let req = app.client.post(app.url("/auth/login")).json(&body);
        async move { req.send().await.expect("send").status().as_u16() }
    });
    let statuses = futures::future::join_all(attempts).await;
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(unauthorized, 4, "{statuses:?}");
    assert_eq!(throttled, 26, "{statuses:?}");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn first_admin_after_set_up_is_refused_before_any_hashing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, _) = status_json(
        app.post("/auth/register-first-admin", None, &first_admin_body())
            .await,
    )
    .await;
    assert_eq!(status, 201);
    // With every hashing slot taken, a registration that hashed first would
    // wait for one and end in 503; checked first, it is refused at once.
    let _slots = app
        .passwords
        .occupy_all_slots_for_tests()
        .await
        .expect("slots");
    let again = json!({"email": "other@example.com", "password": "another long password", "tenant_name": "Evil"});
    let started = std::time::Instant::now();
    for _ in 0..5 {
        let (status, body) =
            status_json(app.post("/auth/register-first-admin", None, &again).await).await;
        assert_eq!(status, 409, "{body}");
    }
    assert!(
        started.elapsed() < api::auth::password::PERMIT_WAIT,
        "refusals waited for a hashing slot"
    );
}

/// `n` failed logins for distinct emails, sent with `X-Forwarded-For: forwarded`.
async fn fail_logins(app: &api::testing::TestApp, forwarded: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let body = json!({"email": format!("u{i}-{forwarded}@example.com"), "password": "wrong password!!"});
        let resp = app
            .client
            .post(app.url("/auth/login"))
            .header("x-forwarded-for", forwarded)
            .json(&body)
            .send()
            .await
            .expect("send");
        statuses.push(resp.status().as_u16());
    }
    statuses
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn behind_a_trusted_proxy_one_client_cannot_lock_out_the_others(pool: PgPool) {
    let app = spawn_app_with(pool, |c| {
        c.login_max_failures_per_email = 100;
        c.login_max_failures_per_ip = 2;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    assert_eq!(fail_logins(&app, "203.0.113.1", 3).await, [401, 401, 429]);
    // Another client through the same balancer is still served.
    assert_eq!(fail_logins(&app, "203.0.113.2", 1).await, [401]);
    // The attacker's own forged hop is ignored: the proxy's entry counts.
    assert_eq!(
        fail_logins(&app, "198.51.100.50, 203.0.113.1", 1).await,
        [429]
    );
    // IPv6 clients count by /64: a new address in the same /64 is blocked.
    assert_eq!(fail_logins(&app, "2001:db8:0:1::1", 2).await, [401, 401]);
    assert_eq!(fail_logins(&app, "2001:db8:0:1::ffff", 1).await, [429]);
    assert_eq!(fail_logins(&app, "2001:db8:0:2::1", 1).await, [401]);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn without_trusted_proxies_x_forwarded_for_is_ignored(pool: PgPool) {
    let app = spawn_app_with(pool, |c| {
        c.login_max_failures_per_email = 100;
        c.login_max_failures_per_ip = 2;
    })
    .await;
    assert_eq!(fail_logins(&app, "203.0.113.1", 2).await, [401, 401]);
    // A new forged address does not buy new attempts.
    assert_eq!(fail_logins(&app, "203.0.113.99", 1).await, [429]);
}
