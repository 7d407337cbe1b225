//! The tenant-isolation matrix: every management route, called by a token
//! of another tenant and by each wrong role, is refused (403 for a foreign
//! `tenant_id` in a body or query, 404 for a foreign id, 403 for a role),
//! and the database does not change.

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::support::*;
use api::testing::spawn_app;

/// What a token of another tenant gets.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Foreign {
    /// The tenant_id in the body or query is not the token's.
    Forbidden,
    /// An id in the path belongs to another tenant.
    NotFound,
    /// Not tenant-scoped (the caller's own memberships, tenant creation).
    Unscoped,
}

struct Case {
    method: Method,
    path: String,
    body: Option<Value>,
    admin_only: bool,
    foreign: Foreign,
}

fn case(
    method: Method,
    path: String,
    body: Option<Value>,
    admin_only: bool,
    foreign: Foreign,
) -> Case {
    Case {
        method,
        path,
        body,
        admin_only,
        foreign,
    }
}

/// The ids a case refers to: tenant A's real ones, or random ones.
struct Ids {
    tenant: Uuid,
    agent: Uuid,
    draft: Uuid,
    published: Uuid,
    phone_number: Uuid,
    tool: Uuid,
    integration: Uuid,
    call: Uuid,
    hold: Uuid,
    webhook_endpoint: Uuid,
    webhook_delivery: Uuid,
}

fn cases(ids: &Ids) -> Vec<Case> {
    use Foreign::*;
    let Ids {
        tenant,
        agent,
        draft,
        published,
        phone_number,
        tool,
        integration,
        call,
        hold,
        webhook_endpoint,
        webhook_delivery,
    } = ids;
    let hooks = format!("/internal/webhook-endpoints/{webhook_endpoint}");
    let v = format!("/internal/agents/{agent}/versions");
    vec![
        case(
            Method::POST,
            "/internal/tenants".into(),
            Some(json!({"name": "X"})),
            true,
            Unscoped,
        ),
        case(
            Method::GET,
            "/internal/tenants".into(),
            None,
            false,
            Unscoped,
        ),
        case(
            Method::GET,
            format!("/internal/tenants/{tenant}"),
            None,
            false,
            NotFound,
        ),
        case(
            Method::PATCH,
            format!("/internal/tenants/{tenant}"),
            Some(json!({"name": "Hijacked"})),
            false,
            NotFound,
        ),
        case(
            Method::GET,
            format!("/internal/tenants/{tenant}/retention"),
            None,
            false,
            NotFound,
        ),
        case(
            Method::DELETE,
            format!("/internal/tenants/{tenant}"),
            None,
            true,
            NotFound,
        ),
        case(
            Method::GET,
            format!("/internal/tenants/{tenant}/offboarding"),
            None,
            false,
            NotFound,
        ),
        case(
            Method::POST,
            "/internal/calls/erase".into(),
            Some(json!({"tenant_id": tenant, "phone_number": "+15550001111"})),
            false,
            Forbidden,
        ),
        case(
            Method::POST,
            "/internal/agents".into(),
            Some(json!({"tenant_id": tenant, "name": "X"})),
            false,
            Forbidden,
        ),
        case(
            Method::GET,
            format!("/internal/agents?tenant_id={tenant}"),
            None,
            false,
            Forbidden,
        ),
        case(
            Method::GET,
            format!("/internal/agents/{agent}"),
            None,
            false,
            NotFound,
        ),
        case(
            Method::POST,
            v.clone(),
            Some(json!({"config": {}})),
            false,
            NotFound,
        ),
        case(Method::GET, v.clone(), None, false, NotFound),
        case(Method::GET, format!("{v}/{draft}"), None, false, NotFound),
        case(
            Method::PATCH,
            format!("{v}/{draft}"),
            Some(json!({"config": {"p": 1}})),
            false,
            NotFound,
        ),
        case(
            Method::POST,
            format!("{v}/{draft}/publish"),
            Some(json!({})),
            false,
            NotFound,
        ),
        case(
            Method::POST,
            format!("{v}/{published}/activate"),
            Some(json!({})),
            false,
            NotFound,
        ),
        case(
            Method::POST,
            format!("{v}/{draft}/tools"),
            Some(json!({"tool_ids": [tool]})),
            false,
            NotFound,
        ),
        case(
            Method::GET,
            format!("/internal/phone-numbers?tenant_id={tenant}&limit=200"),
            None,
            false,
            Forbidden,
        ),
        case(
            Method::POST,
            "/internal/phone-numbers".into(),
            Some(json!({"tenant_id": tenant, "e164": "+14155550999", "twilio_sid": "PNX"})),
            false,
            Forbidden,
        ),
        case(
            Method::PATCH,
            format!("/internal/phone-numbers/{phone_number}/agent"),
            Some(json!({"agent_id": null})),
            false,
            NotFound,
        ),
        case(
            Method::POST,
            "/internal/tools".into(),
            Some(json!({"tenant_id": tenant, "name": "x", "input_schema": {}})),
            false,
            Forbidden,
        ),
        case(
            Method::GET,
            format!("/internal/tools?tenant_id={tenant}"),
            None,
            false,
            Forbidden,
        ),
        case(
            Method::GET,
            format!("/internal/tools/{tool}"),
            None,
            false,
            NotFound,
        ),
        case(
            Method::POST,
            format!("/internal/tools/{tool}/endpoints"),
            Some(json!({"integration_id": integration, "webhook_path": "/w"})),
            false,
            NotFound,
        ),
        case(
            Method::GET,
            format!("/internal/integrations?tenant_id={tenant}"),
            None,
            false,
            Forbidden,
        ),
        case(
            Method::GET,
            format!("/internal/integrations/{integration}"),
            None,
            false,
            NotFound,
        ),
        case(
            Method::POST,
            "/internal/legal-holds".into(),
            Some(json!({"tenant_id": tenant, "reason": "r"})),
            true,
            Forbidden,
        ),
        case(
            Method::GET,
            format!("/internal/legal-holds?tenant_id={tenant}"),
            None,
            false,
            Forbidden,
        ),
        case(
            Method::POST,
            format!("/internal/legal-holds/{hold}/release"),
            Some(json!({})),
            true,
            NotFound,
        ),
        case(
            Method::DELETE,
            format!("/internal/calls/{call}"),
            None,
            false,
            NotFound,
        ),
        case(
            Method::GET,
            format!("/internal/audit-log?tenant_id={tenant}"),
            None,
            true,
            Forbidden,
        ),
        case(
            Method::POST,
            "/internal/webhook-endpoints".into(),
            Some(
                json!({"tenant_id": tenant, "url": "https://hooks.example.com/x",
                        "event_types": ["call.ended"]}),
            ),
            false,
            Forbidden,
        ),
        case(
            Method::GET,
            format!("/internal/webhook-endpoints?tenant_id={tenant}"),
            None,
            false,
            Forbidden,
        ),
        case(Method::GET, hooks.clone(), None, false, NotFound),
        case(
            Method::PATCH,
            hooks.clone(),
            Some(json!({"url": "https://evil.example.com/"})),
            false,
            NotFound,
        ),
        case(
            Method::POST,
            format!("{hooks}/rotate-secret"),
            Some(json!({})),
            false,
            NotFound,
        ),
        case(
            Method::GET,
            format!("{hooks}/deliveries"),
            None,
            false,
            NotFound,
        ),
        case(
            Method::POST,
            format!("{hooks}/replay"),
            Some(json!({"since": chrono::Utc::now() - chrono::Duration::hours(1)})),
            false,
            NotFound,
        ),
        case(
            Method::POST,
            format!("{hooks}/test"),
            Some(json!({})),
            false,
            NotFound,
        ),
        case(
            Method::POST,
            format!("/internal/webhook-deliveries/{webhook_delivery}/resend"),
            Some(json!({})),
            false,
            NotFound,
        ),
        case(Method::DELETE, hooks, None, false, NotFound),
    ]
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn every_route_refuses_other_tenants_and_wrong_roles(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = seed(&app, "A", "+14155550100").await;
    let b = seed(&app, "B", "+14155550101").await;
    // A call without a hold, so that a wrongly allowed delete would succeed.
    let free_call = insert_call(&app.pool, a.tenant).await;
    let real = Ids {
        tenant: a.tenant,
        agent: a.agent,
        draft: a.draft_version,
        published: a.published_version,
        phone_number: a.phone_number,
        tool: a.tool,
        integration: a.integration,
        call: free_call,
        hold: a.hold,
        webhook_endpoint: a.webhook_endpoint,
        webhook_delivery: a.webhook_delivery,
    };
    let random = Ids {
        tenant: Uuid::new_v4(),
        agent: Uuid::new_v4(),
        draft: Uuid::new_v4(),
        published: Uuid::new_v4(),
        phone_number: Uuid::new_v4(),
        tool: Uuid::new_v4(),
        integration: Uuid::new_v4(),
        call: Uuid::new_v4(),
        hold: Uuid::new_v4(),
        webhook_endpoint: Uuid::new_v4(),
        webhook_delivery: Uuid::new_v4(),
    };
    let before = snapshot(&app.pool).await;

    let missing_cases = cases(&random);
    for (c, missing) in cases(&real).iter().zip(&missing_cases) {
        let what = format!("{} {}", c.method, c.path);
        let call = |token: Option<String>| {
            let (method, path, body) = (c.method.clone(), c.path.clone(), c.body.clone());
            let app = &app;
            async move { send(app, method, &path, token.as_deref(), body.as_ref()).await }
        };

        // No token.
        let (s, body) = call(None).await;
        assert_eq!(s, 401, "{what} without a token: {body}");
        // client_viewer of the same tenant: 403 everywhere.
        let (s, body) = call(Some(a.tokens.viewer.clone())).await;
        assert_eq!(s, 403, "{what} as client_viewer: {body}");
        // internal_operator of the same tenant on admin-only routes: 403.
        if c.admin_only {
            let (s, body) = call(Some(a.tokens.operator.clone())).await;
            assert_eq!(s, 403, "{what} as internal_operator: {body}");
        }
        // An admin of another tenant.
        let (s, body) = call(Some(b.tokens.admin.clone())).await;
        match c.foreign {
            Foreign::Forbidden => assert_eq!(s, 403, "{what} from tenant B: {body}"),
            Foreign::NotFound => {
                assert_eq!(s, 404, "{what} from tenant B: {body}");
                // Identical to an id that does not exist at all.
                let (s2, missing_body) = send(
                    &app,
                    missing.method.clone(),
                    &missing.path,
                    Some(&b.tokens.admin),
                    missing.body.as_ref(),
                )
                .await;
                assert_eq!(
                    (s2, &missing_body),
                    (404, &body),
                    "{what}: foreign vs missing"
                );
            }
            Foreign::Unscoped => {}
        }
    }

    // Tenant B's own ids paired with tenant A's: every A id is "not found".
    let cross: Vec<(Method, String, Value)> = vec![
        (
            Method::POST,
            "/internal/phone-numbers".into(),
            json!({"tenant_id": b.tenant, "e164": "+14155550998", "twilio_sid": "PNY", "agent_id": a.agent}),
        ),
        (
            Method::PATCH,
            format!("/internal/phone-numbers/{}/agent", b.phone_number),
            json!({"agent_id": a.agent}),
        ),
        (
            Method::POST,
            format!(
                "/internal/agents/{}/versions/{}/tools",
                b.agent, b.draft_version
            ),
            json!({"tool_ids": [a.tool]}),
        ),
        (
            Method::POST,
            format!("/internal/tools/{}/endpoints", b.tool),
            json!({"integration_id": a.integration, "webhook_path": "/w"}),
        ),
        (
            Method::POST,
            "/internal/legal-holds".into(),
            json!({"tenant_id": b.tenant, "call_id": a.call, "reason": "r"}),
        ),
    ];
    for (method, path, body) in cross {
        let (s, resp) = send(
            &app,
            method.clone(),
            &path,
            Some(&b.tokens.admin),
            Some(&body),
        )
        .await;
        assert_eq!(s, 404, "{method} {path} {body}: {resp}");
    }

    assert_eq!(
        snapshot(&app.pool).await,
        before,
        "a refused request changed the database"
    );

    // B's own lists never show A's rows.
    let a_ids: Vec<String> = [
        a.agent,
        a.draft_version,
        a.published_version,
        a.phone_number,
        a.tool,
        a.integration,
        a.call,
        a.hold,
        a.webhook_endpoint,
        a.webhook_delivery,
    ]
    .iter()
    .map(Uuid::to_string)
    .collect();
    for list in [
        "agents",
        "phone-numbers",
        "tools",
        "integrations",
        "legal-holds",
        "audit-log",
        "webhook-endpoints",
    ] {
        let (s, page) = get(
            &app,
            &format!("/internal/{list}?tenant_id={}", b.tenant),
            &b.tokens.admin,
        )
        .await;
        assert_eq!(s, 200, "{list}: {page}");
        assert!(
            !page["items"].as_array().expect("items").is_empty(),
            "{list}"
        );
        let text = page.to_string();
        for id in &a_ids {
            assert!(!text.contains(id.as_str()), "{list} of B shows A's {id}");
        }
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn malformed_ids_answer_400_naming_the_field(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = seed(&app, "A", "+14155550100").await;
    let t = &a.tokens.admin;
    let before = snapshot(&app.pool).await;
    let agent = a.agent;
    let cases: Vec<(Method, String, Option<Value>, &str)> = vec![
        (Method::GET, "/internal/tenants/x".into(), None, "tenant_id"),
        (Method::GET, "/internal/agents/x".into(), None, "agent_id"),
        (
            Method::POST,
            "/internal/agents/x/versions".into(),
            Some(json!({"config": {}})),
            "agent_id",
        ),
        (
            Method::POST,
            format!("/internal/agents/{agent}/versions/x/publish"),
            Some(json!({})),
            "version_id",
        ),
        (
            Method::POST,
            format!("/internal/agents/{agent}/versions/x/activate"),
            Some(json!({})),
            "version_id",
        ),
        (
            Method::PATCH,
            "/internal/phone-numbers/x/agent".into(),
            Some(json!({"agent_id": null})),
            "phone_number_id",
        ),
        (Method::GET, "/internal/tools/x".into(), None, "tool_id"),
        (
            Method::GET,
            "/internal/integrations/x".into(),
            None,
            "integration_id",
        ),
        (
            Method::POST,
            "/internal/legal-holds/x/release".into(),
            Some(json!({})),
            "hold_id",
        ),
        (Method::DELETE, "/internal/calls/x".into(), None, "call_id"),
        (
            Method::GET,
            "/internal/agents?tenant_id=x".into(),
            None,
            "tenant_id",
        ),
        (
            Method::GET,
            "/internal/legal-holds?tenant_id=x".into(),
            None,
            "tenant_id",
        ),
        (
            Method::GET,
            format!("/internal/legal-holds?tenant_id={}&active=maybe", a.tenant),
            None,
            "active",
        ),
        (
            Method::GET,
            format!("/internal/audit-log?tenant_id={}&limit=0", a.tenant),
            None,
            "limit",
        ),
        (
            Method::GET,
            format!("/internal/tools?tenant_id={}&cursor=zzz", a.tenant),
            None,
            "cursor",
        ),
    ];
    for (method, path, body, field) in cases {
        let (s, resp) = send(&app, method.clone(), &path, Some(t), body.as_ref()).await;
        assert_eq!(s, 400, "{method} {path}: {resp}");
        assert_eq!(resp["error"]["code"], "bad_request", "{resp}");
        let message = resp["error"]["message"].as_str().expect("m");
        assert!(message.contains(field), "{method} {path}: {message}");
    }
    // A body that is not JSON at all.
    let resp = app
        .client
        .post(app.url("/internal/agents"))
        .bearer_auth(t)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(snapshot(&app.pool).await, before);
}
