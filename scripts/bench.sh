#!/usr/bin/env bash
# Build in release and run every watcher benchmark, printing their tables.
# Usage: scripts/bench.sh   (each subcommand runs with its defaults; see watcher-bench SUB --help)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p watcher-bench >&2
bench=target/release/watcher-bench
# Every subcommand the binary has (other benchmarks join as they are added).
subcommands=$("$bench" --help | awk '/^Commands:/{on=1; next} on && /^  [a-z]/{print $1}' | grep -v '^help$')
for sub in $subcommands; do
    echo "== watcher-bench $sub"
    "$bench" "$sub"
    echo
done
