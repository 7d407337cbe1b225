use sqlx::PgPool;

use super::support::*;
use api::testing::spawn_app;

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn admins_read_their_tenants_audit_log_in_pages(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = seed(&app, "A", "+14155550100").await;
    let b = seed(&app, "B", "+14155550101").await;
    let path = format!("/internal/audit-log?tenant_id={}", a.tenant);

    let (s, page) = get(&app, &path, &a.tokens.admin).await;
    assert_eq!(s, 200, "{page}");
    let items = page["items"].as_array().expect("items");
    // The seed: agent, 2 versions, publish, number, tool, hold, webhook
    // endpoint.
    assert_eq!(items.len(), 8, "{page}");
    assert!(items.iter().all(|e| e["tenant_id"] == a.tenant.to_string()));
    assert_eq!(items[0]["action"], "webhook_endpoint.create");
    assert_eq!(items[0]["target_id"], a.webhook_endpoint.to_string());
    assert_eq!(items[1]["action"], "legal_hold.create");
    assert_eq!(items[1]["actor"], "test-user");
    assert_eq!(items[1]["target_id"], a.hold.to_string());
    assert!(items.iter().any(|e| e["action"] == "agent_version.publish"));

    // Pages of 3 cover the same entries in the same order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&limit=3&cursor={c}"),
            None => format!("{path}&limit=3"),
        };
        let (s, page) = get(&app, &url, &a.tokens.admin).await;
        assert_eq!(s, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|e| e["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let all: Vec<_> = items.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(seen, all);

    let (s, page) = get(&app, &format!("{path}&action=tool.create"), &a.tokens.admin).await;
    assert_eq!(s, 200);
    assert_eq!(page["items"].as_array().expect("items").len(), 1);

    assert_eq!(get(&app, &path, &a.tokens.operator).await.0, 403);
    assert_eq!(get(&app, &path, &a.tokens.viewer).await.0, 403);
    assert_eq!(get(&app, &path, &b.tokens.admin).await.0, 403);
    let (s, body) = get(&app, &format!("{path}&limit=500"), &a.tokens.admin).await;
    assert_eq!(s, 400, "{body}");
}
