#!/usr/bin/env bash
# The whole test suite: unit tests, and the root integration tests that load the real kernel
# programs. Installs prerequisites first (idempotent), so it also works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-prereqs.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Formatting and lints gate the suite: the agent, the tests, the bench, and the kernel crate
# for its own target.
cargo fmt --all --check
cargo clippy --release --all-targets -- -D warnings
(cd watcher-ebpf && cargo clippy --release --target bpfel-unknown-none -Z build-std=core -- -D warnings)
cargo build --release --bins
cargo test --release --no-fail-fast -- --test-threads="${WATCHER_TEST_THREADS:-2}"
# The fuzz targets, briefly (about 75 s in all; WATCHER_FUZZ_SECONDS per target).
bash scripts/fuzz.sh
bash scripts/check-leftovers.sh
