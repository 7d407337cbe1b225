//! The automation-worker in-process for one test, on the test app's NATS
//! prefix and key.

use std::time::Duration;

use api::testing::TestApp;
use shared::service::Connections;
use tokio_util::sync::CancellationToken;

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
