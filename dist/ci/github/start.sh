#!/usr/bin/env bash
# The GitHub Action's start step (action.yml): install the release, start the daemon for
# this job (recognised by GITHUB_RUN_ID, which the runner sets for every step and a step
# cannot override through GITHUB_ENV), put watcher on PATH.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${RUNNER_TEMP:?RUNNER_TEMP is not set: not on a GitHub runner?}"
: "${GITHUB_RUN_ID:?GITHUB_RUN_ID is not set: not on a GitHub runner?}"
export WATCHER_ROOT=${WATCHER_ROOT:-/var/lib/watcher-ci}
export WATCHER_ID_VAR=${WATCHER_ID_VAR:-GITHUB_RUN_ID}
export WATCHER_PIPELINE_VAR=GITHUB_REPOSITORY
export WATCHER_WORKSPACE=${GITHUB_WORKSPACE:-$PWD}
if [ -z "${WATCHER_RELEASE_URL:-}" ]; then
  repo=${GITHUB_ACTION_REPOSITORY:-}
  if [ -z "$repo" ]; then
    # Composite actions do not always get GITHUB_ACTION_REPOSITORY: the project's one URL.
    url=$(sed -n 's/^repository = "\(.*\)"/\1/p' "$here/../../../Cargo.toml" | head -n1)
    repo=${url#https://github.com/}
  fi
  [ -n "$repo" ] || { echo "watcher-ci: error: cannot tell which repository's release to install: set release-url" >&2; exit 125; }
  export WATCHER_RELEASE_URL="https://github.com/$repo/releases/download/v${WATCHER_VERSION:?}"
fi
bash "$here/../watcher-ci.sh" install
bash "$here/../watcher-ci.sh" start
echo "$WATCHER_ROOT/bin" >> "${GITHUB_PATH:?}"
{
  echo "version=$("$WATCHER_ROOT/bin/watcher" --version)"
  echo "log-dir=$RUNNER_TEMP/watcher/logs"
} >> "${GITHUB_OUTPUT:?}"
