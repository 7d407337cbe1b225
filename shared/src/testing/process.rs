//! A binary of this workspace run as its own process, as an operator runs
//! it: for what only the whole binary shows (its log lines, how it starts
//! while a dependency is down).

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A running binary whose stdout and stderr are collected; killed on drop.
pub struct RunningBinary {
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl RunningBinary {
    /// Starts `binary` (`CARGO_BIN_EXE_<name>`) with a cleared environment,
    /// JSON logs at `info`, and `env` on top.
    ///
    /// # Panics
    /// When the binary cannot be started: a test set-up error.
    pub fn start(binary: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(binary)
            .env_clear()
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let streams: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for mut stream in streams.into_iter().flatten() {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]);
                    output
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&text);
                }
            }));
        }
        Self {
            child,
            output,
            readers,
        }
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Its exit status, once it has exited.
    ///
    /// # Panics
    /// When the process cannot be waited for.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for the binary")
    }

    /// Stops it (SIGKILL: what it logged is already written) and returns
    /// everything it printed.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        self.output()
    }

    /// The JSON log lines it printed so far (others are skipped).
    pub fn log_lines(output: &str) -> Vec<serde_json::Value> {
        output
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `url` until it answers `status` or `timeout` passes; true if it did.
pub async fn wait_for_status(url: &str, status: u16, timeout: std::time::Duration) -> bool {
    // Each try bounded: a port that is bound but not served accepts the
    // connection and never answers.
    let Ok(client) = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
    else {
        return false;
    };
    super::eventually(timeout, || {
        let request = client.get(url).send();
        async move { request.await.is_ok_and(|r| r.status().as_u16() == status) }
    })
    .await
}

/// Starts `binary` against Postgres on 127.0.0.1 and a NATS that does not
/// answer, and checks what an orchestrator needs to see within 30 s: alive
/// on `/health`, and `/health/ready` answering 503 that names NATS, on the
/// address the binary takes from `ops_addr_var`. `env` adds the binary's own
/// settings.
///
/// # Panics
/// When it does not: this is the assertion.
pub async fn assert_alive_and_not_ready_while_nats_is_down(
    binary: &str,
    ops_addr_var: &str,
    env: &[(&str, &str)],
) {
    assert_readiness_while_nats_is_down(binary, ops_addr_var, env, 503).await;
}

/// [`assert_alive_and_not_ready_while_nats_is_down`] for a binary whose
/// readiness does not depend on NATS (the ingress): `/health/ready`
/// answers `ready_status`, and reports NATS failing either way.
pub async fn assert_readiness_while_nats_is_down(
    binary: &str,
    ops_addr_var: &str,
    env: &[(&str, &str)],
    ready_status: u16,
) {
    let port = super::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut all = vec![
        ("APP_ENV", "development"),
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        ),
        ("NATS_URL", "nats://127.0.0.1:1"),
        ("LISTEN_ADDR", "127.0.0.1:0"),
        (ops_addr_var, listen.as_str()),
    ];
    all.extend_from_slice(env);
    let mut running = RunningBinary::start(binary, &all);
    let health = format!("http://{listen}/health");
    let alive = wait_for_status(&health, 200, std::time::Duration::from_secs(30)).await;
    assert!(
        alive,
        "{binary} did not serve /health within 30 s (exited: {:?}): {}",
        running.exited(),
        running.output()
    );
    let resp = reqwest::Client::new()
        .get(format!("{health}/ready"))
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .expect("readiness answers");
    assert_eq!(resp.status().as_u16(), ready_status);
    let body: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(body["checks"]["nats"]["status"], "error", "{body}");
    assert_eq!(body["checks"]["postgres"]["status"], "ok", "{body}");
    assert!(running.exited().is_none(), "{}", running.output());
}
