#!/usr/bin/env bash
# Gateway load benchmark: in ONE run, on 127.0.0.1 only, wrk drives
#   upstream (direct) | nginx -> upstream | Go's stock httputil.ReverseProxy
#   (default and tuned transport) | protoproxy (a measurement prototype) |
#   levee plain proxy (access log on/off) | levee + idempotency on sqlite,
#   redis, postgres (a new key per request, and a replay of one key)
#   | nginx, protoproxy, levee plain and levee+redis at CONNS_HIGH
# and prints a Markdown table (req/s, p50, p99, ratios to nginx and to levee
# plain, upstream connections opened, server peak RSS), also written to
# bench/out/gateway-<date>.md. See bench/gateway/README.md.
#
# Usage: bench/gateway/run.sh
# Env (defaults in brackets):
#   DURATION [10s]     measured wrk run per scenario (max 120s)
#   WARMUP [2s]        unmeasured wrk run before each (0 to skip)
#   CONNS [100]        client connections for the main table
#   CONNS_HIGH [1000]  client connections for the RSS runs (0 to skip)
#   PIN [1]            1: wrk on LOAD_CPU, every server on SERVER_CPU (taskset);
#                      0: no pinning, nginx worker_processes auto, wrk -t2
#   LOAD_CPU [0] SERVER_CPU [1]
#   SCENARIOS [all]    space-separated subset of scenario names (see the table)
#   REPEAT [1]         rounds over the scenario list (interleaved, so drift hits
#                      all alike); the table gives medians (RSS: maximum), and
#                      the per-round levee-plain/nginx ratios are listed
#   LEVEE_REDIS_ADDR [127.0.0.1:6379]
#   LEVEE_POSTGRES_URL [postgres://postgres@127.0.0.1:5432/test?sslmode=disable]
#   PORT_BASE [18080]  uses PORT_BASE+1 .. PORT_BASE+6 on 127.0.0.1
# Installs nothing. Cleans up every process, file, Redis key and Postgres
# schema it created (and nothing else), also on Ctrl-C.
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-100}
CONNS_HIGH=${CONNS_HIGH:-1000}
PIN=${PIN:-1}
LOAD_CPU=${LOAD_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
SCENARIOS=${SCENARIOS:-}
REPEAT=${REPEAT:-1}
[[ $REPEAT =~ ^[0-9]+$ && $REPEAT -ge 1 && $REPEAT -le 20 ]] || { echo "REPEAT must be 1..20" >&2; exit 1; }
REDIS_ADDR=${LEVEE_REDIS_ADDR:-127.0.0.1:6379}
PG_URL=${LEVEE_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
# psql rejects pgx's pool_* URL parameters (e.g. pool_max_conns): strip them for psql
PSQL_URL=$(printf '%s' "$PG_URL" | sed -E 's/([?&])pool_[a-z_]+=[^&]*&?/\1/g; s/[?&]$//')
PORT_BASE=${PORT_BASE:-18080}

die() { echo "run.sh: $*" >&2; exit 1; }
secs() { # 10s / 2m / 10 -> seconds
  local v=$1
  case $v in *m) echo $(( ${v%m} * 60 ));; *s) echo "${v%s}";; *) echo "$v";; esac
}
dur_s=$(secs "$DURATION"); warm_s=$(secs "$WARMUP")
[[ $dur_s =~ ^[0-9]+$ && $dur_s -ge 1 && $dur_s -le 120 ]] || die "DURATION must be 1s..120s"
[[ $warm_s =~ ^[0-9]+$ && $warm_s -le 60 ]] || die "WARMUP must be 0s..60s"

# ---- prerequisites: never installed silently -------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v go >/dev/null || die "go not found (Go 1.26 is needed to build levee)"
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "run.sh: missing: ${missing[*]}. Install them with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ "$PIN" = 1 ]; then
  command -v taskset >/dev/null || die "taskset not found (apt-get install -y util-linux) or run with PIN=0"
  ncpu=$(nproc --all)
  [ "$LOAD_CPU" -lt "$ncpu" ] && [ "$SERVER_CPU" -lt "$ncpu" ] || die "LOAD_CPU/SERVER_CPU beyond $ncpu CPUs"
  on_load=(taskset -c "$LOAD_CPU")      # taskset execs the command: $! stays the server's pid
  on_server=(taskset -c "$SERVER_CPU")
  wrk_threads=1
  nginx_workers=1
else
  on_load=()
  on_server=()
  wrk_threads=2
  nginx_workers=auto
fi
have_redis=0; have_pg=0
if command -v redis-cli >/dev/null && redis-cli -h "${REDIS_ADDR%:*}" -p "${REDIS_ADDR##*:}" PING 2>/dev/null | grep -q PONG; then have_redis=1; fi
if command -v psql >/dev/null && timeout 5 psql "$PSQL_URL" -Atqc 'select 1' >/dev/null 2>&1; then have_pg=1; fi

P_UP=$((PORT_BASE + 1)); P_NGINX=$((PORT_BASE + 2)); P_LEVEE=$((PORT_BASE + 3))
P_ADMIN=$((PORT_BASE + 4)); P_STOCK=$((PORT_BASE + 5)); P_PROTO=$((PORT_BASE + 6))
for p in $P_UP $P_NGINX $P_LEVEE $P_ADMIN $P_STOCK $P_PROTO; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "127.0.0.1:$p is in use (set PORT_BASE)"; fi
done

# ---- run state and cleanup -------------------------------------------------
runid=$(date -u +%Y%m%d%H%M%S)-$$-$RANDOM
tmp=$(mktemp -d /tmp/levee-bench-gw.XXXXXX)
redis_prefix="levee:bench:$runid:"
pg_schema="levee_bench_${runid//-/_}"
pg_created=0
declare -A live=()   # pids of the processes this script started and has not stopped yet

stop_pid() { # stop one process we started, by its pid; wait up to 5 s
  local pid=$1 i
  [ -n "${live[$pid]:-}" ] || return 0
  unset "live[$pid]"
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${!live[@]}"; do stop_pid "$pid"; done
  if [ "$have_redis" = 1 ]; then
    redis-cli -h "${REDIS_ADDR%:*}" -p "${REDIS_ADDR##*:}" --scan --pattern "${redis_prefix}*" 2>/dev/null |
      xargs -r -n 500 redis-cli -h "${REDIS_ADDR%:*}" -p "${REDIS_ADDR##*:}" UNLINK >/dev/null 2>&1 || true
  fi
  if [ "$pg_created" = 1 ]; then
    psql "$PSQL_URL" -qc "DROP SCHEMA IF EXISTS \"$pg_schema\" CASCADE" >/dev/null 2>&1 ||
      echo "run.sh: could not drop schema $pg_schema" >&2
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "run.sh: command failed at line $LINENO" >&2' ERR
trap 'exit 130' INT TERM

wait_port() { # wait_port PORT PID: up to 15 s for a listener
  local i
  for i in $(seq 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
port_free() { # port_free PORT: wait up to 5 s for nobody to listen there
  local i
  for i in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0
    sleep 0.1
  done
  die "127.0.0.1:$1 is still in use"
}
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { # user+system CPU of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat, after the command name)
  sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0
}
HZ=$(getconf CLK_TCK)
upstream_stats() { # "accepted requests" (this query's own connection included)
  curl -s --max-time 2 "http://127.0.0.1:$P_UP/__stats" | sed -n 's/.*"accepted":\([0-9]*\),"requests":\([0-9]*\).*/\1 \2/p'
}
want() { [ -z "$SCENARIOS" ] || [[ " $SCENARIOS " == *" $1 "* ]]; }

# ---- build -------------------------------------------------------------------
echo "building levee and the bench helpers..." >&2
bin=$tmp/bin; mkdir -p "$bin"
go build -o "$bin/levee" ./cmd/levee
go build -o "$bin/" ./bench/gateway/upstream ./bench/gateway/stockproxy ./bench/gateway/protoproxy
levee_rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- . 2>/dev/null || levee_rev="$levee_rev+dirty"

# ---- the upstream: one process for the whole run -----------------------------
"${on_server[@]}" "$bin/upstream" -listen "127.0.0.1:$P_UP" >"$tmp/upstream.log" 2>&1 &
up_pid=$!; live[$up_pid]=1
wait_port "$P_UP" "$up_pid" || { cat "$tmp/upstream.log" >&2; die "upstream did not start"; }

# ---- servers -----------------------------------------------------------------
server_pid=""     # the process whose RSS is reported
server_extra=""   # pids to stop with it

start_nginx() {
  local d=$tmp/nginx m
  port_free "$P_NGINX"
  rm -rf "$d"; mkdir -p "$d"
  local temps="client_body_temp_path $d/body; proxy_temp_path $d/proxy;"
  for m in fastcgi uwsgi scgi; do
    "$NGINX" -V 2>&1 | grep -q -- "--without-http_${m}_module" || temps="$temps ${m}_temp_path $d/$m;"
  done
  cat >"$d/nginx.conf" <<EOF
# generated by bench/gateway/run.sh
worker_processes $nginx_workers;
worker_rlimit_nofile 65536;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 8192; }
http {
  access_log $d/access.log combined;   # on, like levee's default access log
  $temps
  keepalive_timeout 120s;
  keepalive_requests 1000000;          # Go's server has no per-connection limit
  upstream bench_upstream {
    server 127.0.0.1:$P_UP;
    keepalive 1024;                    # idle upstream connections kept (levee: MaxIdleConnsPerHost 1024)
    keepalive_requests 1000000;
    keepalive_timeout 90s;
  }
  server {
    listen 127.0.0.1:$P_NGINX;
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Request-Id \$request_id;   # levee adds one too
      add_header X-Request-Id \$request_id always;
      proxy_read_timeout 30s;
    }
  }
}
EOF
  "${on_server[@]}" "$NGINX" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;' >"$d/stdout.log" 2>&1 &
  local master=$!; live[$master]=1
  wait_port "$P_NGINX" "$master" || { cat "$d/error.log" "$d/stdout.log" >&2; die "nginx did not start"; }
  local i
  for i in $(seq 50); do
    server_pid=$(pgrep -P "$master" | head -1)   # the (first) worker: it does the proxying
    [ -n "$server_pid" ] && break; sleep 0.1
  done
  [ -n "$server_pid" ] || die "nginx started no worker"
  server_extra=$master
}

levee_config() { # levee_config STORE IDEM(0|1) ACCESSLOG(true|false)
  cat >"$tmp/levee.yaml" <<EOF
# generated by bench/gateway/run.sh
listen: "127.0.0.1:$P_LEVEE"
admin:
  listen: "127.0.0.1:$P_ADMIN"
store:
  type: $1
  sqlite:
    path: $tmp/levee.db
  redis:
    addr: $REDIS_ADDR
    prefix: "$redis_prefix"
  postgres:
    url: "$PG_URL"
    schema: $pg_schema
log:
  level: info
  access_log: $3
EOF
  if [ "${EGRESS:-0}" = 1 ]; then
    # An egress route to a named upstream with the resilience policies a
    # third party gets: retries with a budget, a breaker, a bulkhead, the
    # partner's RateLimit headers read for pacing.
    cat >>"$tmp/levee.yaml" <<EOF
upstreams:
  - name: partner
    url: http://127.0.0.1:$P_UP
    retry: {dedupes_keys: true}
    breaker: {consecutive_failures: 50, cooldown: 5s}
    bulkhead: {max_in_flight: 1024}
    pace: {}
routes:
  - name: bench
    match:
      path_prefix: /egress
    upstream: partner
    egress: true
EOF
  else
    cat >>"$tmp/levee.yaml" <<EOF
routes:
  - name: bench
    match:
      path_prefix: /
    upstream: http://127.0.0.1:$P_UP
EOF
  fi
  if [ "$2" = 1 ]; then
    cat >>"$tmp/levee.yaml" <<EOF
    idempotency:
      enabled: true
      methods: [POST]
      required: true
EOF
  fi
}

start_levee() { # start_levee STORE IDEM ACCESSLOG
  port_free "$P_LEVEE"; port_free "$P_ADMIN"
  levee_config "$@"
  if [ "$1" = postgres ] && [ "$pg_created" = 0 ]; then
    if [ "$(psql "$PSQL_URL" -Atqc "select count(*) from pg_namespace where nspname='$pg_schema'")" != 0 ]; then
      die "schema $pg_schema already exists"
    fi
    pg_created=1   # levee creates it at start; run.sh drops it at exit
  fi
  "${on_server[@]}" "$bin/levee" serve --config "$tmp/levee.yaml" >"$tmp/levee.log" 2>&1 &
  server_pid=$!; live[$server_pid]=1; server_extra=""
  wait_port "$P_LEVEE" "$server_pid" || { tail -20 "$tmp/levee.log" >&2; die "levee ($1) did not start"; }
}

start_stock() { # start_stock default|tuned
  port_free "$P_STOCK"
  "${on_server[@]}" "$bin/stockproxy" -listen "127.0.0.1:$P_STOCK" -upstream "http://127.0.0.1:$P_UP" -transport "$1" \
    >"$tmp/stock.log" 2>&1 &
  server_pid=$!; live[$server_pid]=1; server_extra=""
  wait_port "$P_STOCK" "$server_pid" || { cat "$tmp/stock.log" >&2; die "stockproxy did not start"; }
}

start_proto() {
  port_free "$P_PROTO"
  "${on_server[@]}" "$bin/protoproxy" -listen "127.0.0.1:$P_PROTO" -upstream "127.0.0.1:$P_UP" \
    -access-log "$tmp/proto-access.log" >"$tmp/proto.log" 2>&1 &
  server_pid=$!; live[$server_pid]=1; server_extra=""
  wait_port "$P_PROTO" "$server_pid" || { cat "$tmp/proto.log" >&2; die "protoproxy did not start"; }
}

stop_server() {
  local p
  for p in $server_pid $server_extra; do
    [ "$p" = "$up_pid" ] && continue
    stop_pid "$p"
  done
  server_pid=""; server_extra=""
}

# ---- one measurement ------------------------------------------------------------
declare -A R_RPS=() R_P50=() R_P99=() R_ERR=() R_CONN=() R_UPREQ=() R_RSS=() R_REQS=() R_CPU=() R_UPCPU=()
# every round's values, space-separated, for the medians
declare -A L_RPS=() L_P50=() L_P99=() L_ERR=() L_RSS=() L_CPU=() L_UPCPU=()
order=()

wrk_run() { # wrk_run CONNS SECONDS URL MODE TAG -> LEVEEBENCH line
  "${on_load[@]}" timeout $(( $2 + 30 )) wrk -t"$wrk_threads" -c"$1" -d"$2s" --timeout 5s \
    -s "$root/bench/gateway/request.lua" "$3" -- "$4" "$5" 2>&1 | grep '^LEVEEBENCH' || true
}

measure() { # measure NAME CONNS URL MODE
  local name=$1 conns=$2 url=$3 mode=$4 tag line a0 q0 a1 q1 s0 s1 u0 u1 spid
  tag="$runid-r${round:-1}-$name"
  if [ "$mode" = replay ]; then
    tag="$runid-r${round:-1}-$name-replay"
    curl -s -o /dev/null --max-time 5 -XPOST -H 'Content-Type: application/json' -H "Idempotency-Key: $tag" \
      --data '{"amount":1000,"currency":"eur","customer":"cus_0123456789","description":"levee bench"}' "$url" || true
  fi
  if [ "$warm_s" -gt 0 ]; then
    if [ "$mode" = replay ]; then wrk_run "$conns" "$warm_s" "$url" replay "$tag" >/dev/null
    else wrk_run "$conns" "$warm_s" "$url" unique "$tag-warm" >/dev/null; fi
  fi
  spid=${server_pid:-$up_pid}
  read -r a0 q0 < <(upstream_stats)
  s0=$(cpu_ticks "$spid"); u0=$(cpu_ticks "$up_pid")
  line=$(wrk_run "$conns" "$dur_s" "$url" "$mode" "$tag")
  s1=$(cpu_ticks "$spid"); u1=$(cpu_ticks "$up_pid")
  read -r a1 q1 < <(upstream_stats)
  [ -n "$line" ] || die "$name: wrk produced no result"
  local kv; declare -A v=()
  for kv in ${line#LEVEEBENCH }; do v[${kv%%=*}]=${kv#*=}; done
  [[ " ${order[*]} " == *" $name "* ]] || order+=("$name")
  R_REQS[$name]=${v[requests]}
  R_RPS[$name]=$(awk -v n="${v[requests]}" -v us="${v[duration_us]}" 'BEGIN { printf "%.0f", n / (us / 1e6) }')
  R_P50[$name]=$(awk -v u="${v[p50_us]}" 'BEGIN { printf "%.2f", u / 1000 }')
  R_P99[$name]=$(awk -v u="${v[p99_us]}" 'BEGIN { printf "%.2f", u / 1000 }')
  R_ERR[$name]=$(( v[non2xx] + v[err_connect] + v[err_read] + v[err_write] + v[err_timeout] ))
  R_CONN[$name]=$(( a1 - a0 - 1 ))   # minus the second stats query's own connection
  R_UPREQ[$name]=$(( q1 - q0 ))
  R_CPU[$name]=$(awk -v t=$(( s1 - s0 )) -v hz="$HZ" -v n="${v[requests]}" 'BEGIN { printf "%.1f", n ? t / hz * 1e6 / n : 0 }')
  R_UPCPU[$name]=$(awk -v t=$(( u1 - u0 )) -v hz="$HZ" -v n="${v[requests]}" 'BEGIN { printf "%.1f", n ? t / hz * 1e6 / n : 0 }')
  [ "$spid" != "$up_pid" ] || R_UPCPU[$name]=-
  R_RSS[$name]=$(awk -v k="$(hwm_kib "${server_pid:-$up_pid}")" 'BEGIN { printf "%.1f", k / 1024 }')
  L_RPS[$name]+=" ${R_RPS[$name]}"; L_P50[$name]+=" ${R_P50[$name]}"; L_P99[$name]+=" ${R_P99[$name]}"
  L_ERR[$name]+=" ${R_ERR[$name]}"; L_RSS[$name]+=" ${R_RSS[$name]}"; L_CPU[$name]+=" ${R_CPU[$name]}"; L_UPCPU[$name]+=" ${R_UPCPU[$name]}"
  printf '  %-22s %8s req/s  p50 %6s ms  p99 %6s ms  errors %s  upstream conns +%s  peak RSS %s MiB  CPU %s µs/req (upstream %s)\n' \
    "$name" "${R_RPS[$name]}" "${R_P50[$name]}" "${R_P99[$name]}" "${R_ERR[$name]}" "${R_CONN[$name]}" "${R_RSS[$name]}" "${R_CPU[$name]}" "${R_UPCPU[$name]}" >&2
}

levee_outcomes() { # the idempotency outcome counters, from the admin listener
  curl -s --max-time 2 "http://127.0.0.1:$P_ADMIN/metrics" |
    awk '/^levee_idempotency_outcomes_total/ { o = $1; sub(/.*outcome="/, "", o); sub(/".*/, "", o); printf "%s=%s ", o, $2 }'
}
declare -A OUTCOMES=()

scenario() { # scenario NAME CONNS KIND ARGS...
  local name=$1 conns=$2 kind=$3; shift 3
  want "$name" || return 0
  case $kind in
    upstream) server_pid=$up_pid; measure "$name" "$conns" "http://127.0.0.1:$P_UP/v1/payments" unique; server_pid="";;
    nginx) start_nginx; measure "$name" "$conns" "http://127.0.0.1:$P_NGINX/v1/payments" unique; stop_server;;
    stock) start_stock "$1"; measure "$name" "$conns" "http://127.0.0.1:$P_STOCK/v1/payments" unique; stop_server;;
    proto) start_proto; measure "$name" "$conns" "http://127.0.0.1:$P_PROTO/v1/payments" unique; stop_server
      rm -f "$tmp/proto-access.log";;
    levee) # levee STORE IDEM ACCESSLOG MODE
      if [ "$1" = redis ] && [ "$have_redis" = 0 ]; then echo "  $name: skipped (no Redis at $REDIS_ADDR)" >&2; return 0; fi
      if [ "$1" = postgres ] && [ "$have_pg" = 0 ]; then echo "  $name: skipped (no Postgres at $PG_URL)" >&2; return 0; fi
      local path=/v1/payments
      if [ "${EGRESS:-0}" = 1 ]; then path=/egress/v1/payments; fi
      start_levee "$1" "$2" "$3"
      measure "$name" "$conns" "http://127.0.0.1:$P_LEVEE$path" "$4"
      if [ "$2" = 1 ]; then
        OUTCOMES[$name]=$(levee_outcomes)
        local ferr
        ferr=$(grep -m1 '"idempotency store failure"' "$tmp/levee.log" | sed -n 's/.*"error":"\([^"]*\)".*/\1/p' | cut -c1-160 || true)
        [ -z "$ferr" ] || OUTCOMES[$name]="${OUTCOMES[$name]} (first store error: $ferr)"
      fi
      stop_server
      rm -f "$tmp/levee.log";;
  esac
}

pin_desc="wrk -t$wrk_threads on CPU $LOAD_CPU; upstream, nginx (worker_processes $nginx_workers) and levee/Go proxies on CPU $SERVER_CPU (taskset), so every Go server runs with GOMAXPROCS=1 and nginx with one worker: one core for the proxy+upstream, one for the load generator. Redis and Postgres are the machine's own services and are not pinned."
[ "$PIN" = 1 ] || pin_desc="no pinning: wrk -t2, nginx worker_processes auto, Go servers GOMAXPROCS=$(nproc); everything shares $(nproc) CPUs."
echo "method: $pin_desc" >&2
echo "each scenario: ${WARMUP} warm-up (discarded), then ${DURATION} measured; ${CONNS} connections (and ${CONNS_HIGH} for the *-c$CONNS_HIGH rows)" >&2

c=$CONNS
declare -a ROUND_RATIOS=()
for round in $(seq "$REPEAT"); do
[ "$REPEAT" = 1 ] || echo "round $round of $REPEAT" >&2
scenario upstream-direct        "$c" upstream
scenario nginx                  "$c" nginx
scenario go-stock-proxy         "$c" stock default
scenario go-stock-proxy-tuned   "$c" stock tuned
scenario proto-proxy            "$c" proto
scenario levee-plain            "$c" levee memory 0 true  unique
scenario levee-plain-nolog      "$c" levee memory 0 false unique
EGRESS=1 scenario levee-egress    "$c" levee memory 0 true  unique
scenario levee-idem-sqlite      "$c" levee sqlite 1 true unique
scenario levee-idem-redis       "$c" levee redis 1 true unique
scenario levee-idem-postgres    "$c" levee postgres 1 true unique
scenario levee-replay-sqlite    "$c" levee sqlite 1 true replay
scenario levee-replay-redis     "$c" levee redis 1 true replay
scenario levee-replay-postgres  "$c" levee postgres 1 true replay
if [ "$CONNS_HIGH" -gt 0 ]; then
  h=$CONNS_HIGH
  scenario "nginx-c$h"            "$h" nginx
  scenario "proto-proxy-c$h"      "$h" proto
  scenario "levee-plain-c$h"      "$h" levee memory 0 true unique
  scenario "levee-idem-redis-c$h" "$h" levee redis 1 true unique
fi
if [ -n "${R_RPS[nginx]:-}" ] && [ -n "${R_RPS[levee-plain]:-}" ]; then
  ROUND_RATIOS+=("$(awk -v a="${R_RPS[levee-plain]}" -v b="${R_RPS[nginx]}" 'BEGIN { printf "%.2f", a / b }')")
fi
done

# ---- medians over the rounds ------------------------------------------------------
median() { # median of the numbers in $1 ("-" when not numeric)
  echo "$1" | tr ' ' '\n' | awk 'NF && $1 != "-" { v[n++] = $1 } END {
    if (n == 0) { print "-"; exit }
    for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    m = (n % 2) ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2
    if (m > 100) printf "%.0f\n", m; else printf "%.2f\n", m }'
}
maxof() { echo "$1" | tr ' ' '\n' | awk 'NF { if ($1 + 0 > m) m = $1 + 0 } END { printf "%.1f\n", m }'; }
sumof() { echo "$1" | tr ' ' '\n' | awk 'NF { s += $1 } END { print s + 0 }'; }
if [ "$REPEAT" -gt 1 ]; then
  for n in "${order[@]}"; do
    R_RPS[$n]=$(median "${L_RPS[$n]}"); R_P50[$n]=$(median "${L_P50[$n]}"); R_P99[$n]=$(median "${L_P99[$n]}")
    R_CPU[$n]=$(median "${L_CPU[$n]}"); R_UPCPU[$n]=$(median "${L_UPCPU[$n]}")
    R_RSS[$n]=$(maxof "${L_RSS[$n]}"); R_ERR[$n]=$(sumof "${L_ERR[$n]}")
  done
fi

# ---- report ---------------------------------------------------------------------
ratio() { # ratio A B -> A/B with 2 decimals, or - when B is missing
  [ -n "${2:-}" ] && [ "${2:-0}" != 0 ] && [ -n "${1:-}" ] || { echo "-"; return; }
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
}
host_desc="$(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), Linux $(uname -r)"
versions="$(go version | awk '{print $3}'), $("$NGINX" -v 2>&1 | sed 's/.*version: //'), $( (wrk -v 2>&1 || true) | awk 'NR == 1 {print "wrk " $2}')"
[ "$have_redis" = 1 ] && versions="$versions, redis $(redis-cli -h "${REDIS_ADDR%:*}" -p "${REDIS_ADDR##*:}" INFO server | awk -F: '/^redis_version/ {print $2}' | tr -d '\r')"
[ "$have_pg" = 1 ] && versions="$versions, $(psql "$PSQL_URL" -Atqc 'show server_version' | awk '{print "postgres " $1}')"

report() {
  echo "# levee gateway benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- levee $levee_rev; $versions"
  echo "- host: $host_desc"
  echo "- method: $pin_desc"
  echo "- load: wrk, ${DURATION} per scenario after a ${WARMUP} warm-up (discarded), ${CONNS} connections $([ "$CONNS_HIGH" -gt 0 ] && echo "(rows named -c${CONNS_HIGH}: ${CONNS_HIGH})"); every request is the same 87-byte JSON POST with an Idempotency-Key header, new per request (\`unique\`) or one key throughout (\`replay\`, sent once before the run); the upstream answers 201 with 76 bytes of JSON."
  echo "- nginx: generated config, keepalive 1024 to the upstream (HTTP/1.1, Connection \"\"), X-Forwarded-* and X-Request-Id set, access log on (combined, unbuffered). levee: access log on (its default) unless -nolog; idempotency routes cover POST with the key required. Redis prefix and Postgres schema are unique to the run and removed at the end."
  echo
  echo "| scenario | conns | req/s | p50 ms | p99 ms | errors | ratio to nginx | ratio to levee plain | upstream conns opened | upstream reqs | server peak RSS MiB | server CPU µs/req | upstream CPU µs/req |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  local n conns ng lp
  for n in "${order[@]}"; do
    conns=$CONNS; ng=nginx; lp=levee-plain
    if [[ $n == *-c$CONNS_HIGH ]]; then conns=$CONNS_HIGH; ng=nginx-c$CONNS_HIGH; lp=levee-plain-c$CONNS_HIGH; fi
    echo "| $n | $conns | ${R_RPS[$n]} | ${R_P50[$n]} | ${R_P99[$n]} | ${R_ERR[$n]} | $(ratio "${R_RPS[$n]}" "${R_RPS[$ng]:-}") | $(ratio "${R_RPS[$n]}" "${R_RPS[$lp]:-}") | ${R_CONN[$n]} | ${R_UPREQ[$n]} | ${R_RSS[$n]} | ${R_CPU[$n]} | ${R_UPCPU[$n]} |"
  done
  echo
  if [ "$REPEAT" -gt 1 ]; then
    echo "$REPEAT rounds, scenarios interleaved; the table gives each scenario's median (peak RSS: the maximum; errors: the sum; upstream conns and reqs: the last round). levee-plain / nginx per round: ${ROUND_RATIOS[*]:-n/a}."
    echo
    if [ -n "${L_RPS[levee-plain]:-}" ]; then
      # The medians come from different rounds: on a VM whose speed drifts,
      # they can pair a slow round of one scenario with a fast one of
      # another. Each round's ratio compares scenarios run minutes apart.
      echo "Per round, ratio to that round's levee-plain:"
      echo
      for n in "${order[@]}"; do
        [ "$n" = levee-plain ] || [[ $n == *-c$CONNS_HIGH ]] && continue
        echo "- $n: $(paste -d' ' <(echo "${L_RPS[$n]}" | tr ' ' '\n' | awk NF) <(echo "${L_RPS[levee-plain]}" | tr ' ' '\n' | awk NF) |
          awk '$1 != "-" && $2 != "-" && $2 > 0 { printf "%s%.2f", (k++ ? " · " : ""), $1 / $2 } END { if (!k) printf "-" }')"
      done
      spread=$(echo "${L_RPS[levee-plain]}" | tr ' ' '\n' | awk 'NF && $1 != "-" { if (!n++ || $1 < lo) lo = $1; if ($1 > hi) hi = $1 } END { if (n && lo > 0) printf "%.0f", (hi / lo - 1) * 100; else print 0 }')
      echo
      echo "levee-plain per round: $(echo "${L_RPS[levee-plain]}" | awk '{ $1 = $1; gsub(/ /, " · "); print }') req/s (spread ${spread}%)."
      if [ "$spread" -gt 20 ]; then
        echo
        echo "**Drift: levee-plain's rounds differ by ${spread}%.** The machine's speed changed during the run; the medians above may pair rounds of different speeds. Read the per-round ratios, or run again."
      fi
      echo
    fi
  fi
  echo -n "Goals: levee-plain / nginx ≥ 0.80 → **$(ratio "${R_RPS[levee-plain]:-}" "${R_RPS[nginx]:-}")**;" \
    "levee-idem-redis / levee-plain ≥ 0.60 → **$(ratio "${R_RPS[levee-idem-redis]:-}" "${R_RPS[levee-plain]:-}")**"
  if [ "$CONNS_HIGH" -gt 0 ]; then
    echo "; levee peak RSS at ${CONNS_HIGH} connections < 100 MiB → plain **${R_RSS[levee-plain-c$CONNS_HIGH]:-?} MiB**, redis **${R_RSS[levee-idem-redis-c$CONNS_HIGH]:-?} MiB**."
  else echo "."; fi
  echo
  if [ -n "${R_RPS[levee-plain]:-}" ]; then
    # Issue 11's goals, from the table's medians.
    echo "Durable stores (issue 11): levee-idem-sqlite / plain ≥ 0.50 → **$(ratio "${R_RPS[levee-idem-sqlite]:-}" "${R_RPS[levee-plain]}")**, its p99 ≤ 3× plain's → **$(ratio "${R_P99[levee-idem-sqlite]:-}" "${R_P99[levee-plain]:-}")×**; levee-idem-postgres / plain ≥ 0.45 → **$(ratio "${R_RPS[levee-idem-postgres]:-}" "${R_RPS[levee-plain]}")**; levee-replay-sqlite / plain ≥ 0.85 → **$(ratio "${R_RPS[levee-replay-sqlite]:-}" "${R_RPS[levee-plain]}")**."
    echo
  fi
  echo "go-stock-proxy = httputil.NewSingleHostReverseProxy with http.DefaultTransport; -tuned: the same with MaxIdleConnsPerHost 1024. proto-proxy = bench/gateway/protoproxy, a measurement prototype (net/http server + an HTTP/1.1 upstream client in the handler goroutine, access log per line), not levee."
  echo
  echo "errors = non-2xx answers + socket errors seen by wrk. upstream conns opened = TCP connections the upstream accepted during the measured run (0 = the proxy reused its pool). server peak RSS = VmHWM of the server process (levee / Go proxy / the nginx worker / the upstream for the direct row) at the end of its run; each proxy scenario starts a fresh process. CPU µs/req = user+system CPU time of that process (and of the upstream) during the measured run, divided by the requests wrk completed (clock-tick resolution)."
  if [ ${#OUTCOMES[@]} -gt 0 ]; then
    echo
    echo "Idempotency outcomes counted by levee (warm-up included):"
    echo
    for n in "${order[@]}"; do [ -n "${OUTCOMES[$n]:-}" ] && echo "- $n: ${OUTCOMES[$n]}"; done
  fi
  return 0
}
mkdir -p bench/out
out="bench/out/gateway-$(date -u +%Y%m%d-%H%M%S).md"
report | tee "$out"
echo >&2
echo "written to $out" >&2
