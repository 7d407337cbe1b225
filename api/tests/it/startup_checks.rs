//! The api binary itself: with `APP_ENV` unset it runs as production and
//! refuses the development secrets and short bootstrap keys before it
//! touches anything.

use shared::config::{DEV_ENCRYPTION_KEY, DEV_JWT_SECRET};

/// The api binary, run until it exits (see `shared::testing::run_until_exit`).
fn run_api(env: &[(&str, &str)]) -> (bool, String) {
    shared::testing::run_until_exit(env!("CARGO_BIN_EXE_api"), env)
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
