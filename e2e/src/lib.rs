//! End-to-end tests: the binaries together, against the local Postgres and
//! NATS. `tests/it/call_flow` drives signed Twilio webhooks through the
//! ingress, the dispatch-worker and the api's claim; `tests/it/automation`
//! sends tool calls through the api and the automation-worker to a fake
//! n8n; `tests/faults.rs` kills and restarts the real binaries under load.
//!
//! No binary crate depends on another, not even for its tests: what starts
//! several binaries lives here. This library finds the binaries those tests
//! run as processes, building them first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `target/<profile>/<name>`, built for this run: the first call in a test
/// process builds the workspace (with the running test's profile and target
/// folder), so a test never starts a binary older than the code it tests.
/// After `scripts/test.sh`'s own build this is a check that finds nothing
/// to do.
pub fn binary(name: &str) -> PathBuf {
    static PROFILE_DIR: OnceLock<PathBuf> = OnceLock::new();
    let bin = PROFILE_DIR.get_or_init(build_workspace).join(name);
    assert!(
        bin.exists(),
        "{} is not a binary of this workspace",
        bin.display()
    );
    bin
}

fn build_workspace() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // Test executables are `target/<profile>/deps/<name>-<hash>`.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("target/<profile> has a parent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    // The same selection as scripts/build.sh (the test run's own build and
    // dev-up's), so nothing is built twice with different features.
    build
        .args(["build", "--quiet", "--workspace", "--all-targets"])
        .env("CARGO_TARGET_DIR", target_dir);
    // Cargo gives the test process its package's variables (CARGO_PKG_NAME,
    // CARGO_MANIFEST_DIR, ...). Build scripts such as ring's declare
    // `rerun-if-env-changed` on them, so a nested build that inherited them
    // would rebuild those crates (and everything above) for this run and
    // again for the next plain build.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_CFG_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || ["CARGO_TARGET_TMPDIR", "CARGO_PRIMARY_PACKAGE", "OUT_DIR"].contains(&name)
        {
            build.env_remove(name);
        }
    }
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cargo could not build the workspace");
    profile_dir
}
