#!/usr/bin/env bash
# watcher-ci.sh install|start|stop: watch every later step of a CI job with `watcher daemon`.
# Used by the GitHub Action (dist/ci/github/), the GitLab include (dist/ci/gitlab/) and the
# Jenkins wrapper (dist/ci/jenkins/); docs/CI.md has the recipes.
#
#   install  download the release's SHA256SUMS and tarball from WATCHER_RELEASE_URL (https://,
#            http:// or file://), copy the tarball into the root-owned WATCHER_ROOT, check its
#            sha256 there (against SHA256SUMS, and WATCHER_SHA256 when given), unpack it:
#            WATCHER_ROOT/bin/watcher
#   start    compose the effective policy (WATCHER_POLICY + WATCHER_MODE +
#            WATCHER_ALLOWED_ENDPOINTS), write WATCHER_ROOT/daemon.yaml, start the daemon (as
#            root, detached) and wait until it watches this very job: every process that execs
#            from then on with the job variable WATCHER_ID_VAR in its environment is watched
#   stop     SIGTERM the daemon (every job log gets its end record), copy the job logs to
#            WATCHER_OUT_DIR (owned by the calling user: upload them as artifacts), judge them
#            with `watcher replay`, write report.md, report.json and watcher.sarif there, and exit
#            0 (clean; or anything in audit mode), 77 (enforce: flagged) or 78 (enforce: the
#            watch cannot be vouched for: events lost, the daemon gone before the end, no log)
#   run -- CMD [ARGS...]
#            install, start, run CMD (as the calling user), stop: exits with CMD's code when
#            it failed, else with stop's (the Jenkins wrapper)
#
# Variables (the wrappers set them from their own inputs):
#   WATCHER_ROOT              root-owned state directory (default /var/lib/watcher-ci); its
#                             parent must not be writable by the CI user
#   WATCHER_RELEASE_URL       base URL of the release's files (install)
#   WATCHER_SHA256            optional: the tarball's expected sha256 (pins the release)
#   WATCHER_POLICY            a policy file, or the name of a shipped one: npm, pip, cargo
#   WATCHER_MODE              audit | enforce (default: the policy's own mode)
#   WATCHER_ALLOWED_ENDPOINTS HOST[:PORT] ... added to egress.allow (spaces, commas, newlines)
#   WATCHER_ID_VAR            the variable that names the job (GITHUB_RUN_ID, CI_JOB_ID, BUILD_TAG)
#   WATCHER_PIPELINE_VAR      the variable that names the pipeline (optional)
#   WATCHER_WORKSPACE         the checkout (default: the current directory): the daemon reads
#                             the package managers' configuration (.npmrc, ...) from there
#   WATCHER_OUT_DIR           where stop leaves logs and reports (default WATCHER_ROOT.out)
#   WATCHER_OUTPUT_FILE       optional: stop appends key=value lines (verdict, log-dir, ...)
#   WATCHER_STOP_IF_RUNNING   1: stop does nothing (exit 0) when the job was already stopped
#                             (GitLab's after_script, after the script's own stop)
#
# Not root: every privileged command goes through `sudo -n` (a runner user with
# passwordless sudo, as GitHub's hosted runners have).
set -euo pipefail

me=watcher-ci
log() { printf '%s: %s\n' "$me" "$*" >&2; }
die() { log "error: $*"; exit 125; }

ROOT=${WATCHER_ROOT:-/var/lib/watcher-ci}
case "$ROOT" in
  /*) ;;
  *) die "WATCHER_ROOT=$ROOT: an absolute path is needed" ;;
esac
[[ "$ROOT" =~ ^/[A-Za-z0-9._/-]+$ ]] || die "WATCHER_ROOT=$ROOT: only letters, digits and ._-/ please"
W="$ROOT/bin/watcher"
if [ "$(id -u)" = 0 ]; then
  SUDO=()
else
  command -v sudo >/dev/null || die "not root and no sudo: watcher needs root to load its kernel programs"
  SUDO=(sudo -n)
fi
as_root() { "${SUDO[@]}" "$@"; }
TMPD=$(mktemp -d "${TMPDIR:-/tmp}/watcher-ci.XXXXXX")
trap 'rm -rf "$TMPD"' EXIT

# The root-owned state directory: created 0755 by root; an existing one must be root's,
# not a symlink, not writable by others (the daemon's configuration, policy, binary and the
# job logs live there, and a CI step must not swap them).
root_dir() {
  as_root sh -c '
    set -e
    d=$1
    if [ -L "$d" ]; then echo "$d is a symbolic link" >&2; exit 1; fi
    parent=$(dirname "$d")
    mkdir -p "$parent"
    [ -d "$d" ] || mkdir -m 0755 "$d"
    chown root:root "$d"; chmod 0755 "$d"
    for p in "$d" "$parent"; do
      set -- $(stat -L -c "%u %a" "$p")
      if [ "$1" != 0 ]; then echo "$p is not owned by root" >&2; exit 1; fi
      case "$2" in ?[2367]?|??[2367]) [ -k "$p" ] || { echo "$p is writable by group or others" >&2; exit 1; } ;; esac
    done' sh "$ROOT" || die "WATCHER_ROOT=$ROOT cannot be used as the root-owned state directory"
}

cmd_install() {
  local url=${WATCHER_RELEASE_URL:?WATCHER_RELEASE_URL: the base URL of the release files}
  url=${url%/}
  command -v curl >/dev/null || die "curl is needed to download the release"
  local tmp=$TMPD
  curl -fsSL --retry 3 --proto '=https,http,file' -o "$tmp/SHA256SUMS" "$url/SHA256SUMS" \
    || die "cannot download $url/SHA256SUMS"
  local line sum name
  line=$(grep -E '^[0-9a-f]{64}  watcher-[A-Za-z0-9.+~-]+-x86_64-linux-gnu\.tar\.gz$' "$tmp/SHA256SUMS" | head -n1) \
    || die "$url/SHA256SUMS names no watcher-VERSION-x86_64-linux-gnu.tar.gz"
  sum=${line%% *}
  name=${line##* }
  if [ -n "${WATCHER_SHA256:-}" ] && [ "${WATCHER_SHA256,,}" != "$sum" ]; then
    die "$name: the release's SHA256SUMS says $sum, the pinned WATCHER_SHA256 is $WATCHER_SHA256"
  fi
  curl -fsSL --retry 3 --proto '=https,http,file' -o "$tmp/$name" "$url/$name" || die "cannot download $url/$name"
  root_dir
  # Checked where root keeps it: nothing the CI user can write is unpacked or run as root.
  as_root install -m 0600 -o root -g root "$tmp/$name" "$ROOT/$name"
  echo "$sum  $ROOT/$name" | as_root sha256sum --quiet -c - >/dev/null 2>&1 \
    || { as_root rm -f "$ROOT/$name"; die "$name: sha256 mismatch (expected $sum from SHA256SUMS)"; }
  as_root sh -c 'set -e; rm -rf "$1/release" "$1/bin"; mkdir -m 0755 "$1/release" "$1/bin"
    tar -xzf "$1/$2" -C "$1/release" --strip-components=1 --no-same-owner --no-same-permissions
    chmod -R go-w "$1/release"; ln -s ../release/watcher "$1/bin/watcher"; rm -f "$1/$2"' sh "$ROOT" "$name"
  log "installed $("$W" --version) from $url/$name (sha256 $sum)"
}

# The policy file: a path, or the name of a policy shipped in the release.
policy_file() {
  local p=${WATCHER_POLICY:-}
  [ -n "$p" ] || die "WATCHER_POLICY (the action's policy input) is empty: name a policy file or npm, pip, cargo"
  if [ -f "$p" ]; then
    printf '%s\n' "$p"
  elif [[ "$p" =~ ^[a-z]+$ ]] && [ -f "$ROOT/release/policies/$p.yaml" ]; then
    printf '%s\n' "$ROOT/release/policies/$p.yaml"
  else
    die "policy $p: no such file, and not a shipped policy ($(cd "$ROOT/release/policies" 2>/dev/null && ls | sed 's/\.yaml$//' | tr '\n' ' '))"
  fi
}

cmd_start() {
  [ -x "$W" ] || die "$W is missing: run install first"
  local id_var=${WATCHER_ID_VAR:?WATCHER_ID_VAR: the variable that names the job}
  local pipe_var=${WATCHER_PIPELINE_VAR:-}
  [[ "$id_var" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "WATCHER_ID_VAR=$id_var is not a variable name"
  [ -z "$pipe_var" ] || [[ "$pipe_var" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "WATCHER_PIPELINE_VAR=$pipe_var is not a variable name"
  [ -n "${!id_var:-}" ] || die "$id_var is not set in this step's environment: the daemon could not recognise this job's steps"
  if as_root test -e "$ROOT/daemon.pid"; then
    local old
    old=$(as_root cat "$ROOT/daemon.pid")
    if as_root test -d "/proc/$old"; then die "a watcher daemon (pid $old) already runs for $ROOT"; fi
  fi
  local ws=${WATCHER_WORKSPACE:-$PWD}
  [ -d "$ws" ] || die "WATCHER_WORKSPACE=$ws is not a directory"
  local policy mode tmp
  policy=$(policy_file)
  mode=${WATCHER_MODE:-}
  case "$mode" in
    ""|audit|enforce) ;;
    *) die "mode $mode: expected audit or enforce" ;;
  esac
  tmp=$TMPD
  # Composed as the CI user: the policy file is the checkout's, root does not read it.
  "$W" policy compose "$policy" ${mode:+--mode "$mode"} --allow "${WATCHER_ALLOWED_ENDPOINTS:-}" > "$tmp/policy.yaml" \
    || die "the policy $policy (with mode and allowed endpoints) is not valid"
  as_root install -m 0644 -o root -g root "$tmp/policy.yaml" "$ROOT/policy.yaml"
  as_root rm -rf "$ROOT/logs"
  {
    echo "# Written by watcher-ci.sh start for one CI job (see docs/CI.md)."
    echo "version: 1"
    echo "socket: $ROOT/watcher.sock"
    echo "log_dir: $ROOT/logs"
    echo "log_max_bytes: 4294967296   # 4 GiB: one segment per job log"
    echo "job_end_grace: 24h           # the job stays open between steps; stop closes it"
    echo "jobs:"
    echo "  id_env: [$id_var]"
    if [ -n "$pipe_var" ]; then echo "  pipeline_env: [$pipe_var]"; else echo "  pipeline_env: []"; fi
    echo "pipelines:"
    echo "  - match: \"*\""
    echo "    policy: $ROOT/policy.yaml"
  } > "$tmp/daemon.yaml"
  as_root install -m 0644 -o root -g root "$tmp/daemon.yaml" "$ROOT/daemon.yaml"
  # The daemon's environment: no job variable (what it starts must not become a job), the
  # package managers' configuration variables (registries are read from them), the CI user's
  # HOME (~/.npmrc, pip.conf) and the workspace as working directory (.npmrc of the project).
  # npm, run as root by the daemon to read its configuration, must not leave root-owned log
  # files in the CI user's cache (logs-max=0, no update check).
  local denv=(PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH}" HOME="${HOME:-/}" LANG=C.UTF-8 WATCHER_LOG=info
    npm_config_logs_max=0 npm_config_update_notifier=false)
  local v
  while IFS= read -r v; do
    case "$v" in
      npm_config_cache|NPM_CONFIG_CACHE) ;;
      npm_config_*|NPM_CONFIG_*|YARN_*|BUN_*|PNPM_*|PIP_*|UV_*|POETRY_*|CARGO_*|XDG_CONFIG_HOME) denv+=("$v=${!v}") ;;
    esac
  done < <(compgen -e)
  # npm's cache (it creates it even to answer `npm config`) stays root's own, out of the CI
  # user's HOME: a root-owned cache there would break the CI user's `npm ci`.
  denv+=(npm_config_cache="$ROOT/npm-cache")
  as_root rm -f "$ROOT/daemon.pid" "$ROOT/daemon.exit" "$ROOT/stop" "$ROOT/watcher.sock"
  # A supervisor shell starts the daemon and, when `stop` creates ROOT/stop, sends it SIGTERM.
  # The supervisor and the daemon exec before the daemon's programs are attached, so neither
  # is a process of the job; the signal must come from outside the job (a job process that
  # signals watcher is tampering: the daemon kills it and flags the job). After the daemon's
  # exec it only runs shell builtins and `sleep` (no job variable in its environment).
  as_root env -i "${denv[@]}" setsid /bin/sh -c '
    cd "$1" || exit 1
    "$2" daemon --config "$3" </dev/null >>"$4" 2>&1 &
    d=$!
    echo "$d" > "$5.tmp" && mv "$5.tmp" "$5"
    while [ ! -e "$6" ] && [ -d "/proc/$d" ]; do sleep 0.2; done
    kill -TERM "$d" 2>/dev/null
    wait "$d"
    echo "$?" > "$7"' sh "$ws" "$W" "$ROOT/daemon.yaml" "$ROOT/daemon.log" "$ROOT/daemon.pid" "$ROOT/stop" "$ROOT/daemon.exit" \
    </dev/null >/dev/null 2>&1 &
  for ((i = 0; i < 100; i++)); do
    as_root test -s "$ROOT/daemon.pid" && break
    sleep 0.05
  done
  local pid i
  pid=$(as_root cat "$ROOT/daemon.pid") || die "the watcher daemon did not start"
  # Ready when its socket answers; each `watcher status` below is itself a process of this
  # job (it carries the job variable), so the job's log appearing proves the job is watched.
  for ((i = 0; i < 600; i++)); do
    if ! as_root test -d "/proc/$pid"; then
      as_root tail -n 30 "$ROOT/daemon.log" >&2 || true
      die "the watcher daemon exited at start (its log above)"
    fi
    if as_root "$W" status --socket "$ROOT/watcher.sock" >/dev/null 2>&1 \
      && as_root sh -c 'ls "$1"/*.jsonl' sh "$ROOT/logs" >/dev/null 2>&1; then
      log "watching every later step of job $id_var=${!id_var} (daemon pid $pid, policy $policy, mode ${mode:-as the policy says})"
      return 0
    fi
    sleep 0.1
  done
  as_root tail -n 30 "$ROOT/daemon.log" >&2 || true
  die "the watcher daemon did not recognise this job within 60 s (its log above)"
}

cmd_stop() {
  if [ "${WATCHER_STOP_IF_RUNNING:-}" = 1 ] && ! as_root test -e "$ROOT/daemon.pid"; then
    log "nothing to stop: the job was already stopped (or never started)"
    return 0
  fi
  if ! as_root test -x "$W"; then
    log "error: $W is missing: the job was not started with watcher-ci.sh start, or a step removed it"
    [ "${GITHUB_ACTIONS:-}" != true ] || echo "::error title=watcher::the watch was not started, or a step removed it"
    return 78
  fi
  local out=${WATCHER_OUT_DIR:-$ROOT.out}
  # What this script starts from here on is not a new job (each would get a log of its own
  # while the daemon shuts down).
  if [ -n "${WATCHER_ID_VAR:-}" ] && [[ "$WATCHER_ID_VAR" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
    unset "$WATCHER_ID_VAR"
  fi
  local gone=""
  local pid=""
  pid=$(as_root cat "$ROOT/daemon.pid" 2>/dev/null) || true
  if [ -n "$pid" ] && as_root test -d "/proc/$pid"; then
    # The supervisor sends SIGTERM: every job gets its end record, every program is detached.
    as_root touch "$ROOT/stop"
    local i
    for ((i = 0; i < 600; i++)); do
      as_root test -e "$ROOT/daemon.exit" && break
      sleep 0.1
    done
    if ! as_root test -e "$ROOT/daemon.exit"; then
      gone="the daemon did not stop within 60 s"
    elif [ "$(as_root cat "$ROOT/daemon.exit")" != 0 ]; then
      gone="the daemon exited with code $(as_root cat "$ROOT/daemon.exit") (its log: $out/daemon.log)"
    fi
  else
    gone="the watcher daemon was not running at the end of the job (it died or a step stopped it): later steps may not have been watched"
  fi
  mkdir -p "$out/logs"
  rm -f "$out"/logs/*
  local f
  for f in $(as_root sh -c 'cd "$1" 2>/dev/null && ls' sh "$ROOT/logs"); do
    # Written by this (the CI) user: actions/upload-artifact and friends can read them.
    as_root cat "$ROOT/logs/$f" > "$out/logs/$f"
  done
  as_root cat "$ROOT/daemon.log" > "$out/daemon.log" 2>/dev/null || true
  local logs=()
  for f in "$out"/logs/*; do [ -f "$f" ] && logs+=("$f"); done
  local mode
  mode=$("$W" policy check "$ROOT/policy.yaml" 2>/dev/null | sed -n 's/.*, \([a-z]*\) mode)$/\1/p') || true
  local rc=0
  if [ ${#logs[@]} -eq 0 ]; then
    gone="${gone:+$gone; }no job log: no step of this job was watched"
    rc=78
  else
    # Text report with workflow commands (GITHUB_ACTIONS=true) and the job summary
    # (GITHUB_STEP_SUMMARY) come from replay itself; the other formats go to files.
    "$W" replay "${logs[@]}" || rc=$?
    env -u GITHUB_STEP_SUMMARY -u GITHUB_ACTIONS "$W" replay --format markdown "${logs[@]}" > "$out/report.md" 2>/dev/null || true
    env -u GITHUB_STEP_SUMMARY -u GITHUB_ACTIONS "$W" replay --format json "${logs[@]}" > "$out/report.json" 2>/dev/null || true
    env -u GITHUB_STEP_SUMMARY -u GITHUB_ACTIONS "$W" replay --format sarif "${logs[@]}" > "$out/watcher.sarif" 2>/dev/null || true
  fi
  if [ -n "$gone" ]; then
    log "error: $gone"
    if [ "${GITHUB_ACTIONS:-}" = true ]; then echo "::error title=watcher::${gone//%/%25}"; fi
    [ "$rc" = 77 ] || rc=78
  fi
  local verdict
  case "$rc" in
    0) verdict=clean ;;
    77) if [ "$mode" = enforce ]; then verdict=violation; else verdict=flagged; fi ;;
    78) verdict=incomplete ;;
    *) verdict=error ;;
  esac
  if [ -n "${WATCHER_OUTPUT_FILE:-}" ]; then
    {
      echo "verdict=$verdict"
      echo "log-dir=$out/logs"
      echo "report=$out/report.md"
      echo "sarif=$out/watcher.sarif"
    } >> "$WATCHER_OUTPUT_FILE"
  fi
  as_root rm -rf "$ROOT"
  log "verdict: $verdict (mode ${mode:-?}); logs and reports in $out"
  case "$verdict" in
    clean) return 0 ;;
    error) return 125 ;;
  esac
  if [ "$mode" = enforce ]; then return "$rc"; fi
  log "audit mode: the job is not failed"
  return 0
}

cmd_run() {
  [ "${1:-}" = -- ] && shift
  [ $# -gt 0 ] || die "run: no command given (watcher-ci.sh run -- CMD [ARGS...])"
  cmd_install
  cmd_start
  local rc=0 src=0
  # Started after the daemon, with the job variable: CMD is the first process of the job.
  "$@" || rc=$?
  cmd_stop || src=$?
  if [ "$rc" != 0 ]; then return "$rc"; fi
  return "$src"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  run) shift; cmd_run "$@" ;;
  *) echo "usage: watcher-ci.sh install|start|stop|run -- CMD (see the comment at the top)" >&2; exit 2 ;;
esac
