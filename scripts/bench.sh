#!/usr/bin/env bash
# Benchmarks (root): builds release, runs `watcher-bench all` and prints one table of measured
# figures (npm ci overhead and agent memory, exec/connect storms, kernel-to-alert latency),
# then the replay benchmark's own table (events/s and peak memory of `watcher replay`).
# Extra arguments go to `watcher-bench all`, e.g. `scripts/bench.sh --runs 3 --packages 200`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "scripts/bench.sh: run as root (watcher loads eBPF programs)" >&2
    exit 1
fi
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bins
target/release/watcher-bench all "$@"
echo
echo "== the file sensor's cost (npm ci: bare, file sensor on, off)"
target/release/watcher-bench npm-files
echo
echo "== replay (one core, no root needed)"
target/release/watcher-bench replay
