#!/usr/bin/env bash
# The GitHub Action's stop step (stop/action.yml): stop the daemon; replay (GITHUB_ACTIONS
# is true) writes the job summary to GITHUB_STEP_SUMMARY and the annotations; logs and
# reports go to RUNNER_TEMP/watcher; the exit code fails the job in enforce mode.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${RUNNER_TEMP:?RUNNER_TEMP is not set: not on a GitHub runner?}"
export WATCHER_ROOT=${WATCHER_ROOT:-/var/lib/watcher-ci}
export WATCHER_OUT_DIR="$RUNNER_TEMP/watcher"
export WATCHER_OUTPUT_FILE=${GITHUB_OUTPUT:-}
exec bash "$here/../watcher-ci.sh" stop
