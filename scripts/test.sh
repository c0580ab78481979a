#!/usr/bin/env bash
# The whole test suite: unit tests, and the root integration tests that load the real kernel
# programs. Installs prerequisites first (idempotent), so it also works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-prereqs.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bins
cargo test --release --no-fail-fast -- --test-threads="${WATCHER_TEST_THREADS:-2}"
# The fuzz targets, briefly (about 75 s in all; WATCHER_FUZZ_SECONDS per target).
bash scripts/fuzz.sh
bash scripts/check-leftovers.sh
