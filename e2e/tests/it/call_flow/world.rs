#![allow(dead_code)] // Helpers serve every test module; not each uses all.

use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use reqwest::Client;
use shared::config::NatsArgs;
use shared::nats::Subjects;
use shared::service::Connections;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub const AUTH_TOKEN: &str = "test-twilio-auth-token";
pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// One test's world: a database, a NATS prefix, the ingress in-process.
pub struct World {
    pub pool: PgPool,
    pub prefix: String,
    pub subjects: Subjects,
    pub nats: async_nats::Client,
    pub ingress_base: String,
    /// The ingress's ops listener (`/metrics`), `http://host:port`.
    pub ingress_ops: String,
    pub client: Client,
    pub shutdown: CancellationToken,
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn world(pool: PgPool) -> World {
    world_with_ingress_nats(pool, NATS_URL).await
}

/// The ingress talks to `ingress_nats` (a dead address simulates an outage).
pub async fn world_with_ingress_nats(pool: PgPool, ingress_nats: &str) -> World {
    let prefix = unique_prefix();
    let nats = async_nats::connect(NATS_URL).await.expect("NATS");
    world_on(pool, NatsArgs::plain(ingress_nats, &prefix), nats).await
}

/// The ingress connects with `ingress` (its URL, prefix and credentials);
/// `nats` is the test's own client, which must be allowed to manage the
/// streams.
pub async fn world_on(pool: PgPool, ingress: NatsArgs, nats: async_nats::Client) -> World {
    shared::install_crypto_providers();
    let prefix = ingress.nats_subject_prefix.clone();
    let shutdown = CancellationToken::new();
    let (base, ingress_ops) = start_ingress(pool.clone(), ingress, shutdown.clone()).await;
    let subjects = Subjects::new(&prefix);
    // Streams exist before anyone subscribes or counts.
    let js = async_nats::jetstream::new(nats.clone());
    shared::nats::ensure_streams(&js, &subjects, 1)
        .await
        .expect("streams");
    World {
        pool,
        prefix,
        subjects,
        nats,
        ingress_base: base,
        ingress_ops,
        client: Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        shutdown,
    }
}

/// An ingress in-process on `pool`, connected with `ingress`, until
/// `shutdown`; returns its base URL (also the URL it checks signatures on)
/// and its ops listener's.
async fn start_ingress(
    pool: PgPool,
    ingress: NatsArgs,
    shutdown: CancellationToken,
) -> (String, String) {
    let ingress_nats = ingress.nats_url.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let mut config = webhook_ingress::config::Config::try_parse_from([
        "webhook-ingress",
        "--app-env",
        "development",
    ])
    .expect("defaults");
    config.nats = ingress;
    config.twilio.twilio_auth_token = Some(AUTH_TOKEN.into());
    config.twilio.twilio_webhook_base_url = Some(base.clone());
    config.twilio.twilio_media_stream_url = Some("wss://runtime.example.com/media".into());
    let ingress_client = shared::nats::connect_options(&config.nats, "webhook-ingress")
        .await
        .expect("NATS options")
        .retry_on_initial_connect()
        .connect(ingress_nats)
        .await
        .expect("nats");
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the ops listener");
    let ops_base = format!("http://{}", ops.local_addr().expect("ops addr"));
    tokio::spawn(webhook_ingress::startup::run(
        config,
        Connections {
            pool,
            nats: ingress_client,
            listener,
        },
        ops,
        shutdown,
    ));
    (base, ops_base)
}

pub fn worker_config(prefix: &str) -> dispatch_worker::config::Config {
    let mut config = dispatch_worker::config::Config::try_parse_from([
        "dispatch-worker",
        "--app-env",
        "development",
    ])
    .expect("defaults");
    config.nats.nats_subject_prefix = prefix.to_owned();
    config.nats.nats_url = NATS_URL.into();
    config.encryption.encryption_key = Some(shared::config::DEV_ENCRYPTION_KEY.into());
    config.relay_publish_after = Duration::from_millis(500);
    config.relay_interval = Duration::from_millis(200);
    config
}

impl World {
    /// The dispatch-worker in-process; stops with the world. Returns its
    /// ops listener (`/metrics`), `http://host:port`.
    pub async fn spawn_worker(
        &self,
        customize: impl FnOnce(&mut dispatch_worker::config::Config),
    ) -> String {
        let mut config = worker_config(&self.prefix);
        customize(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let ops = format!("http://{}", listener.local_addr().expect("ops addr"));
        tokio::spawn(dispatch_worker::startup::run(
            config,
            Connections {
                pool: self.pool.clone(),
                nats: self.nats.clone(),
                listener,
            },
            self.shutdown.clone(),
        ));
        ops
    }

    /// The value of `series` (a metric name with its labels, as exported)
    /// on the ops listener `ops`, if exported.
    pub async fn metric(&self, ops: &str, series: &str) -> Option<f64> {
        let text = self
            .client
            .get(format!("{ops}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    /// The real dispatch-worker binary as a child process.
    pub fn spawn_worker_binary(&self) -> tokio::process::Child {
        tokio::process::Command::new(e2e::binary("dispatch-worker"))
            .env("APP_ENV", "development")
            .env("DATABASE_URL", database_url(&self.pool))
            .env("NATS_URL", NATS_URL)
            .env("NATS_SUBJECT_PREFIX", &self.prefix)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("ENCRYPTION_KEY", shared::config::DEV_ENCRYPTION_KEY)
            .env("RELAY_PUBLISH_AFTER", "500ms")
            .env("RELAY_INTERVAL", "200ms")
            .env("RELAY_REPUBLISH_AFTER", "3s")
            .env("LOG_FORMAT", "pretty")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start dispatch-worker")
    }

    /// Another ingress instance on the same database and prefix, with a
    /// pool of its own (as a second process would have); returns its base
    /// URL for [`World::post_signed_to`].
    pub async fn spawn_ingress(&self) -> String {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&database_url(&self.pool))
            .await
            .expect("a pool of its own");
        start_ingress(
            pool,
            NatsArgs::plain(NATS_URL, &self.prefix),
            self.shutdown.clone(),
        )
        .await
        .0
    }

    pub async fn post_signed(&self, path: &str, params: &[(String, String)]) -> (u16, String) {
        self.post_signed_to(&self.ingress_base, path, params).await
    }

    /// A signed webhook to the ingress at `base`.
    pub async fn post_signed_to(
        &self,
        base: &str,
        path: &str,
        params: &[(String, String)],
    ) -> (u16, String) {
        let url = format!("{base}{path}");
        let signature = shared::twilio::compute_signature(AUTH_TOKEN, &url, params);
        self.post_to(base, path, params, &signature).await
    }

    pub async fn post(
        &self,
        path: &str,
        params: &[(String, String)],
        signature: &str,
    ) -> (u16, String) {
        self.post_to(&self.ingress_base, path, params, signature)
            .await
    }

    async fn post_to(
        &self,
        base: &str,
        path: &str,
        params: &[(String, String)],
        signature: &str,
    ) -> (u16, String) {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let resp = self
            .client
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    pub async fn scalar(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("scalar")
    }

    pub async fn stream_messages(&self, stream: &str) -> u64 {
        shared::testing::stream_messages(&self.nats, stream).await
    }

    pub async fn stream_last_sequence(&self, stream: &str) -> u64 {
        shared::testing::stream_last_sequence(&self.nats, stream).await
    }

    pub async fn delete_streams(&self) {
        shared::testing::delete_streams(&self.nats, &self.subjects).await;
    }
}

pub use shared::testing::RoutedNumber as Seeded;
pub use shared::testing::{database_url, eventually, unique_prefix};

/// A tenant, an agent whose active version is 3, and an active number.
pub async fn seed_number(pool: &PgPool, e164: &str) -> Seeded {
    shared::testing::seed_routed_number(pool, e164, 3)
        .await
        .expect("seed a routed number")
}

pub fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub fn inbound_params(call_sid: &str, to: &str) -> Vec<(String, String)> {
    params(&[
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("CallSid", call_sid),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", "+14155550100"),
        ("To", to),
    ])
}
