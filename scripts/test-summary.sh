#!/usr/bin/env bash
# The closing line of scripts/test.sh: totals over the three test groups,
# read from their captured output, and a non-zero exit when a group failed
# or ran no test at all.
#
#   scripts/test-summary.sh CARGO_OUTPUT SDK_OUTPUT BROWSER_OUTPUT
#
# - cargo: the "test result: ok. N passed; M failed; ..." line of every test
#   binary;
# - the SDK's unit + end-to-end tests and the demo's browser test: node:test
#   with the TAP reporter (pinned in clients/typescript/package.json), whose
#   run ends with "# pass N", "# fail N" and "# cancelled N" (counted as
#   failed).
#
# Why: a group that silently ran nothing (a reporter that changed its
# format, a glob that matched no file, a build step that failed before the
# runner started) would otherwise only lower the total.
set -uo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 CARGO_OUTPUT SDK_OUTPUT BROWSER_OUTPUT" >&2
    exit 2
fi

# Prints "passed failed runs" for one file; runs = result lines found.
counts() {
    local kind=$1 file=$2
    [ -r "$file" ] || { echo "0 0 0"; return; }
    if [ "$kind" = cargo ]; then
        awk '/^test result:/ { n++; for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
             END { printf "%d %d %d\n", p, f, n }' "$file"
    else
        # node:test counts tests cancelled by a failed hook (a browser that
        # would not launch) under "# cancelled", not "# fail": they count as failed.
        awk '/^# pass [0-9]+$/ { p += $3; n++ }  /^# (fail|cancelled) [0-9]+$/ { f += $3 }
             END { printf "%d %d %d\n", p, f, n }' "$file"
    fi
}

total_p=0 total_f=0 parts=() problems=()
for group in "cargo:$1" "sdk unit+e2e:$2" "browser:$3"; do
    name=${group%%:*}
    file=${group#*:}
    kind=node
    [ "$name" = cargo ] && kind=cargo
    read -r p f n < <(counts "$kind" "$file")
    total_p=$((total_p + p))
    total_f=$((total_f + f))
    parts+=("$name $p/$f")
    if [ "$n" -eq 0 ]; then
        problems+=("$name: no test counts in its output (did it run?)")
    elif [ $((p + f)) -eq 0 ]; then
        problems+=("$name: ran no test")
    elif [ "$f" -gt 0 ]; then
        problems+=("$name: $f failed")
    fi
done

detail=$(IFS=,; echo "${parts[*]}" | sed 's/,/, /g')
if [ ${#problems[@]} -gt 0 ]; then
    msg=$(printf '%s; ' "${problems[@]}")
    printf 'summary: %d passed, %d failed (passed/failed: %s) FAILED: %s\n' "$total_p" "$total_f" "$detail" "${msg%; }"
    exit 1
fi
printf 'summary: %d passed, %d failed (passed/failed: %s)\n' "$total_p" "$total_f" "$detail"
