#!/usr/bin/env bash
# Profiles levee's plain proxy under wrk load and says where each request's
# CPU goes: a Go CPU profile (bench/gateway/leveepprof = `levee serve` plus
# net/http/pprof on loopback), an allocation profile over the same window,
# syscalls per request (perf tracepoints, when perf is usable) and the
# upstream connections opened. Same pinning as run.sh: wrk on LOAD_CPU,
# levee and the upstream on SERVER_CPU.
#
# Usage: bench/gateway/profile.sh
# Env: DURATION [20s] CONNS [100] ACCESS_LOG [true] LOAD_CPU [0] SERVER_CPU [1]
#      PORT_BASE [18180] IDEMPOTENCY [off|redis|postgres|sqlite|memory]
#      (a store other than off turns idempotency on for POST, a new key per
#      request; Redis at LEVEE_REDIS_ADDR [127.0.0.1:6379], keys under a
#      unique prefix removed at exit) KEYS [unique|replay] (replay: one key,
#      stored by a request before the load, so every measured request is a
#      replay)
# Writes bench/out/gateway-profile-<date>/{summary.md,cpu.prof,allocs.prof,leveepprof}
# and prints summary.md. Installs nothing; stops everything it started.
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

DURATION=${DURATION:-20s}; dur=${DURATION%s}
CONNS=${CONNS:-100}
ACCESS_LOG=${ACCESS_LOG:-true}
IDEMPOTENCY=${IDEMPOTENCY:-off}
KEYS=${KEYS:-unique}
case "$KEYS" in unique|replay) ;; *) echo "profile.sh: KEYS must be unique or replay" >&2; exit 1 ;; esac
REDIS_ADDR=${LEVEE_REDIS_ADDR:-127.0.0.1:6379}
PG_URL=${LEVEE_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
runid=prof$(date -u +%s)$$
LOAD_CPU=${LOAD_CPU:-0}; SERVER_CPU=${SERVER_CPU:-1}
PORT_BASE=${PORT_BASE:-18180}
[[ $dur =~ ^[0-9]+$ && $dur -ge 5 && $dur -le 120 ]] || { echo "DURATION must be 5s..120s" >&2; exit 1; }
for c in wrk taskset curl go; do
  command -v $c >/dev/null || { echo "profile.sh: $c missing (apt-get install -y wrk util-linux curl)" >&2; exit 1; }
done
P_UP=$((PORT_BASE + 1)); P_LEVEE=$((PORT_BASE + 3)); P_PPROF=$((PORT_BASE + 6)); P_ADMIN=$((PORT_BASE + 7))

out=bench/out/gateway-profile-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
tmp=$(mktemp -d /tmp/levee-bench-prof.XXXXXX)
declare -A live=()
cleanup() {
  local rc=$? p
  trap - EXIT
  for p in "${!live[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ "$IDEMPOTENCY" = redis ]; then
    redis-cli -h "${REDIS_ADDR%:*}" -p "${REDIS_ADDR##*:}" --scan --pattern "levee:$runid:*" 2>/dev/null |
      xargs -r -n 500 redis-cli -h "${REDIS_ADDR%:*}" -p "${REDIS_ADDR##*:}" UNLINK >/dev/null 2>&1 || true
  fi
  if [ "$IDEMPOTENCY" = postgres ]; then
    psql "${PG_URL%%\?*}" -qc "DROP SCHEMA IF EXISTS $runid CASCADE" >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_port() {
  local i
  for i in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  return 1
}
stats() { curl -s --max-time 2 "http://127.0.0.1:$P_UP/__stats" | sed -n 's/.*"accepted":\([0-9]*\),"requests":\([0-9]*\).*/\1 \2/p'; }
if [ "$KEYS" = replay ]; then
  # Replays never reach the upstream: count the requests levee answered
  # (its metrics, on an admin listener of its own); no upstream
  # connection is opened then either.
  stats() { curl -s --max-time 2 "http://127.0.0.1:$P_ADMIN/metrics" | awk '/^levee_http_requests_total/ {n += $NF} END {printf "1 %d\n", n}'; }
fi

go build -o "$out/leveepprof" ./bench/gateway/leveepprof
go build -o "$tmp/" ./bench/gateway/upstream
cat >"$tmp/levee.yaml" <<EOF
listen: "127.0.0.1:$P_LEVEE"
admin:
  listen: "$([ "$KEYS" = replay ] && echo "127.0.0.1:$P_ADMIN" || echo off)"
store:
  type: $([ "$IDEMPOTENCY" = off ] && echo memory || echo "$IDEMPOTENCY")
  sqlite: {path: $tmp/levee.db}
  redis: {addr: "$REDIS_ADDR", prefix: "levee:$runid:"}
  postgres: {url: "$PG_URL", schema: $runid}
log:
  level: info
  access_log: $ACCESS_LOG
routes:
  - name: bench
    match:
      path_prefix: /
    upstream: http://127.0.0.1:$P_UP
EOF
if [ "$IDEMPOTENCY" != off ]; then
  printf '    idempotency: {enabled: true, methods: [POST], required: true}\n' >>"$tmp/levee.yaml"
fi
taskset -c "$SERVER_CPU" "$tmp/upstream" -listen "127.0.0.1:$P_UP" >"$tmp/upstream.log" 2>&1 &
live[$!]=1; wait_port "$P_UP"
taskset -c "$SERVER_CPU" "$out/leveepprof" -config "$tmp/levee.yaml" -pprof "127.0.0.1:$P_PPROF" >"$tmp/levee.log" 2>&1 &
lpid=$!; live[$lpid]=1; wait_port "$P_LEVEE"; wait_port "$P_PPROF"

url="http://127.0.0.1:$P_LEVEE/v1/payments"
wrk_tag="prof-$$-$RANDOM"
if [ "$KEYS" = replay ]; then
  # One key throughout, stored by this request first: every measured
  # request is a replay.
  curl -s -o /dev/null -X POST -H 'Content-Type: application/json' -H "Idempotency-Key: $wrk_tag" \
    --data '{"amount":1000,"currency":"eur","customer":"cus_0123456789","description":"levee bench"}' "$url"
fi
taskset -c "$LOAD_CPU" timeout $((dur + 60)) wrk -t1 -c"$CONNS" -d"$((dur + 8))s" --timeout 5s \
  -s "$root/bench/gateway/request.lua" "$url" -- "$KEYS" "$wrk_tag" >"$tmp/wrk.out" 2>&1 &
wrk_pid=$!; live[$wrk_pid]=1
sleep 3
read -r a0 q0 < <(stats)
curl -s -o "$tmp/allocs0.prof" "http://127.0.0.1:$P_PPROF/debug/pprof/allocs"
perf_ok=0
if command -v perf >/dev/null && perf stat -e 'syscalls:sys_enter_write' -- true >/dev/null 2>&1; then
  perf_ok=1
  ev=""; for s in read write writev readv recvfrom sendto epoll_pwait futex nanosleep getrandom sched_yield madvise pread64 pwrite64 fsync fdatasync fcntl; do ev="$ev,syscalls:sys_enter_$s"; done
  perf stat -x, -e "${ev#,}" -e context-switches -p "$lpid" -o "$tmp/perf.csv" -- sleep "$dur" >/dev/null 2>&1 &
  perf_pid=$!
fi
curl -s -o "$out/cpu.prof" "http://127.0.0.1:$P_PPROF/debug/pprof/profile?seconds=$dur"
read -r a1 q1 < <(stats)
curl -s -o "$out/allocs.prof" "http://127.0.0.1:$P_PPROF/debug/pprof/allocs"
[ "$perf_ok" = 1 ] && wait "$perf_pid" 2>/dev/null || true
wait "$wrk_pid" || true; unset "live[$wrk_pid]"
n=$((q1 - q0)); conns=$((a1 - a0 - 1)); [ "$KEYS" = replay ] && conns="n/a (replays never reach it)"

pp() { go tool pprof "$@" 2>/dev/null; }
pp -top -cum -nodefraction=0 -nodecount=100000 "$out/leveepprof" "$out/cpu.prof" >"$tmp/cum.txt"
total=$(awk '/Total samples/ { for (i = 1; i <= NF; i++) if ($i == "=") { print $(i+1); exit } }' "$tmp/cum.txt")
per() { # seconds of CPU -> µs per request
  awk -v s="$1" -v n="$n" 'BEGIN { v = s; if (v ~ /ms$/) { sub(/ms$/, "", v); v /= 1000 } else sub(/s$/, "", v); printf "%.2f", v * 1e6 / n }'
}
row() { # row FUNCTION DESCRIPTION
  local cum
  cum=$(awk -v f="$1" '$6 == f { print $4; exit }' "$tmp/cum.txt")
  [ -n "$cum" ] || cum=0s
  echo "| $2 | \`$1\` | $(per "$cum") |"
}
{
  echo "# levee profile (idempotency: $IDEMPOTENCY, keys: $KEYS) — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- $CONNS connections, access_log: $ACCESS_LOG, ${dur}s window; wrk on CPU $LOAD_CPU, levee and upstream on CPU $SERVER_CPU (GOMAXPROCS=1)"
  echo "- requests in the window: $n ($((n / dur)) req/s); levee CPU: $total = **$(per "$total") µs per request**"
  echo "- upstream connections opened in the window: $conns (0 = all reused)"
  echo
  echo "| part | function (cumulative) | µs/request |"
  echo "|---|---|---:|"
  row 'github.com/leveehq/levee/internal/h1.(*frontConn).serve' 'front server, all of it'
  row 'github.com/leveehq/levee/internal/h1.parseFrontHead' 'front server: parse the request head'
  row 'github.com/leveehq/levee/internal/h1.(*frontResponse).commit' 'front server: status line and headers'
  row 'github.com/leveehq/levee/gateway.(*routeProxy).direct' 'direct proxy path (upstream write + read)'
  row 'github.com/redis/rueidis.(*pipe)._backgroundWrite' 'Redis writes (rueidis background writer)'
  row 'net/http.(*conn).serve' 'net/http server (engine net/http or handed-off connections)'
  row 'github.com/leveehq/levee/gateway.(*Gateway).ServeHTTP' 'gateway handler, all of it'
  row 'github.com/leveehq/levee/internal/h1.readResponse' 'upstream response head (read + parse)'
  row 'github.com/leveehq/levee/internal/h1.(*h1Conn).alive' 'idle upstream connection check (MSG_PEEK)'
  row 'github.com/leveehq/levee/idempotency.(*Engine).serve' 'idempotency middleware, upstream call included'
  row 'net/http/httputil.(*ReverseProxy).ServeHTTP' 'ReverseProxy (requests off the direct path)'
  row 'github.com/leveehq/levee/gateway.(*Gateway).finish' 'gateway.finish (metrics + access log)'
  row 'github.com/leveehq/levee/gateway.writeAccessLine' 'access log line'
  row 'github.com/leveehq/levee/gateway.newRequestID' 'X-Request-Id (crypto/rand)'
  row 'runtime.mallocgc' 'allocation'
  row 'runtime.gcBgMarkWorker' 'GC background marking'
  row 'runtime.gcAssistAlloc' 'GC assists'
  row 'runtime.schedule' 'scheduler'
  row 'syscall.Write' 'all write syscalls'
  row 'syscall.Read' 'all read syscalls'
  echo
  ab=$(pp -sample_index=alloc_space -base "$tmp/allocs0.prof" -top -nodecount=1 "$out/leveepprof" "$out/allocs.prof" | awk '/Showing nodes/ { for (i = 1; i <= NF; i++) if ($i == "of") { print $(i+1); exit } }')
  ao=$(pp -sample_index=alloc_objects -base "$tmp/allocs0.prof" -top -nodecount=1 "$out/leveepprof" "$out/allocs.prof" | awk '/Showing nodes/ { for (i = 1; i <= NF; i++) if ($i == "of") { print $(i+1); exit } }')
  echo "Allocations over the window (approximate: the allocs window starts with the CPU profile and ends just after it): $ab, $ao objects; per request: $(awk -v o="$ao" -v n="$n" 'BEGIN { printf "%.0f objects", o / n }')."
  if [ "$perf_ok" = 1 ]; then
    echo
    echo "Syscalls of the levee process per request (perf tracepoints over the same window):"
    echo
    awk -F, -v n="$n" '$1 + 0 > 0 { sub(/syscalls:sys_enter_/, "", $3); printf "%s %.2f, ", $3, $1 / n }' "$tmp/perf.csv" | sed 's/, $/\n/'
  fi
  echo
  echo "Top 25 by flat time:"
  echo
  echo '```'
  pp -top -nodecount=25 "$out/leveepprof" "$out/cpu.prof" | sed -n '/flat%/,$p'
  echo '```'
  echo
  echo "Explore: go tool pprof -http 127.0.0.1:8081 $out/leveepprof $out/cpu.prof"
} | tee "$out/summary.md"
