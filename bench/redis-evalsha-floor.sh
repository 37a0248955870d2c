#!/usr/bin/env bash
# The floor for the Redis rate limiter: how many EVALSHA calls per second
# redis-benchmark (a C client, no per-call work) gets through at the same
# concurrency, running levee's own decision script on one rate policy with
# random keys. Compare BenchmarkRedisDecide in store/redis/redislimit (go test
# -bench), which runs the same script through the Go store.
#
# Usage: bench/redis-evalsha-floor.sh [requests] [clients]
# Env:   LEVEE_REDIS_ADDR (default 127.0.0.1:6379)
# Prints one line: "<ops/s>". Bounded: at most 2,000,000 requests and 120 s.
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:-200000}
c=${2:-50}
if [ "$n" -gt 2000000 ]; then n=2000000; fi
addr=${LEVEE_REDIS_ADDR:-127.0.0.1:6379}
host=${addr%:*}
port=${addr##*:}

command -v redis-benchmark >/dev/null || { echo "redis-benchmark not found" >&2; exit 1; }
command -v redis-cli >/dev/null || { echo "redis-cli not found" >&2; exit 1; }

sha=$(redis-cli -h "$host" -p "$port" SCRIPT LOAD "$(cat store/redis/redislimit/decide.lua)")
# One rate demand: 100/s (interval 10000 µs, burst 100 = 1000000 µs), cost 1,
# on one of 100000 random keys that expire by themselves within 10 ms.
timeout 120 redis-benchmark -h "$host" -p "$port" -c "$c" -n "$n" -r 100000 --csv \
  EVALSHA "$sha" 1 'levee:rlbench:{all}:r:__rand_int__' 0 r 10000 1000000 1 |
  awk -F'","' 'NR==2 { print $2 }'
