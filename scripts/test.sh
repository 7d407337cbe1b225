#!/usr/bin/env bash
# The whole test suite: starts Postgres and NATS when they are not up, then
# runs every crate's unit and integration tests against them.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh

# Tests create one database per test (#[sqlx::test]) from this superuser URL.
export DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
# A cargo target folder outside the clone, reused between runs.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vcp-target}"
export RUST_LOG="${RUST_LOG:-warn}"

cargo build --workspace --all-targets --locked
cargo test --workspace --locked "$@"
