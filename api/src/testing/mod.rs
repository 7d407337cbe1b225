//! Test support (feature `test-support`), for the api's own tests and the
//! end-to-end crate: `spawn_app` runs the api as it runs in production, on
//! `127.0.0.1:0`, against the test's database and a unique NATS prefix; a
//! fake n8n (`n8n`) and rows inserted with SQL (`fixtures`).

pub mod fixtures;
pub mod n8n;

use std::sync::Arc;
use std::time::Duration;

use crate::auth::password::PasswordHasher;
use crate::config::Config;
use clap::Parser;
use reqwest::{Client, Response};
use serde_json::Value;
use shared::auth::{JwtKeys, Role};
use sqlx::PgPool;
use uuid::Uuid;

pub const DEV_KEY: &str = "test-dev-bootstrap-key";
pub const AUTH_KEY: &str = "test-auth-bootstrap-key";

pub struct TestApp {
    pub addr: String,
    pub client: Client,
    pub pool: PgPool,
    pub jwt: Arc<JwtKeys>,
    pub nats: async_nats::Client,
    pub subjects: shared::nats::Subjects,
    pub config: Config,
    /// The app's password hasher (its slots are shared with the app).
    pub passwords: PasswordHasher,
}

pub use shared::testing::unique_prefix;

pub fn test_config() -> Config {
    // Development explicitly: the default is production, and a flag wins over
    // an APP_ENV in the caller's environment.
    let mut config =
        Config::try_parse_from(["api", "--app-env", "development"]).expect("config parses");
    config.listen_addr = "127.0.0.1:0".parse().expect("addr");
    config.nats.nats_url = "nats://127.0.0.1:4222".into();
    config.nats.nats_subject_prefix = unique_prefix();
    config.dev_bootstrap_key = Some(DEV_KEY.into());
    config.auth_bootstrap_key = Some(AUTH_KEY.into());
    config.auth.jwt_secret = Some("test-secret-that-is-long-enough-for-prod-0123".into());
    config.encryption.encryption_key = Some(shared::testing::ENCRYPTION_KEY.into());
    config.automation_require_agent_tool_mapping = None;
    config
}

pub async fn spawn_app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, |_| {}).await
}

pub async fn spawn_app_with(pool: PgPool, customize: impl FnOnce(&mut Config)) -> TestApp {
    shared::install_crypto_providers();
    let mut config = test_config();
    customize(&mut config);
    let secret = config.auth.secret(&config.common).expect("jwt secret");
    let key = config.encryption.key(&config.common).expect("key");
    let nats = shared::nats::connect_options(&config.nats, "api")
        .await
        .expect("NATS options")
        .connect(&config.nats.nats_url)
        .await
        .expect("NATS on 127.0.0.1:4222");
    let mut state = crate::startup::build_state(&config, pool.clone(), nats.clone(), &secret, &key)
        .expect("state");
    state.passwords = PasswordHasher::insecure_fast_for_tests().expect("hasher");
    let jwt = state.jwt.clone();
    let subjects = state.subjects.clone();
    let passwords = state.passwords.clone();
    let app = crate::startup::router(state, shared::telemetry::install_metrics(), &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(shared::http::serve(listener, app, std::future::pending()));
    TestApp {
        addr,
        client: Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        pool,
        jwt,
        nats,
        subjects,
        config,
        passwords,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// A token for `tenant_id` with `role` (internal roles get is_internal).
    pub fn token(&self, tenant_id: Uuid, role: Role) -> String {
        self.jwt
            .issue(
                "test-user",
                tenant_id,
                role,
                role.is_internal(),
                Duration::from_secs(600),
            )
            .expect("token")
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let mut req = self.client.post(self.url(path)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    /// Inserts a tenant directly and returns its id.
    pub async fn create_tenant(&self, name: &str) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $2)")
            .bind(id)
            .bind(name)
            .execute(&self.pool)
            .await
            .expect("insert tenant");
        id
    }

    pub async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {table}");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }
}

/// Status and JSON body of a response.
pub async fn status_json(resp: Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}
