#!/usr/bin/env bash
# Reproduces the figures in BENCHMARKS.md.
#
#   bench/run.sh [scenario...]     scenarios: fanout maxrate idle storm throughput reconnect cluster (default: all),
#                                  and instructions (callgrind), authstorm (sign-in storm), resume (500-room
#                                  sync vs joins) and rstorm (reconnect storm: RSTORM_N clients in 5 rooms each
#                                  drop at once and resume with sync); none of these four in the default set
#
# The gateway (or the reference server) is pinned to CPU 0 and the load
# client to CPU 1, so "server CPU per delivery" is not polluted by the client.
# Each figure is run RUNS times (default 3); the JSON reports land in
# $OUT (default bench/results) and a summary line per run is printed.
# Knobs: GW (another gateway build), NO_BUILD=1, BACKENDS (fanout, maxrate),
# ROOMS/ROOM_SIZE (fanout), SCRAPE=1 (serve /metrics, scraped every second),
# PG_URL_PARAMS (appended to the PostgreSQL URL), and any gateway variable
# (SQLITE_SYNCHRONOUS=full, …), which the gateway inherits.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
RUNS=${RUNS:-3}
DURATION=${DURATION:-15}
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
mkdir -p "$OUT"
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet -p chatgw -p loadtest  # NO_BUILD=1: use the binaries as they are
GW=${GW:-./target/release/chatgw}   # GW=... benchmarks another build (before/after, allocators)
LT=${LT:-./target/release/loadtest}
REF=./target/release/refserver
export JWT_SECRET=bench-secret-0123456789-abcdefghijklmnopqrstuv
PORT=${PORT:-18181}
URL=ws://127.0.0.1:$PORT/ws
# Load-test knobs: one source IP would hit the per-IP handshake limit.
export WS_HANDSHAKES_PER_IP_PER_SEC=1000000 WS_SEND_PER_SEC=10000 WS_SEND_BURST=10000 RUST_LOG=warn
pid=""

stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=""; }
trap 'stop; stop_all; stop_redis' EXIT

db_url() { # sqlite|postgres
    if [ "$1" = sqlite ]; then
        rm -rf "$OUT/data"; mkdir -p "$OUT/data"; echo "sqlite://$OUT/data/bench.db"
    else
        psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS chatgw_bench WITH (FORCE)" -c "CREATE DATABASE chatgw_bench" >/dev/null
        echo "${PG_ADMIN%/*}/chatgw_bench${PG_URL_PARAMS:-}"   # e.g. ?options=-c%20synchronous_commit%3Doff
    fi
}

# start_gateway BACKEND USERS ROOMS ROOM_SIZE
start_gateway() {
    local db; db=$(db_url "$1")
    DATABASE_URL=$db $GW seed --users "$2" --rooms "$3" --room-size "$4" --token-ttl-secs 7200 --out "$OUT/seed.json" >/dev/null
    local metrics=off
    [ -n "${SCRAPE:-}" ] && metrics=127.0.0.1:$((PORT + 1))
    DATABASE_URL=$db LISTEN_ADDR=127.0.0.1:$PORT METRICS_ADDR=$metrics taskset -c 0 $GW >"$OUT/gateway.log" 2>&1 &
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
      f'cpu_us/deliv={s.get("cpu_us_per_delivery") or 0:.2f} ctx/deliv={s.get("ctx_switches_per_delivery") or 0:.3f} kib/conn={s.get("kib_per_connection") or 0:.2f} '
      f'hs/s={r.get("handshakes_per_sec") or 0:.0f} errors={r["errors_by_code"]} closes={r["closes_by_code"]}')
PY
}

lt() { # name args...
    local name=$1; shift
    taskset -c 1 $LT "$@" --quiet --json "$OUT/$name.json" >/dev/null
    printf '%-28s ' "$name"; summary "$OUT/$name.json"
}

fanout() { # 1,000 sockets, 10 rooms of 100, 500 sends/s = 50k deliveries/s
    # ROOMS/ROOM_SIZE change the shape (ROOMS*ROOM_SIZE users); BACKENDS picks
    # the gateways; SCRAPE=1 serves /metrics and scrapes it every second.
    local rooms=${ROOMS:-10} size=${ROOM_SIZE:-100}
    for run in $(seq "$RUNS"); do
        start_ref
        lt "fanout-ref-$run" fanout --url $URL --rooms "$rooms" --room-size "$size" --rate 500 --duration "$DURATION" --gateway-pid $pid
        stop
        for be in ${BACKENDS:-sqlite postgres}; do
            start_gateway $be $((rooms * size)) "$rooms" "$size"
            local scraper=""
            if [ -n "${SCRAPE:-}" ]; then
                (while sleep 1; do curl -fs "http://127.0.0.1:$((PORT + 1))/metrics" >/dev/null; done) & scraper=$!
            fi
            lt "fanout-$be-$run" fanout --url $URL --seed "$OUT/seed.json" --rooms "$rooms" --room-size "$size" --rate 500 --duration "$DURATION" --gateway-pid $pid
            [ -n "$scraper" ] && kill "$scraper"
            stop
        done
    done
}

maxrate() { # the send rate at which p99 passes 50 ms, gateway vs reference (BACKENDS: postgres by default)
    for rate in ${RATES:-500 1000 1500 2000 3000}; do
        start_ref
        lt "maxrate-ref-$rate" fanout --url $URL --rooms 10 --room-size 100 --rate "$rate" --duration 10 --gateway-pid $pid
        stop
        for be in ${BACKENDS:-postgres}; do
            start_gateway $be 1000 10 100
            lt "maxrate-$be-$rate" fanout --url $URL --seed "$OUT/seed.json" --rooms 10 --room-size 100 --rate "$rate" --duration 10 --gateway-pid $pid
            stop
        done
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

# --- cluster: two instances on one PostgreSQL and one Redis (or a 3-master
# Redis Cluster), against one instance in the same session. 1,000 sockets,
# 10 rooms of 100, 10 senders per room on instance A, every other member
# spread over A and B, 500 sends/s. Both gateways share CPU 0 (their CPU is
# summed); the load client has CPU 1; Redis and PostgreSQL float.
RPORT=16390
redis_pids=()
stop_redis() { for p in "${redis_pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; redis_pids=(); rm -rf "$OUT/redis"; }
start_redis() { # standalone on RPORT
    mkdir -p "$OUT/redis"
    redis-server --port $RPORT --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT/redis" >/dev/null 2>&1 &
    redis_pids+=($!)
    for _ in $(seq 50); do redis-cli -p $RPORT ping 2>/dev/null | grep -q PONG && return; sleep 0.1; done
}
start_redis_cluster() { # 3 masters on RPORT..RPORT+2
    mkdir -p "$OUT/redis"
    local nodes=()
    for i in 0 1 2; do
        local p=$((RPORT + i))
        redis-server --port $p --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT/redis" \
            --cluster-enabled yes --cluster-config-file "nodes-$p.conf" >/dev/null 2>&1 &
        redis_pids+=($!)
        nodes+=("127.0.0.1:$p")
    done
    for i in 0 1 2; do for _ in $(seq 50); do redis-cli -p $((RPORT + i)) ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done; done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
    for _ in $(seq 100); do redis-cli -p $RPORT cluster info | grep -q cluster_state:ok && return; sleep 0.1; done
}
redis_in_bytes() { # summed over the nodes
    local total=0
    for p in "$@"; do
        total=$((total + $(redis-cli -p "$p" info stats | awk -F: '/^total_net_input_bytes/ {print $2+0}')))
    done
    echo $total
}
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; pids=(); }
start_two() { # REDIS_URL
    local db; db=$(db_url postgres)
    DATABASE_URL=$db $GW seed --users 1000 --rooms 10 --room-size 100 --token-ttl-secs 7200 --out "$OUT/seed.json" >/dev/null
    for p in $PORT $((PORT + 1)); do
        DATABASE_URL=$db REDIS_URL=$1 LISTEN_ADDR=127.0.0.1:$p taskset -c 0 $GW >"$OUT/gateway-$p.log" 2>&1 &
        pids+=($!)
    done
    for p in $PORT $((PORT + 1)); do
        for _ in $(seq 100); do curl -fs "http://127.0.0.1:$p/readyz" >/dev/null && break; sleep 0.1; done
    done
}
CLUSTER_ARGS="--rooms 10 --room-size 100 --rate 500 --senders-per-room 10 --senders-on 0"
cluster() {
    local URL2="ws://127.0.0.1:$((PORT + 1))/ws"
    for run in $(seq "$RUNS"); do
        start_gateway postgres 1000 10 100
        lt "cluster-one-$run" fanout --url $URL --seed "$OUT/seed.json" $CLUSTER_ARGS --duration "$DURATION" --gateway-pid $pid
        stop
        for kind in redis rediscluster; do
            if [ $kind = redis ]; then start_redis; url=redis://127.0.0.1:$RPORT; ports=($RPORT)
            else start_redis_cluster; url="redis-cluster://127.0.0.1:$RPORT?node=127.0.0.1:$((RPORT + 1))&node=127.0.0.1:$((RPORT + 2))"; ports=($RPORT $((RPORT + 1)) $((RPORT + 2))); fi
            start_two "$url"
            for p in "${ports[@]}"; do redis-cli -p "$p" config resetstat >/dev/null; done
            local before; before=$(redis_in_bytes "${ports[@]}")
            lt "cluster-$kind-$run" fanout --url "$URL,$URL2" --seed "$OUT/seed.json" $CLUSTER_ARGS --duration "$DURATION" \
                --gateway-pid "${pids[0]},${pids[1]}"
            local after; after=$(redis_in_bytes "${ports[@]}")
            python3 - "$OUT/cluster-$kind-$run.json" "$((after - before))" <<'PY'
import json,sys
r=json.load(open(sys.argv[1])); sent=r.get("sent") or r.get("sends") or 0
print(f'    redis bytes in: {int(sys.argv[2])}  per message sent: {int(sys.argv[2])/max(sent,1):.0f}')
PY
            # Commands by kind, summed over the nodes (publishes vs presence).
            for p in "${ports[@]}"; do redis-cli -p "$p" info commandstats; done \
                | awk -F'[:=,]' '/^cmdstat_/ { calls[$1] += $3 } END { for (c in calls) printf "    %s=%d", substr(c, 9), calls[c]; print "" }'
            stop_all; stop_redis
        done
    done
}

instructions() { # instructions per delivered message under callgrind: a count, steady on a noisy machine
    # One room of 100, 5 sends/s for 20 s (valgrind runs the gateway ~50x
    # slower), SQLite; counting starts when the load does (after start-up),
    # so the 100 handshakes and joins are counted too: INSTR_SECS=60 spreads
    # them over three times the deliveries.
    # Compare builds with GW=…; not part of the default set.
    for run in $(seq "$RUNS"); do
        local db; db=$(db_url sqlite)
        DATABASE_URL=$db $GW seed --users 100 --rooms 1 --room-size 100 --token-ttl-secs 7200 --out "$OUT/seed.json" >/dev/null
        DATABASE_URL=$db LISTEN_ADDR=127.0.0.1:$PORT taskset -c 0 valgrind --tool=callgrind --instr-atstart=no \
            --callgrind-out-file="$OUT/callgrind.out" $GW >"$OUT/gateway.log" 2>&1 &
        pid=$!
        for _ in $(seq 600); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
        callgrind_control -i on $pid >/dev/null
        lt "instructions-$run" fanout --url $URL --seed "$OUT/seed.json" --rooms 1 --room-size 100 --rate 5 --duration "${INSTR_SECS:-20}"
        callgrind_control -i off $pid >/dev/null
        stop
        python3 - "$OUT/callgrind.out" "$OUT/instructions-$run.json" <<'PY'
import json, sys
ir = next(int(l.split()[1]) for l in open(sys.argv[1]) if l.startswith("totals:"))
r = json.load(open(sys.argv[2]))
d = r["deliveries"]
print(f"instructions-{sys.argv[2].split('-')[-1][:-5]}: {ir / d:,.0f} instructions per delivered message ({ir:,} over {d:,.0f})")
PY
    done
}

authstorm() { # 1,000 sign-ins (half registrations, half logins) from 64 addresses, 300 in flight: answers and RSS
    # SQLite. The login accounts are made first on a gateway process of their
    # own (throttles off, 2 at a time), so the measured one starts cold. The
    # per-IP login/registration throttles are set high so that they do not
    # hide the hashing bound. The gateway is not pinned: it hashes on every
    # core it has, as deployed. GW=… compares builds (before/after, allocators).
    local n=${STORM_N:-1000}
    for run in $(seq "$RUNS"); do
        local db; db=$(db_url sqlite)
        export LOGIN_ATTEMPTS_PER_MINUTE=100000
        DATABASE_URL=$db LISTEN_ADDR=127.0.0.1:$PORT $GW >"$OUT/gateway-prepare.log" 2>&1 &
        pid=$!
        wait_ready
        $LT auth-storm --url http://127.0.0.1:$PORT --requests "$n" --prepare >/dev/null
        stop
        DATABASE_URL=$db LISTEN_ADDR=127.0.0.1:$PORT $GW >"$OUT/gateway.log" 2>&1 &
        pid=$!
        wait_ready
        sleep 1 # idle RSS settles
        printf '%-14s ' "authstorm-$run"
        $LT auth-storm --url http://127.0.0.1:$PORT --requests "$n" --concurrency 300 --source-ips 64 \
            --settle 10 --gateway-pid $pid --json "$OUT/authstorm-$run.json" --quiet
        stop
        unset LOGIN_ATTEMPTS_PER_MINUTE
    done
}

resume() { # one client in 500 rooms resumes: one sync frame vs 500 joins; round trip and server CPU per resume
    # Medians of RUNS runs of 10 resumes each, on each backend. The gateway
    # runs with the event budget raised (WS_EVENTS_PER_SEC/BURST=100000) so
    # the 500 back-to-back joins are not refused; the sync needs one token
    # and would pass with the defaults too.
    local rooms=${RESUME_ROOMS:-500}
    for backend in sqlite postgres; do
        WS_EVENTS_PER_SEC=100000 WS_EVENTS_BURST=100000 start_gateway $backend 1 "$rooms" 1
        for mode in sync join; do
            printf '%-22s ' "resume-$mode-$backend"
            $LT resume --url $URL --seed "$OUT/seed.json" --rooms "$rooms" --mode $mode --runs "$RUNS" \
                --gateway-pid $pid --json "$OUT/resume-$mode-$backend.json" \
                | python3 -c 'import json,sys; r=json.load(sys.stdin); print("rtt %.1f ms  cpu %.1f ms  runs rtt %s cpu %s" % (r["rtt_ms_median"], r["cpu_ms_median"] or 0, [round(x,1) for x in r["rtt_ms_runs"]], [round(x,1) for x in r["cpu_ms_runs"]]))'
        done
        stop
    done
}

rstorm() { # reconnect storm: N clients in 5 rooms each drop at once and resume with one sync each
    # SQLite; `seed --users N --rooms N/10 --room-size 50` puts every user in
    # exactly 5 rooms. Every client connects and syncs, 2 messages go into
    # every room, every socket closes at once, 3 more go into every room,
    # then all reconnect (512 handshakes in flight, from 8 source addresses)
    # and resume: 0 lost / 0 duplicated, time until all resumed, peak RSS.
    local n=${RSTORM_N:-10000}
    for run in $(seq "$RUNS"); do
        start_gateway sqlite "$n" $((n / 10)) 50
        printf '%-14s ' "rstorm-$n-$run"
        taskset -c 1 $LT reconnect-storm --url $URL --seed "$OUT/seed.json" --clients "$n" --concurrency 512 \
            --source-ips 8 --before-messages 2 --storm-messages 3 --gateway-pid $pid \
            --json "$OUT/rstorm-$n-$run.json" --quiet --assert
        stop
    done
}

wait_ready() {
    for _ in $(seq 300); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && return; sleep 0.1; done
    echo "gateway did not start" >&2; exit 1
}

reconnect() { # continuous drop-and-resume under load: zero lost, zero duplicated
    start_gateway postgres 1000 10 100
    lt "reconnect-postgres" reconnect --url $URL --seed "$OUT/seed.json" --rooms 10 --room-size 100 --rate 500 --duration "$DURATION" --reconnect-every 5 --gateway-pid $pid --assert
    stop
}

for s in "${@:-fanout maxrate throughput idle storm reconnect cluster}"; do
    for x in $s; do "$x"; done
done
