#!/usr/bin/env bash
# The tail check's cost (BENCHMARKS.md, "Tail check (issue 21)"): the CPU of
# a quiet gateway whose sockets have joined ROOMS rooms, with the check on
# (BUS_TAIL_CHECK_MS, default 2000) and off (0).
#
#   bench/tail-check.sh            ROOMS (1000), WINDOW seconds (30), RUNS (3), TAIL_MS (2000)
#
# One instance on PostgreSQL with Redis (alone, without a bus peer, the check
# is skipped), pinned to CPU 0. loadtest's fanout holds 2 sockets per room
# (every room joined) at 1 send per second over all rooms, so every room is
# quiet; it runs on CPU 1. The gateway's CPU (utime + stime from /proc) is
# read over WINDOW seconds after a 10-second settle.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results-tail}
ROOMS=${ROOMS:-1000}
WINDOW=${WINDOW:-30}
RUNS=${RUNS:-3}
TAIL_MS=${TAIL_MS:-2000}
PORT=${PORT:-18281}
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
GW=${GW:-./target/release/chatgw}
LT=${LT:-./target/release/loadtest}
export JWT_SECRET=bench-secret-0123456789-abcdefghijklmnopqrstuv
export WS_HANDSHAKES_PER_IP_PER_SEC=1000000 RUST_LOG=warn
mkdir -p "$OUT"
pid="" lt_pid=""
stop() {
    if [ -n "$lt_pid" ]; then kill "$lt_pid" 2>/dev/null; wait "$lt_pid" 2>/dev/null || true; fi
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; fi
    pid="" lt_pid=""
}
trap stop EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run() { # BUS_TAIL_CHECK_MS
    local db=chatgw_bench_tail
    psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null 2>&1
    local url=${PG_ADMIN%/*}/$db
    DATABASE_URL=$url $GW seed --users $((ROOMS * 2)) --rooms "$ROOMS" --room-size 2 --token-ttl-secs 7200 \
        --out "$OUT/seed.json" >/dev/null
    DATABASE_URL=$url REDIS_URL=$REDIS_URL REDIS_PREFIX="bench-tail-$$:" BUS_TAIL_CHECK_MS=$1 \
        LISTEN_ADDR=127.0.0.1:$PORT METRICS_ADDR=127.0.0.1:$((PORT + 1)) taskset -c 0 $GW >"$OUT/gateway.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
    taskset -c 1 $LT fanout --url "ws://127.0.0.1:$PORT/ws" --seed "$OUT/seed.json" --rooms "$ROOMS" --room-size 2 \
        --senders-per-room 1 --rate 1 --duration $((WINDOW + 20)) --quiet --json "$OUT/lt.json" >/dev/null &
    lt_pid=$!
    sleep 10
    local a b
    a=$(ticks "$pid")
    sleep "$WINDOW"
    b=$(ticks "$pid")
    local checks
    checks=$(curl -fs "http://127.0.0.1:$((PORT + 1))/metrics" | awk '/^chatgw_hub_tail_checks_total/ {print $2}')
    local rooms
    rooms=$(curl -fs "http://127.0.0.1:$((PORT + 1))/metrics" | awk '/^chatgw_hub_rooms / {print $2}')
    printf 'BUS_TAIL_CHECK_MS=%-5s rooms=%s cpu_ms_per_s=%.2f tail_checks_total=%s\n' "$1" "$rooms" \
        "$(echo "($b - $a) * 1000 / $hz / $WINDOW" | bc -l)" "$checks"
    stop
}

for _ in $(seq "$RUNS"); do
    run 0
    run "$TAIL_MS"
done
