use sqlx::PgPool;

use api::testing::{spawn_app, status_json};

/// Every management route is in `/openapi.json`, with the bearer scheme and
/// its request and response schemas.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn openapi_documents_every_management_route(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (s, doc) = status_json(app.get("/openapi.json", None).await).await;
    assert_eq!(s, 200);
    let routes = [
        ("post", "/internal/tenants"),
        ("get", "/internal/tenants"),
        ("get", "/internal/tenants/{tenant_id}"),
        ("patch", "/internal/tenants/{tenant_id}"),
        ("get", "/internal/tenants/{tenant_id}/retention"),
        ("delete", "/internal/tenants/{tenant_id}"),
        ("get", "/internal/tenants/{tenant_id}/offboarding"),
        ("post", "/internal/agents"),
        ("get", "/internal/agents"),
        ("get", "/internal/agents/{agent_id}"),
        ("post", "/internal/agents/{agent_id}/versions"),
        ("get", "/internal/agents/{agent_id}/versions"),
        ("get", "/internal/agents/{agent_id}/versions/{version_id}"),
        ("patch", "/internal/agents/{agent_id}/versions/{version_id}"),
        (
            "post",
            "/internal/agents/{agent_id}/versions/{version_id}/publish",
        ),
        (
            "post",
            "/internal/agents/{agent_id}/versions/{version_id}/activate",
        ),
        (
            "post",
            "/internal/agents/{agent_id}/versions/{version_id}/tools",
        ),
        ("get", "/internal/phone-numbers"),
        ("post", "/internal/phone-numbers"),
        ("patch", "/internal/phone-numbers/{phone_number_id}/agent"),
        ("post", "/internal/tools"),
        ("get", "/internal/tools"),
        ("get", "/internal/tools/{tool_id}"),
        ("post", "/internal/tools/{tool_id}/endpoints"),
        ("get", "/internal/integrations"),
        ("get", "/internal/integrations/{integration_id}"),
        ("post", "/internal/legal-holds"),
        ("get", "/internal/legal-holds"),
        ("post", "/internal/legal-holds/{hold_id}/release"),
        ("delete", "/internal/calls/{call_id}"),
        ("post", "/internal/calls/erase"),
        ("get", "/internal/audit-log"),
        ("post", "/internal/webhook-endpoints"),
        ("get", "/internal/webhook-endpoints"),
        ("get", "/internal/webhook-endpoints/{endpoint_id}"),
        ("patch", "/internal/webhook-endpoints/{endpoint_id}"),
        ("delete", "/internal/webhook-endpoints/{endpoint_id}"),
        (
            "post",
            "/internal/webhook-endpoints/{endpoint_id}/rotate-secret",
        ),
        (
            "get",
            "/internal/webhook-endpoints/{endpoint_id}/deliveries",
        ),
        ("post", "/internal/webhook-endpoints/{endpoint_id}/replay"),
        ("post", "/internal/webhook-endpoints/{endpoint_id}/test"),
        ("post", "/internal/webhook-deliveries/{delivery_id}/resend"),
    ];
    for (method, path) in routes {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing");
        assert_eq!(
            op["security"],
            serde_json::json!([{"bearer": []}]),
            "{method} {path}"
        );
        let (code, ok) = op["responses"]
            .as_object()
            .expect("responses")
            .iter()
            .find(|(code, _)| code.starts_with('2'))
            .map(|(code, r)| (code.clone(), r.clone()))
            .expect("a 2xx response");
        // Every success answers a JSON body, but a 204.
        assert!(
            code == "204" || ok["content"]["application/json"]["schema"].is_object(),
            "{method} {path}: {ok}"
        );
        let without_body = [
            "/publish",
            "/activate",
            "/release",
            "/rotate-secret",
            "/test",
            "/resend",
        ];
        if method != "get"
            && method != "delete"
            && !without_body.iter().any(|end| path.ends_with(end))
        {
            assert!(
                op["requestBody"]["content"]["application/json"]["schema"].is_object(),
                "{method} {path} body"
            );
        }
        assert!(op["responses"]["403"].is_object(), "{method} {path} 403");
    }
    for schema in [
        "Tenant",
        "Agent",
        "AgentVersion",
        "PhoneNumber",
        "Tool",
        "ToolEndpoint",
        "Integration",
        "LegalHold",
        "AuditLogEntry",
        "DeletedCall",
        "WebhookEndpoint",
        "EndpointWithSecret",
        "WebhookDelivery",
        // What event webhooks send: the body and each event's data.
        "WebhookEvent",
        "CallEventData",
        "CallEndedData",
        "RecordingReadyData",
        "TranscriptReadyData",
        "ToolExecutionFailedData",
        "DispatchExpiredData",
        "TestEventData",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema}"
        );
    }
    // An endpoint's header values are write-only: the answer's schema has
    // the names, each marked redacted, and no values.
    let endpoint = &doc["components"]["schemas"]["ToolEndpoint"];
    assert!(
        endpoint["properties"]["headers_template"].is_null(),
        "{endpoint}"
    );
    assert_eq!(
        endpoint["properties"]["headers"]["type"], "array",
        "{endpoint}"
    );
    assert_eq!(
        endpoint["properties"]["headers"]["items"]["$ref"],
        "#/components/schemas/EndpointHeader"
    );
    let header = &doc["components"]["schemas"]["EndpointHeader"];
    assert_eq!(
        header["properties"]["redacted"]["type"], "boolean",
        "{header}"
    );
    assert_eq!(header["properties"]["name"]["type"], "string", "{header}");
}

/// The runtime's NATS contract is served beside the HTTP one, without a
/// token, and names both of the runtime's subjects.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn asyncapi_describes_the_runtime_subjects(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (s, doc) = status_json(app.get("/asyncapi.json", None).await).await;
    assert_eq!(s, 200);
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(
        doc["channels"]["handoffRequested"]["address"],
        "runtime.handoff_requested.{tenant_id}"
    );
    assert_eq!(
        doc["channels"]["runtimeEvents"]["address"],
        "runtime.events.{tenant_id}.{call_id}"
    );
    assert_eq!(doc, shared::asyncapi::document());
}
