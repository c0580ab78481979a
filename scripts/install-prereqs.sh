#!/usr/bin/env bash
# Installs everything watcher needs to build and test, idempotently.
# Each step checks first and skips what is already there, so a second run is quick.
set -euo pipefail

TOOLCHAIN="nightly-2026-07-15"
BPF_LINKER_VERSION="0.13.0"
LLVM_PREFIX="/usr/lib/llvm-22"
DEBS=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev bpftool iproute2 python3 python3-venv python3-pip
      python3-setuptools python3-wheel curl gzip procps strace tar time tmux)

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

# The fuzz targets (watcher/fuzz, run briefly by scripts/fuzz.sh from scripts/test.sh) are
# built by cargo-fuzz with libFuzzer on the pinned nightly.
CARGO_FUZZ_VERSION="0.13.2"
if command -v cargo-fuzz >/dev/null 2>&1 && cargo-fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  say "cargo-fuzz ${CARGO_FUZZ_VERSION} present"
else
  say "installing cargo-fuzz ${CARGO_FUZZ_VERSION}"
  cargo +"$TOOLCHAIN" install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# The package-manager tests run real npm, pip and cargo installs against registries the tests
# serve on loopback. npm comes with Node.js: the machine image has it; say so plainly if not.
if ! command -v npm >/dev/null 2>&1; then
  say "npm not found: installing Debian's nodejs and npm"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi

# The attack lab (tests/src/lab.rs, tests/tests/lab_scenarios.rs) runs real registries: verdaccio
# (from the npm registry) and pypiserver (from PyPI), pinned, under /opt/watcher-lab (override
# with WATCHER_LAB_DIR); nothing is installed globally. verdaccio 6.8.0 is the newest release
# that runs on Node.js 20 (6.9 needs Node.js 22). The override pins node-fetch to the release
# verdaccio-audit asks for through the `cjs` dist-tag, which not every registry mirror carries.
VERDACCIO_VERSION="6.8.0"
PYPISERVER_VERSION="2.4.2"
LAB_DIR="${WATCHER_LAB_DIR:-/opt/watcher-lab}"
VERDACCIO_DIR="$LAB_DIR/verdaccio-$VERDACCIO_VERSION"
if [ -f "$VERDACCIO_DIR/node_modules/verdaccio/package.json" ] \
   && grep -q "\"version\": \"$VERDACCIO_VERSION\"" "$VERDACCIO_DIR/node_modules/verdaccio/package.json"; then
  say "verdaccio ${VERDACCIO_VERSION} present"
else
  say "installing verdaccio ${VERDACCIO_VERSION} into ${VERDACCIO_DIR}"
  $SUDO mkdir -p "$VERDACCIO_DIR"
  printf '{"name":"watcher-lab-verdaccio","private":true,"dependencies":{"verdaccio":"%s"},"overrides":{"node-fetch":"2.7.0"}}\n' \
    "$VERDACCIO_VERSION" | $SUDO tee "$VERDACCIO_DIR/package.json" >/dev/null
  (cd "$VERDACCIO_DIR" && $SUDO npm install --no-audit --no-fund --omit=dev --loglevel=error)
fi
PYPISERVER_DIR="$LAB_DIR/pypiserver-$PYPISERVER_VERSION"
if [ -x "$PYPISERVER_DIR/bin/pypi-server" ] \
   && [ "$("$PYPISERVER_DIR/bin/pypi-server" --version 2>/dev/null)" = "$PYPISERVER_VERSION" ]; then
  say "pypiserver ${PYPISERVER_VERSION} present"
else
  say "installing pypiserver ${PYPISERVER_VERSION} into a venv at ${PYPISERVER_DIR}"
  $SUDO mkdir -p "$LAB_DIR"
  $SUDO /usr/bin/python3 -m venv "$PYPISERVER_DIR"
  $SUDO "$PYPISERVER_DIR/bin/pip" install --quiet --disable-pip-version-check "pypiserver==$PYPISERVER_VERSION"
fi

# The other package managers (tests/tests/package_managers.rs, the real-package corpus): each
# pinned, from its own ecosystem's default registry, under $LAB_DIR/pm (nothing global, nothing on
# the default PATH). The tests put $LAB_DIR/pm/bin (or $LAB_DIR/pm/berry-bin for yarn berry) first on
# PATH. pnpm, yarn classic, yarn berry (@yarnpkg/cli-dist) and bun (its npm package, which
# brings the binary as an optional dependency) from the npm registry; uv and poetry from PyPI
# into one venv.
PNPM_VERSION="10.34.8"
YARN_CLASSIC_VERSION="1.22.22"
YARN_BERRY_VERSION="4.18.1"
BUN_VERSION="1.4.5"
UV_VERSION="0.13.9"
POETRY_VERSION="2.5.1"
PM_DIR="$LAB_DIR/pm"
npm_tool() { # DIR PACKAGE VERSION BIN: install PACKAGE@VERSION into DIR unless BIN --version says VERSION
  local dir="$1" pkg="$2" version="$3" bin="$4"
  if [ -x "$dir/node_modules/.bin/$bin" ] \
     && [ "$("$dir/node_modules/.bin/$bin" --version 2>/dev/null)" = "$version" ]; then
    say "$pkg ${version} present"
    return
  fi
  say "installing $pkg ${version} into ${dir}"
  $SUDO mkdir -p "$dir"
  printf '{"name":"watcher-lab-%s","private":true,"dependencies":{"%s":"%s"}}\n' "$bin" "$pkg" "$version" \
    | $SUDO tee "$dir/package.json" >/dev/null
  (cd "$dir" && $SUDO npm install --no-audit --no-fund --loglevel=error)
}
npm_tool "$PM_DIR/pnpm" pnpm "$PNPM_VERSION" pnpm
npm_tool "$PM_DIR/yarn-classic" yarn "$YARN_CLASSIC_VERSION" yarn
npm_tool "$PM_DIR/yarn-berry" @yarnpkg/cli-dist "$YARN_BERRY_VERSION" yarn
npm_tool "$PM_DIR/bun" bun "$BUN_VERSION" bun
PY_TOOLS="$PM_DIR/pytools"
if [ -x "$PY_TOOLS/bin/uv" ] && [ -x "$PY_TOOLS/bin/poetry" ] \
   && "$PY_TOOLS/bin/uv" --version 2>/dev/null | grep -qx "uv $UV_VERSION.*" \
   && "$PY_TOOLS/bin/poetry" --version 2>/dev/null | grep -q "version $POETRY_VERSION)"; then
  say "uv ${UV_VERSION} and poetry ${POETRY_VERSION} present"
else
  say "installing uv ${UV_VERSION} and poetry ${POETRY_VERSION} into a venv at ${PY_TOOLS}"
  $SUDO mkdir -p "$PM_DIR"
  $SUDO /usr/bin/python3 -m venv "$PY_TOOLS"
  $SUDO "$PY_TOOLS/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION" "poetry==$POETRY_VERSION"
fi
# One directory of links: pnpm, yarn (classic), bun, uv, poetry; yarn berry is linked alone into
# berry-bin, since both yarns are called `yarn`.
$SUDO mkdir -p "$PM_DIR/bin"
for link in pnpm/node_modules/.bin/pnpm yarn-classic/node_modules/.bin/yarn bun/node_modules/.bin/bun \
            pytools/bin/uv pytools/bin/poetry; do
  $SUDO ln -sfn "$PM_DIR/$link" "$PM_DIR/bin/$(basename "$link")"
done
$SUDO mkdir -p "$PM_DIR/berry-bin"
$SUDO ln -sfn "$PM_DIR/yarn-berry/node_modules/.bin/yarn" "$PM_DIR/berry-bin/yarn"
# Report tests (tests/tests/report.rs) check every SARIF golden with Microsoft's SARIF validator
# (the npm package @microsoft/sarif-multitool, a self-contained binary: no network at test time).
SARIF_MULTITOOL_VERSION="5.7.0"
SARIF_DIR="$LAB_DIR/sarif-multitool-$SARIF_MULTITOOL_VERSION"
if [ -x "$SARIF_DIR/node_modules/@microsoft/sarif-multitool-linux/Sarif.Multitool" ] \
   && grep -q "\"version\": \"$SARIF_MULTITOOL_VERSION\"" "$SARIF_DIR/node_modules/@microsoft/sarif-multitool/package.json"; then
  say "sarif-multitool ${SARIF_MULTITOOL_VERSION} present"
else
  say "installing sarif-multitool ${SARIF_MULTITOOL_VERSION} into ${SARIF_DIR}"
  $SUDO mkdir -p "$SARIF_DIR"
  printf '{"name":"watcher-lab-sarif-multitool","private":true,"dependencies":{"@microsoft/sarif-multitool":"%s"}}\n' \
    "$SARIF_MULTITOOL_VERSION" | $SUDO tee "$SARIF_DIR/package.json" >/dev/null
  (cd "$SARIF_DIR" && $SUDO npm install --no-audit --no-fund --omit=dev --loglevel=error)
  $SUDO chmod 755 "$SARIF_DIR/node_modules/@microsoft/sarif-multitool-linux/Sarif.Multitool"
fi

# tracefs is needed for tracepoint format files and attaching.
if [ ! -e /sys/kernel/tracing/events ] && [ "$(id -u)" -eq 0 ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi
say "prerequisites ready"
