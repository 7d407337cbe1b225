//! The webhook-ingress binary itself: with `APP_ENV` unset it runs as
//! production and refuses unsigned webhooks before it touches anything.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the ingress with nothing but `env` (the caller's environment is
/// cleared, so `APP_ENV` is unset unless given) and unreachable Postgres and
/// NATS; returns whether it exited successfully and its stderr.
fn run_ingress(env: &[(&str, &str)]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_webhook-ingress"))
        .env_clear()
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/unreachable",
        )
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("ENCRYPTION_KEY", shared::testing::ENCRYPTION_KEY)
        .env("LOG_FORMAT", "pretty")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the webhook-ingress binary");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("webhook-ingress did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (status.success(), stderr)
}

#[test]
fn ingress_without_app_env_refuses_unvalidated_signatures() {
    let (ok, stderr) = run_ingress(&[("TWILIO_VALIDATE_SIGNATURE", "false")]);
    assert!(!ok, "started: {stderr}");
    assert!(
        stderr.contains("refusing to start with APP_ENV=production")
            && stderr.contains("TWILIO_VALIDATE_SIGNATURE=false is refused"),
        "{stderr}"
    );
}
