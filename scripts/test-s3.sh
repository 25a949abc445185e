#!/usr/bin/env bash
# Starts an S3-compatible server (moto's server mode, from PyPI: `python3 -m pip install 'moto[server]'`) on a
# free port of 127.0.0.1 with one bucket, and prints the variables that point the tests at it:
#
#     eval "$(scripts/test-s3.sh)"    # then: cargo test -p ferry --test it comms_s3
#
# FERRY_TEST_S3_ENDPOINT (http://127.0.0.1:PORT), FERRY_TEST_S3_BUCKET, and test credentials in AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_REGION (moto accepts any; the client signs every request as for AWS). Idempotent: a
# server started by an earlier run (same state folder) is reused. `stop` stops it. Without moto_server the
# variables are not printed, so the tests skip (and fail under FERRY_CI=1). Only `export` lines go to stdout.
set -euo pipefail

STATE="${FERRY_TEST_S3_DIR:-${TMPDIR:-/tmp}/ferry-test-s3}"
BUCKET="ferry-test"
mkdir -p "$STATE"
log() { echo "test-s3: $*" >&2; }

alive() { [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null && [ -f "$STATE/port" ]; }

start() {
  if ! command -v moto_server >/dev/null; then
    log "moto_server not found (python3 -m pip install 'moto[server]'); the object-storage tests will skip"
    return 1
  fi
  if ! alive; then
    rm -f "$STATE/port" "$STATE/pid"
    # -p 0: the kernel picks a free port; the server prints it
    setsid nohup moto_server -H 127.0.0.1 -p 0 </dev/null >"$STATE/server.log" 2>&1 &
    echo $! > "$STATE/pid"
    local port=""
    for _ in $(seq 1 100); do
      port=$(sed -n 's|.*Running on http://127.0.0.1:\([0-9][0-9]*\).*|\1|p' "$STATE/server.log" | head -1)
      [ -n "$port" ] && break
      sleep 0.1
    done
    if [ -z "$port" ]; then log "moto_server did not start, see $STATE/server.log"; return 1; fi
    echo "$port" > "$STATE/port"
    log "moto S3 server on 127.0.0.1:$port (pid $(cat "$STATE/pid"))"
  fi
  local port
  port=$(cat "$STATE/port")
  # the bucket (moto keeps everything in memory: created again after a restart)
  AWS_ACCESS_KEY_ID=ferry-test AWS_SECRET_ACCESS_KEY=ferry-test-secret python3 - "$port" "$BUCKET" <<'PY' >&2
import sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1")
names = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
if sys.argv[2] not in names:
    s3.create_bucket(Bucket=sys.argv[2])
PY
  echo "export FERRY_TEST_S3_ENDPOINT=http://127.0.0.1:$port FERRY_TEST_S3_BUCKET=$BUCKET"
  echo "export AWS_ACCESS_KEY_ID=ferry-test AWS_SECRET_ACCESS_KEY=ferry-test-secret AWS_REGION=us-east-1"
}

stop() {
  if [ -f "$STATE/pid" ]; then
    kill "$(cat "$STATE/pid")" 2>/dev/null || true
    rm -f "$STATE/pid" "$STATE/port"
  fi
  log "stopped the S3 server in $STATE"
}

case "${1:-start}" in
  start) start || true ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
