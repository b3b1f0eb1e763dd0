#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a time budget each.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]    (default: 60 s, all targets)
#
# - Installs cargo-fuzz (`cargo install cargo-fuzz --locked`) when missing.
# - cargo-fuzz wants a nightly toolchain for `-Zsanitizer=address`;
#   RUSTC_BOOTSTRAP=1 lets the stable toolchain accept it (the AddressSanitizer
#   runtime ships with stable's rust-std on x86_64 Linux).
# - Seeds are read from fuzz/corpus/<target> (committed, never written);
#   what a run discovers goes to fuzz/corpus-work/<target> (ignored by git) and
#   is read again by the next run.
# - A crash, a broken property or a timeout leaves its input in
#   fuzz/artifacts/<target>/; replay it with
#   `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>`.
# Exits non-zero if any target failed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[fuzz.sh] %s\n' "$*" >&2; }

secs="${1:-60}"
[ $# -gt 0 ] && shift
case "$secs" in
    '' | *[!0-9]*) log "usage: scripts/fuzz.sh [seconds-per-target] [target...]"; exit 2 ;;
esac

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

log "building ${targets[*]}"
cargo fuzz build

failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus-work/$t"
    args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    [ -f "fuzz/dicts/$t.dict" ] && args+=(-dict="fuzz/dicts/$t.dict")
    log "fuzzing $t for ${secs}s"
    if ! cargo fuzz run "$t" "fuzz/corpus-work/$t" "fuzz/corpus/$t" -- "${args[@]}"; then
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    log "FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
log "clean: ${targets[*]}, ${secs}s each"
