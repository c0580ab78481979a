#!/usr/bin/env bash
# One command from a fresh clone: install every prerequisite, build watcher, and run a short
# demo under `watcher run`. Idempotent: a second run skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-prereqs.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "[setup] building target/release/watcher" >&2
cargo build --release --bins

if [ "${1:-}" = "--no-demo" ]; then
  exit 0
fi
exec bash scripts/demo.sh
