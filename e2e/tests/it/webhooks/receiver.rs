//! A tenant's webhook receiver on `127.0.0.1:0`: records every request and
//! answers each path by a script (statuses, `Retry-After`, delays, or
//! holding the request until the test lets it go); 200 once the script is
//! used up. Signatures are checked with the Standard Webhooks library.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::Semaphore;

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    /// A status with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
    /// 200 after a pause.
    Delay(Duration),
    /// 200 once the test calls [`Receiver::release`].
    Hold,
}

/// One request received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When the request arrived.
    pub at: std::time::Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn webhook_id(&self) -> String {
        self.header("webhook-id")
    }

    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// Whether a Standard Webhooks verifier with `secret` accepts it.
    pub fn verifies_with(&self, secret: &str) -> bool {
        let webhook = standardwebhooks::Webhook::new(secret).expect("secret");
        webhook.verify(&self.body, &self.headers).is_ok()
    }
}

struct Shared {
    received: Mutex<Vec<Received>>,
    scripts: Mutex<HashMap<String, VecDeque<Answer>>>,
    /// Permits for held requests.
    held: Semaphore,
}

pub struct Receiver {
    pub base: String,
    shared: Arc<Shared>,
}

impl Receiver {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            received: Mutex::default(),
            scripts: Mutex::default(),
            held: Semaphore::new(0),
        });
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, shared }
    }

    /// The URL of `path` (`/hooks/a`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Answers the next requests to `path` so, in order.
    pub fn script(&self, path: &str, answers: impl IntoIterator<Item = Answer>) {
        self.shared
            .scripts
            .lock()
            .expect("lock")
            .entry(path.to_owned())
            .or_default()
            .extend(answers);
    }

    /// Lets every held request (and as many future ones) through.
    pub fn release(&self, requests: usize) {
        self.shared.held.add_permits(requests);
    }

    pub fn received(&self, path: &str) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` has received `n` requests (at most 20 s).
    pub async fn wait_for(&self, path: &str, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let received = self.received(path);
            if received.len() >= n {
                return received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} received {} of {n} requests",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    shared.received.lock().expect("lock").push(Received {
        at: std::time::Instant::now(),
        path: path.clone(),
        headers,
        body,
    });
    let next = shared
        .scripts
        .lock()
        .expect("lock")
        .get_mut(&path)
        .and_then(VecDeque::pop_front);
    match next {
        None => StatusCode::OK.into_response(),
        Some(Answer::Status(status)) => status_code(status).into_response(),
        Some(Answer::RetryAfter(status, seconds)) => {
            (status_code(status), [("retry-after", seconds.to_string())]).into_response()
        }
        Some(Answer::Delay(pause)) => {
            tokio::time::sleep(pause).await;
            StatusCode::OK.into_response()
        }
        Some(Answer::Hold) => {
            if let Ok(permit) = shared.held.acquire().await {
                permit.forget();
            }
            StatusCode::OK.into_response()
        }
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).expect("status")
}
