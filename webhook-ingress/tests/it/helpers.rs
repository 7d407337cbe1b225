#![allow(dead_code)] // Helpers serve every test module; not each uses all.

use std::time::Duration;

use clap::Parser;
use reqwest::Client;
use shared::nats::Subjects;
use shared::service::Connections;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use webhook_ingress::config::Config;

pub const AUTH_TOKEN: &str = "test-twilio-auth-token";

pub struct TestIngress {
    pub base: String,
    /// The ops listener: readiness details and metrics.
    pub ops: String,
    pub client: Client,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub subjects: Subjects,
    pub shutdown: CancellationToken,
}

impl Drop for TestIngress {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn config_for(prefix: &str, base: &str) -> Config {
    let mut config = Config::try_parse_from(["webhook-ingress", "--app-env", "development"])
        .expect("defaults parse");
    config.nats.nats_subject_prefix = prefix.to_owned();
    config.twilio.twilio_auth_token = Some(AUTH_TOKEN.into());
    config.twilio.twilio_webhook_base_url = Some(base.to_owned());
    config.twilio.twilio_media_stream_url = Some("wss://runtime.example.com/media".into());
    config.twilio.twilio_media_stream_token = Some("stream\"token&<x>".into());
    config
}

pub async fn spawn_ingress(pool: PgPool) -> TestIngress {
    spawn_ingress_with(pool, "nats://127.0.0.1:4222", |_| {}).await
}

pub async fn spawn_ingress_with(
    pool: PgPool,
    nats_url: &str,
    customize: impl FnOnce(&mut Config),
) -> TestIngress {
    shared::install_crypto_providers();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ops_base = format!("http://{}", ops.local_addr().expect("addr"));
    let prefix = unique_prefix();
    let mut config = config_for(&prefix, &base);
    config.nats.nats_url = nats_url.to_owned();
    customize(&mut config);
    let nats = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats_url)
        .await
        .expect("nats client");
    let shutdown = CancellationToken::new();
    tokio::spawn(webhook_ingress::startup::run(
        config,
        Connections {
            pool: pool.clone(),
            nats: nats.clone(),
            listener,
        },
        ops,
        shutdown.clone(),
    ));
    TestIngress {
        base,
        ops: ops_base,
        client: Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        pool,
        nats,
        subjects: Subjects::new(&prefix),
        shutdown,
    }
}

pub use shared::testing::RoutedNumber as Seeded;
pub use shared::testing::{delete_streams, eventually, stream_messages, unique_prefix};

/// A tenant, an agent whose active version is 1, and an active number.
pub async fn seed_number(pool: &PgPool, e164: &str) -> Seeded {
    shared::testing::seed_routed_number(pool, e164, 1)
        .await
        .expect("seed a routed number")
}

pub fn inbound_params(call_sid: &str, to: &str) -> Vec<(String, String)> {
    [
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call_sid),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", "+14155550100"),
        ("To", to),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

impl TestIngress {
    /// Posts `params` to `path`, signed as Twilio would sign it.
    pub async fn post_signed(&self, path: &str, params: &[(String, String)]) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let signature = shared::twilio::compute_signature(AUTH_TOKEN, &url, params);
        self.post_raw(path, params, Some(&signature)).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        params: &[(String, String)],
        signature: Option<&str>,
    ) -> (u16, String) {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(sig) = signature {
            req = req.header("x-twilio-signature", sig);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }
}
