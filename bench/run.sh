#!/usr/bin/env bash
# Reproduces the figures in BENCHMARKS.md.
#
#   bench/run.sh [scenario...]     scenarios: fanout maxrate idle storm throughput reconnect (default: all)
#
# The gateway (or the reference server) is pinned to CPU 0 and the load
# client to CPU 1, so "server CPU per delivery" is not polluted by the client.
# Each figure is run RUNS times (default 3); the JSON reports land in
# $OUT (default bench/results) and a summary line per run is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
RUNS=${RUNS:-3}
DURATION=${DURATION:-15}
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
mkdir -p "$OUT"
cargo build --release --quiet -p chatgw -p loadtest
GW=./target/release/chatgw
LT=./target/release/loadtest
REF=./target/release/refserver
export JWT_SECRET=bench-secret-0123456789-abcdefghijklmnopqrstuv
PORT=18181
URL=ws://127.0.0.1:$PORT/ws
# Load-test knobs: one source IP would hit the per-IP handshake limit.
export WS_HANDSHAKES_PER_IP_PER_SEC=1000000 WS_SEND_PER_SEC=10000 WS_SEND_BURST=10000 RUST_LOG=warn
pid=""

stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=""; }
trap stop EXIT

db_url() { # sqlite|postgres
    if [ "$1" = sqlite ]; then
        rm -rf "$OUT/data"; mkdir -p "$OUT/data"; echo "sqlite://$OUT/data/bench.db"
    else
        psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS chatgw_bench WITH (FORCE)" -c "CREATE DATABASE chatgw_bench" >/dev/null
        echo "${PG_ADMIN%/*}/chatgw_bench"
    fi
}

# start_gateway BACKEND USERS ROOMS ROOM_SIZE
start_gateway() {
    local db; db=$(db_url "$1")
    DATABASE_URL=$db $GW seed --users "$2" --rooms "$3" --room-size "$4" --token-ttl-secs 7200 --out "$OUT/seed.json" >/dev/null
    DATABASE_URL=$db LISTEN_ADDR=127.0.0.1:$PORT taskset -c 0 $GW >"$OUT/gateway.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && return; sleep 0.1; done
    echo "gateway did not start" >&2; exit 1
}

start_ref() {
    taskset -c 0 $REF --listen 127.0.0.1:$PORT >"$OUT/ref.log" 2>&1 &
    pid=$!
    sleep 0.5
}

summary() { # report.json
    python3 - "$1" <<'PY'
import json,sys
r=json.load(open(sys.argv[1])); s=r.get("server") or {}
print(f'{r["scenario"]:<14} clients={r["connected"]}/{r["clients"]} deliv/s={r["deliveries_per_sec"]:.0f} '
      f'p50={r["latency"]["p50_ms"]:.2f} p99={r["latency"]["p99_ms"]:.2f} p999={r["latency"]["p999_ms"]:.2f}ms '
      f'lost={r["lost"]} dup={r["duplicated"]} reord={r["reordered"]} '
      f'cpu_us/deliv={s.get("cpu_us_per_delivery") or 0:.2f} kib/conn={s.get("kib_per_connection") or 0:.2f} '
      f'hs/s={r.get("handshakes_per_sec") or 0:.0f} errors={r["errors_by_code"]} closes={r["closes_by_code"]}')
PY
}

lt() { # name args...
    local name=$1; shift
    taskset -c 1 $LT "$@" --quiet --json "$OUT/$name.json" >/dev/null
    printf '%-28s ' "$name"; summary "$OUT/$name.json"
}

fanout() { # 1,000 sockets, 10 rooms of 100, 500 sends/s = 50k deliveries/s
    for run in $(seq "$RUNS"); do
        start_ref
        lt "fanout-ref-$run" fanout --url $URL --rooms 10 --room-size 100 --rate 500 --duration "$DURATION" --gateway-pid $pid
        stop
        for be in sqlite postgres; do
            start_gateway $be 1000 10 100
            lt "fanout-$be-$run" fanout --url $URL --seed "$OUT/seed.json" --rooms 10 --room-size 100 --rate 500 --duration "$DURATION" --gateway-pid $pid
            stop
        done
    done
}

maxrate() { # the send rate at which p99 passes 50 ms, gateway vs reference
    for rate in ${RATES:-500 1000 1500 2000 3000}; do
        start_ref
        lt "maxrate-ref-$rate" fanout --url $URL --rooms 10 --room-size 100 --rate "$rate" --duration 10 --gateway-pid $pid
        stop
        start_gateway postgres 1000 10 100
        lt "maxrate-postgres-$rate" fanout --url $URL --seed "$OUT/seed.json" --rooms 10 --room-size 100 --rate "$rate" --duration 10 --gateway-pid $pid
        stop
    done
}

throughput() { # persisted messages/s from many senders: 1,000 rooms of 2
    for be in postgres sqlite; do
        for rate in ${TP_RATES:-10000 20000}; do
            start_gateway $be 2000 1000 2
            lt "throughput-$be-$rate" fanout --url $URL --seed "$OUT/seed.json" --rooms 1000 --room-size 2 --rate "$rate" --duration 10 --gateway-pid $pid
            stop
        done
    done
}

idle() { # N idle authenticated sockets, gateway KiB per connection
    local n=${IDLE_N:-19000}
    start_gateway sqlite "$n" 1 2
    lt "idle-$n" idle --url $URL --seed "$OUT/seed.json" --connections "$n" --duration 5 --source-ips 8 --gateway-pid $pid
    stop
}

storm() { # authenticated handshakes per second
    for run in $(seq "$RUNS"); do
        start_gateway sqlite 5000 1 2
        lt "storm-$run" connect-storm --url $URL --seed "$OUT/seed.json" --connections 5000 --concurrency 256 --gateway-pid $pid
        stop
    done
}

reconnect() { # continuous drop-and-resume under load: zero lost, zero duplicated
    start_gateway postgres 1000 10 100
    lt "reconnect-postgres" reconnect --url $URL --seed "$OUT/seed.json" --rooms 10 --room-size 100 --rate 500 --duration "$DURATION" --reconnect-every 5 --gateway-pid $pid --assert
    stop
}

for s in "${@:-fanout maxrate throughput idle storm reconnect}"; do
    for x in $s; do "$x"; done
done
