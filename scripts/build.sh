#!/usr/bin/env bash
# The one build of the workspace that scripts/dev-up.sh, scripts/test.sh and
# the end-to-end tests (e2e::binary) all use: the same targets and features,
# so whichever runs second finds nothing to compile. The target folder is
# outside the clone and reused between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vcp-target}"
if [ ! -d "$CARGO_TARGET_DIR/debug" ]; then
  echo "building the workspace for the first time: about 10 minutes on 2 cores;"
  echo "later runs build only what changed. Progress below."
fi
cargo build --workspace --all-targets --locked
