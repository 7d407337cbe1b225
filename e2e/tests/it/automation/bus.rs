//! Tool executions with least privilege on the bus (`deploy/nats/nats.conf`
//! on a private nats-server): the api sends as `api`, the automation-worker
//! answers as `automation-worker`, which may only answer the requests it
//! receives. The runtime's refusals are in the dispatch-worker's bus test.

use serde_json::json;
use shared::auth::Role;
use shared::testing::nats_server::SecuredNats;
use sqlx::PgPool;

use crate::automation::worker::start_worker_with;
use api::testing::fixtures::{ToolSpec, insert_integration, insert_tool, seed};
use api::testing::n8n::FakeN8n;
use api::testing::{spawn_app_with, status_json};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn tool_executions_cross_the_bus_as_their_own_nats_users(pool: PgPool) {
    let bus = SecuredNats::start().await;
    let api_nats = bus.args("api");
    let app = spawn_app_with(pool, move |config| config.nats = api_nats).await;
    let n8n = FakeN8n::start().await;
    let worker_nats = bus.args("automation-worker");
    let worker = start_worker_with(&app, move |config| config.nats = worker_nats).await;
    let s = seed(&app.pool).await;
    let integration = insert_integration(&app, s.tenant_id, &n8n.base, "none", None, None).await;
    let tool = insert_tool(
        &app.pool,
        s.tenant_id,
        Some(integration),
        ToolSpec::new("lookup_order", "ok"),
    )
    .await;
    let token = app.token(s.tenant_id, Role::InternalOperator);
    let (status, body) = status_json(
        app.post(
            &format!("/internal/automation/tools/{tool}/execute"),
            Some(&token),
            &json!({"call_id": s.call_id, "input_json": {"order_id": "A-1", "quantity": 1}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["output"]["answer"], 42);
    worker.shutdown().await;
}

/// The automation-worker acts only on requests the api signed: a forged
/// integration test that points a sealed secret at another URL, and a
/// request signed with another key, get no answer and reach no one, while
/// the same request signed by the api's key is answered.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_automation_worker_refuses_requests_the_api_did_not_sign(pool: PgPool) {
    use shared::automation::{
        AuthType, IntegrationTestRequest, REQUEST_SIGNATURE_HEADER, RequestKind, RequestSigner,
        integration_secret_aad,
    };
    let app = api::testing::spawn_app(pool).await;
    let attacker = FakeN8n::start().await;
    let worker = crate::automation::worker::start_worker(&app).await;
    let key = app.config.encryption.key(&app.config.common).expect("key");
    let (tenant_id, integration_id) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let sealed = shared::crypto::SecretBox::new(&key)
        .seal(
            b"the-tenants-n8n-secret",
            &integration_secret_aad(tenant_id, integration_id),
        )
        .expect("seal");
    let forged = serde_json::to_vec(&IntegrationTestRequest {
        integration_id,
        tenant_id,
        base_url: format!("{}/bearer", attacker.base),
        auth_type: AuthType::Bearer,
        header_name: None,
        secret: Some(sealed.into()),
    })
    .expect("json");
    let send = |signature: Option<String>| {
        let nats = app.nats.clone();
        let subject = app.subjects.automation_integration_test();
        let payload = forged.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            if let Some(signature) = signature {
                headers.insert(REQUEST_SIGNATURE_HEADER, signature.as_str());
            }
            nats.send_request(
                subject,
                async_nats::Request::new()
                    .headers(headers)
                    .payload(payload.into())
                    .timeout(Some(std::time::Duration::from_secs(2))),
            )
            .await
        }
    };
    assert!(send(None).await.is_err(), "an unsigned request is answered");
    let other_key = RequestSigner::new(&[9; 32]).sign(RequestKind::IntegrationTest, &forged);
    assert!(
        send(Some(other_key)).await.is_err(),
        "a request signed with another key is answered"
    );
    assert_eq!(attacker.received().len(), 0, "the secret went out");
    // The same bytes signed with the api's key are acted on: the refusals
    // above are the signature's doing.
    let signed = RequestSigner::new(&key).sign(RequestKind::IntegrationTest, &forged);
    assert!(send(Some(signed)).await.is_ok());
    assert_eq!(attacker.received().len(), 1);
    worker.shutdown().await;
}
