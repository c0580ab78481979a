#!/usr/bin/env bash
# Installs everything watcher needs to build and test, idempotently.
# Each step checks first and skips what is already there, so a second run is quick.
set -euo pipefail

TOOLCHAIN="nightly-2026-07-15"
BPF_LINKER_VERSION="0.13.0"
LLVM_PREFIX="/usr/lib/llvm-22"
DEBS=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev bpftool iproute2 python3 python3-venv python3-pip
      python3-setuptools python3-wheel curl gzip procps strace tar tmux)

say() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi

if ! command -v rustup >/dev/null 2>&1; then
  say "rustup is required (https://rustup.rs) and was not found on PATH"; exit 1
fi
if ! rustup toolchain list | grep -q "^${TOOLCHAIN}"; then
  say "installing Rust toolchain ${TOOLCHAIN} with rust-src"
  rustup toolchain install "$TOOLCHAIN" --profile minimal --component rust-src,clippy,rustfmt
else
  rustup component list --toolchain "$TOOLCHAIN" --installed | grep -q '^rust-src' \
    || rustup component add rust-src --toolchain "$TOOLCHAIN"
  say "Rust toolchain ${TOOLCHAIN} present"
fi

if command -v bpf-linker >/dev/null 2>&1 && bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  say "bpf-linker ${BPF_LINKER_VERSION} present"
else
  say "building bpf-linker ${BPF_LINKER_VERSION} against LLVM 22 (1-3 minutes)"
  LLVM_PREFIX="$LLVM_PREFIX" LLVM_SYS_220_PREFIX="$LLVM_PREFIX" PATH="$LLVM_PREFIX/bin:$PATH" \
    cargo +"$TOOLCHAIN" install bpf-linker --version "$BPF_LINKER_VERSION" --locked \
      --no-default-features --features llvm-22
fi

# The package-manager tests run real npm, pip and cargo installs against registries the tests
# serve on loopback. npm comes with Node.js: the machine image has it; say so plainly if not.
if ! command -v npm >/dev/null 2>&1; then
  say "npm not found: installing Debian's nodejs and npm"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi

# tracefs is needed for tracepoint format files and attaching.
if [ ! -e /sys/kernel/tracing/events ] && [ "$(id -u)" -eq 0 ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi
say "prerequisites ready"
