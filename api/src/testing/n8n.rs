//! A fake n8n on `127.0.0.1:0`: a real HTTP server that answers, delays,
//! fails and checks the auth headers the way a tenant's n8n would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

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
