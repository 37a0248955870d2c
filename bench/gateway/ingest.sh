#!/usr/bin/env bash
# Runs the gateway's webhook-ingest benchmark (BenchmarkWebhookIngest: 16
# senders, the event's delivery to a local receiver) and adds what the
# benchmark cannot see from inside its process: the CPU of the local
# PostgreSQL (every postgres process, live and reaped by the postmaster)
# and nats-server processes over the run, and PostgreSQL's commits
# (pg_stat_database.xact_commit). On a noisy VM these per-event costs are
# steadier than accepted/s: compare builds by alternating them.
#
# Usage: bench/gateway/ingest.sh [benchmark regexp] [benchtime]
#   defaults: WebhookIngest 5000x; e.g. bench/gateway/ingest.sh 'WebhookIngest/postgres' 10000x
# Env: BIN (a gw.test built beforehand; default: build one from this tree),
#      PSQL_URL [postgres://postgres@127.0.0.1:5432/test?sslmode=disable]
# Reads /proc (Linux, the services on this machine); installs nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
pattern=${1:-WebhookIngest}
benchtime=${2:-5000x}
psql_url=${PSQL_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
bin=${BIN:-}
if [ -z "$bin" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  bin=$tmp/gw.test
  go test -c -o "$bin" ./gateway/
fi
ticks() { # user+system CPU ticks of every process named $1, with its reaped children
  local t=0 p f
  for p in $(pgrep -x "$1" || true); do
    f=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0)
    t=$((t + f))
  done
  echo "$t"
}
commits() {
  if command -v psql >/dev/null; then psql "$psql_url" -Atqc 'SELECT sum(xact_commit) FROM pg_stat_database' 2>/dev/null || echo 0; else echo 0; fi
}
hz=$(getconf CLK_TCK)
pg0=$(ticks postgres); n0=$(ticks nats-server); c0=$(commits)
(cd gateway && "$bin" -test.run '^$' -test.bench "$pattern" -test.benchtime "$benchtime") | grep -E '^Benchmark|^ok|FAIL'
pg1=$(ticks postgres); n1=$(ticks nats-server); c1=$(commits)
echo "postgres CPU $(( (pg1 - pg0) * 1000 / hz )) ms, nats-server CPU $(( (n1 - n0) * 1000 / hz )) ms, PostgreSQL commits $((c1 - c0)) over the run (sending and the drain of the deliveries; every store the pattern ran)"
