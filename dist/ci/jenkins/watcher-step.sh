#!/usr/bin/env bash
# Jenkins: run one build command watched by watcher (docs/CI.md):
#
#   sh 'curl -fsSLO "$WATCHER_RELEASE_URL/watcher-step.sh" && bash watcher-step.sh npm ci'
#
# installs the release (checksum verified), starts the daemon for this build (recognised by
# BUILD_TAG, unique per build; policy chosen by JOB_NAME), runs the command as the agent's
# user, stops, writes the reports to $WORKSPACE/watcher/ (archiveArtifacts 'watcher/**'), and
# exits with the command's code when it failed, else 0, or 77/78 in enforce mode. Variables:
# WATCHER_POLICY, WATCHER_MODE, WATCHER_ALLOWED_ENDPOINTS, WATCHER_VERSION,
# WATCHER_RELEASE_URL, WATCHER_SHA256 as in docs/CI.md. Needs root through passwordless sudo
# (or an agent running as root); one watched step at a time per agent machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${BUILD_TAG:?BUILD_TAG is not set: not in a Jenkins build?}"
[ $# -gt 0 ] || { echo "usage: watcher-step.sh CMD [ARGS...]" >&2; exit 2; }
export WATCHER_ID_VAR=${WATCHER_ID_VAR:-BUILD_TAG}
export WATCHER_PIPELINE_VAR=JOB_NAME
export WATCHER_WORKSPACE=${WORKSPACE:-$PWD}
export WATCHER_OUT_DIR=${WATCHER_OUT_DIR:-$WATCHER_WORKSPACE/watcher}
export WATCHER_RELEASE_URL=${WATCHER_RELEASE_URL:-https://github.com/watcher-ci/watcher/releases/download/v${WATCHER_VERSION:-0.1.0}}
core="$here/watcher-ci.sh"
if [ ! -f "$core" ]; then
  core="$here/../watcher-ci.sh"
fi
if [ ! -f "$core" ]; then
  core=$(mktemp "${TMPDIR:-/tmp}/watcher-ci.XXXXXX")
  trap 'rm -f "$core"' EXIT
  curl -fsSL --retry 3 --proto '=https,http,file' -o "$core" "$WATCHER_RELEASE_URL/watcher-ci.sh"
fi
bash "$core" run -- "$@"
