#!/usr/bin/env bash
# A short demo of `watcher run`: a command that starts processes, looks up a name and connects
# to a server, all on this machine (a DNS server on 127.53.0.1 and an HTTP server on
# 127.0.0.1, both started here and stopped at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
W=target/release/watcher
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo

log=$(mktemp /tmp/watcher-demo.XXXXXX.jsonl)
port=18765
python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1 &
http=$!
target/release/testdns 127.53.0.1 demo.watcher.test=127.0.0.1 >/dev/null 2>&1 &
dns=$!
trap 'kill $http $dns 2>/dev/null || true' EXIT
sleep 0.5

echo "[demo] watcher run --log $log -- sh -c '...'" >&2
$SUDO "$W" run --log "$log" -- sh -c "
  echo 'hello from the watched step'
  target/release/netprobe dns-sendto 127.53.0.1 demo.watcher.test A
  python3 -c 'import urllib.request; urllib.request.urlopen(\"http://127.0.0.1:$port/\").read()'
"
echo "[demo] event log: $log ($(wc -l <"$log") events); first lines:" >&2
head -n 4 "$log" >&2
