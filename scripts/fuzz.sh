#!/usr/bin/env bash
# Run every fuzz target of watcher/fuzz briefly (default 15 s each: WATCHER_FUZZ_SECONDS) from
# its seed corpus. A crash fails the run; libFuzzer writes the input to
# watcher/fuzz/artifacts/TARGET/. Keep it as a regression seed: copy it into
# watcher/fuzz/seeds/TARGET/ (every seed is run again on each run) and fix the bug.
set -euo pipefail
cd "$(dirname "$0")/../watcher"
export PATH="$HOME/.cargo/bin:$PATH"
SECONDS_EACH="${WATCHER_FUZZ_SECONDS:-15}"
# No eBPF object is needed to fuzz userspace parsers.
export AYA_BUILD_SKIP=1
targets=(dns_parse policy_parse daemon_config event_log record_decode)
cargo fuzz build -O
for t in "${targets[@]}"; do
  corpus="$(mktemp -d "${TMPDIR:-/tmp}/watcher-fuzz-$t-$$-XXXXXX")"
  trap 'rm -rf "$corpus"' EXIT
  cp -r "fuzz/seeds/$t/." "$corpus/" 2>/dev/null || true
  echo "fuzz: $t for ${SECONDS_EACH}s" >&2
  # The corpus grows in a temporary copy: the seed directory holds only chosen inputs.
  cargo fuzz run -O "$t" "$corpus" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=0 2>&1 | tail -n 40 >&2
  rm -rf "$corpus"
  trap - EXIT
done
