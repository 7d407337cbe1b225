//! The api binary itself: with `APP_ENV` unset it runs as production and
//! refuses the development secrets and short bootstrap keys before it
//! touches anything.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shared::config::{DEV_ENCRYPTION_KEY, DEV_JWT_SECRET};

/// Runs the api with nothing but `env` (the caller's environment is cleared,
/// so `APP_ENV` is unset unless given) and unreachable Postgres and NATS;
/// returns whether it exited successfully and its stderr.
fn run_api(env: &[(&str, &str)]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_api"))
        .env_clear()
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/unreachable",
        )
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "pretty")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the api binary");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the api did not exit");
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
fn api_without_app_env_refuses_development_secrets() {
    let (ok, stderr) = run_api(&[
        ("JWT_SECRET", DEV_JWT_SECRET),
        ("ENCRYPTION_KEY", DEV_ENCRYPTION_KEY),
        ("AUTH_BOOTSTRAP_KEY", "short-bootstrap-key"),
    ]);
    assert!(!ok, "started: {stderr}");
    for expected in [
        "refusing to start with APP_ENV=production",
        "JWT_SECRET is the development secret",
        "ENCRYPTION_KEY is the development key",
        "AUTH_BOOTSTRAP_KEY must be at least 32 characters",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in: {stderr}");
    }
}

#[test]
fn api_without_app_env_refuses_missing_secrets() {
    let (ok, stderr) = run_api(&[]);
    assert!(!ok, "started: {stderr}");
    for expected in [
        "refusing to start with APP_ENV=production",
        "JWT_SECRET is required in production",
        "ENCRYPTION_KEY is required in production",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in: {stderr}");
    }
}

#[test]
fn api_in_development_accepts_development_secrets() {
    let (ok, stderr) = run_api(&[
        ("APP_ENV", "development"),
        ("JWT_SECRET", DEV_JWT_SECRET),
        ("ENCRYPTION_KEY", DEV_ENCRYPTION_KEY),
        ("AUTH_BOOTSTRAP_KEY", "short-bootstrap-key"),
    ]);
    // Past the checks, it stops at the unreachable Postgres.
    assert!(!ok, "started: {stderr}");
    assert!(!stderr.contains("refusing to start"), "{stderr}");
    assert!(stderr.contains("cannot reach Postgres"), "{stderr}");
}
