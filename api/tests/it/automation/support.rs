//! Test support for flow 2: a fake n8n on `127.0.0.1:0`, automation-worker
//! run in-process on the test's NATS prefix, and rows inserted with SQL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use shared::automation::integration_secret_aad;
use shared::crypto::SecretBox;
use shared::service::Connections;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::TestApp;

pub const HEADER_SECRET: &str = "hdr-s3cret-value";
pub const BASIC_SECRET: &str = "n8nuser:b4sic-pa55";
pub const BEARER_SECRET: &str = "b3arer-t0ken-value";

/// One request the fake n8n received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

#[derive(Default)]
struct FakeState {
    received: Mutex<Vec<Received>>,
    counters: Mutex<HashMap<String, u32>>,
}

/// A fake n8n. The path prefix selects the auth it demands (`/hdr`,
/// `/basic`, `/bearer`, none otherwise; `/down` answers 503 to health);
/// the webhook name selects the behaviour (see `webhook`).
pub struct FakeN8n {
    pub base: String,
    state: Arc<FakeState>,
}

impl FakeN8n {
    pub async fn start() -> Self {
        let state = Arc::new(FakeState::default());
        let app = axum::Router::new()
            .fallback(fake_handler)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake n8n");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, state }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("lock").clone()
    }

    pub fn hits(&self, path: &str) -> usize {
        self.received().iter().filter(|r| r.path == path).count()
    }

    pub fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }
}

fn auth_ok(prefix: &str, headers: &HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match prefix {
        "/hdr" => get("x-n8n-key") == Some(HEADER_SECRET),
        "/basic" => {
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(BASIC_SECRET)
            );
            get("authorization") == Some(expected.as_str())
        }
        "/bearer" => get("authorization") == Some(&format!("Bearer {BEARER_SECRET}")),
        _ => true,
    }
}

async fn fake_handler(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.received.lock().expect("lock").push(Received {
        method: method.to_string(),
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: body_json.clone(),
    });
    let count = {
        let mut counters = state.counters.lock().expect("lock");
        let c = counters.entry(path.clone()).or_insert(0);
        *c += 1;
        *c
    };
    if let Some(prefix) = path.strip_suffix("/healthz") {
        if prefix == "/down" {
            return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
        }
        if !auth_ok(prefix, &headers) {
            return (StatusCode::FORBIDDEN, "Authorization data is wrong!").into_response();
        }
        return axum::Json(json!({"status": "ok"})).into_response();
    }
    let Some((prefix, name)) = path.split_once("/webhook/") else {
        return (StatusCode::NOT_FOUND, "no route").into_response();
    };
    if !auth_ok(prefix, &headers) {
        return (StatusCode::FORBIDDEN, "Authorization data is wrong!").into_response();
    }
    match name {
        "ok" => {
            axum::Json(json!({"answer": 42, "received_input": body_json["input"]})).into_response()
        }
        "text" => "plain text answer".into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            axum::Json(json!({"slow": true})).into_response()
        }
        "flaky" if count <= 2 => {
            (StatusCode::INTERNAL_SERVER_ERROR, "workflow crashed").into_response()
        }
        "flaky" => axum::Json(json!({"recovered": true, "attempt": count})).into_response(),
        "always500" => (StatusCode::INTERNAL_SERVER_ERROR, "workflow crashed").into_response(),
        "ratelimited" => (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response(),
        "badrequest" => (StatusCode::BAD_REQUEST, "bad").into_response(),
        "big" => "x".repeat(200 * 1024).into_response(),
        "nul" => axum::Json(json!({"text": "a\u{0}b"})).into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({
                "code": 404,
                "message": format!("The requested webhook \"{method} {name}\" is not registered."),
                "hint": "The workflow must be active for a production URL to run successfully."
            })),
        )
            .into_response(),
    }
}

/// automation-worker, run in-process for one test.
pub struct Worker {
    pub stop: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
    }
}

pub fn worker_config(app: &TestApp) -> automation_worker::config::Config {
    let mut config = automation_worker::config::Config::defaults();
    config.common.app_env = shared::config::AppEnv::Development;
    config.listen_addr = "127.0.0.1:0".parse().expect("addr");
    config.nats.nats_subject_prefix = app.config.nats.nats_subject_prefix.clone();
    config.nats.nats_url = app.config.nats.nats_url.clone();
    config.encryption.encryption_key = app.config.encryption.encryption_key.clone();
    config.automation.allow_private_networks = true;
    config.automation.backoff_base = Duration::from_millis(10);
    config.automation.backoff_max = Duration::from_millis(40);
    config.automation.probe_timeout = Duration::from_millis(500);
    config.automation.probe_retries = 1;
    config.automation.reaper_interval = Duration::from_millis(100);
    config.automation.reaper_grace = Duration::from_millis(50);
    config
}

/// Starts automation-worker and waits until it serves (its subscriptions
/// are made before its HTTP server starts).
pub async fn start_worker_with(
    app: &TestApp,
    customize: impl FnOnce(&mut automation_worker::config::Config),
) -> Worker {
    let mut config = worker_config(app);
    customize(&mut config);
    let nats = shared::nats::connect_options(&config.nats, "automation-worker")
        .await
        .expect("NATS options")
        .connect(&config.nats.nats_url)
        .await
        .expect("NATS");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind worker");
    let health = format!("http://{}/health", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let handle = tokio::spawn(automation_worker::startup::run(
        config,
        Connections {
            pool: app.pool.clone(),
            nats,
            listener,
        },
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(resp) = app.client.get(&health).send().await
            && resp.status().is_success()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "automation-worker did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Worker { stop, handle }
}

pub async fn start_worker(app: &TestApp) -> Worker {
    start_worker_with(app, |_| {}).await
}

/// A tenant with an agent, a version and a live call.
#[derive(Debug, Clone, Copy)]
pub struct Seed {
    pub tenant_id: Uuid,
    pub agent_id: Uuid,
    pub version_id: Uuid,
    pub call_id: Uuid,
}

pub async fn seed(pool: &PgPool) -> Seed {
    let tenant_id = Uuid::now_v7();
    let agent_id = Uuid::now_v7();
    let version_id = Uuid::now_v7();
    let call_id = Uuid::now_v7();
    let mut tx = pool.begin().await.expect("tx");
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'Acme')")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await
        .expect("tenant");
    sqlx::query("INSERT INTO agents (id, tenant_id, name) VALUES ($1, $2, 'Front desk')")
        .bind(agent_id)
        .bind(tenant_id)
        .execute(&mut *tx)
        .await
        .expect("agent");
    sqlx::query(
        "INSERT INTO agent_versions (id, tenant_id, agent_id, version, config) VALUES ($1, $2, $3, 3, '{}')",
    )
    .bind(version_id)
    .bind(tenant_id)
    .bind(agent_id)
    .execute(&mut *tx)
    .await
    .expect("version");
    sqlx::query(
        "INSERT INTO call_sessions (id, tenant_id, call_sid, agent_id, agent_version_id, from_number, to_number, status)
         VALUES ($1, $2, $3, $4, $5, '+15550001111', '+15550002222', 'in-progress')",
    )
    .bind(call_id)
    .bind(tenant_id)
    .bind(format!("CA{}", call_id.simple()))
    .bind(agent_id)
    .bind(version_id)
    .execute(&mut *tx)
    .await
    .expect("call");
    tx.commit().await.expect("commit");
    Seed {
        tenant_id,
        agent_id,
        version_id,
        call_id,
    }
}

/// Inserts an integration with its secret sealed as the api seals it.
pub async fn insert_integration(
    app: &TestApp,
    tenant_id: Uuid,
    base_url: &str,
    auth_type: &str,
    header_name: Option<&str>,
    secret: Option<&str>,
) -> Uuid {
    let id = Uuid::now_v7();
    let key = app.config.encryption.key(&app.config.common).expect("key");
    let sealed = secret.map(|s| {
        SecretBox::new(&key)
            .seal(s.as_bytes(), &integration_secret_aad(tenant_id, id))
            .expect("seal")
    });
    sqlx::query(
        "INSERT INTO integrations (id, tenant_id, base_url, auth_type, header_name, secret_ciphertext, secret_nonce, secret_key_id, secret_aad_version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 2)",
    )
    .bind(id)
    .bind(tenant_id)
    .bind(base_url)
    .bind(auth_type)
    .bind(header_name)
    .bind(sealed.as_ref().map(|s| s.ciphertext.clone()))
    .bind(sealed.as_ref().map(|s| s.nonce.clone()))
    .bind(sealed.as_ref().map(|s| s.key_id.clone()))
    .execute(&app.pool)
    .await
    .expect("integration");
    id
}

/// The schema most tests use.
pub fn order_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "minLength": 3},
            "quantity": {"type": "integer", "minimum": 1}
        },
        "required": ["order_id"],
        "additionalProperties": false
    })
}

pub struct ToolSpec<'a> {
    pub name: &'a str,
    pub webhook_path: &'a str,
    pub timeout_ms: i32,
    pub max_retries: i32,
    pub headers_template: Value,
    pub method: &'a str,
}

impl<'a> ToolSpec<'a> {
    pub fn new(name: &'a str, webhook_path: &'a str) -> Self {
        Self {
            name,
            webhook_path,
            timeout_ms: 2000,
            max_retries: 2,
            headers_template: json!({}),
            method: "POST",
        }
    }
}

/// The api's key (every test app uses the same).
pub fn test_secrets() -> SecretBox {
    let config = crate::helpers::test_config();
    SecretBox::new(&config.encryption.key(&config.common).expect("key"))
}

/// A tool, with an endpoint on `integration_id` when given (its header
/// values sealed as the api seals them).
pub async fn insert_tool(
    pool: &PgPool,
    tenant_id: Uuid,
    integration_id: Option<Uuid>,
    spec: ToolSpec<'_>,
) -> Uuid {
    let tool_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO tools (id, tenant_id, name, description, input_schema) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tool_id)
    .bind(tenant_id)
    .bind(spec.name)
    .bind(format!("the {} tool", spec.name))
    .bind(order_schema())
    .execute(pool)
    .await
    .expect("tool");
    if let Some(integration_id) = integration_id {
        let sealed = api::management::tools::seal_headers(
            &test_secrets(),
            tenant_id,
            tool_id,
            integration_id,
            &spec.headers_template,
        )
        .expect("seal");
        sqlx::query(
            "INSERT INTO tool_endpoints (id, tenant_id, tool_id, integration_id, webhook_path, method,
                                         header_names, headers_ciphertext, headers_nonce, headers_key_id,
                                         timeout_ms, max_retries)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(Uuid::now_v7())
        .bind(tenant_id)
        .bind(tool_id)
        .bind(integration_id)
        .bind(spec.webhook_path)
        .bind(spec.method)
        .bind(api::management::tools::header_names(&spec.headers_template))
        .bind(sealed.as_ref().map(|s| s.ciphertext.clone()))
        .bind(sealed.as_ref().map(|s| s.nonce.clone()))
        .bind(sealed.as_ref().map(|s| s.key_id.clone()))
        .bind(spec.timeout_ms)
        .bind(spec.max_retries)
        .execute(pool)
        .await
        .expect("endpoint");
    }
    tool_id
}

pub async fn allow(pool: &PgPool, tenant_id: Uuid, version_id: Uuid, tool_id: Uuid) {
    sqlx::query(
        "INSERT INTO agent_version_tools (tenant_id, agent_version_id, tool_id) VALUES ($1, $2, $3)",
    )
    .bind(tenant_id)
    .bind(version_id)
    .bind(tool_id)
    .execute(pool)
    .await
    .expect("allow");
}

/// `(type, idempotency_key, trace_id)` of a call's timeline, in order.
pub async fn events(pool: &PgPool, call_id: Uuid) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT type, idempotency_key, trace_id FROM call_events WHERE call_id = $1 ORDER BY occurred_at, id",
    )
    .bind(call_id)
    .fetch_all(pool)
    .await
    .expect("events")
}
