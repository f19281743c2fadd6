#!/usr/bin/env bash
# `microvm-link shell -- true` on a running, linked VM against plain `ssh DEST true`, measured in
# the same run (issue 16): the end-to-end suite's real stack (systemd 252 in a container, qemu
# TCG guest with dropbear, alice's sudo rule and ssh alias), scenario s7-ssh-shared, which times
# each of BENCH_SHELL_RUNS (20) rounds of: plain ssh; shell with no master (the first call);
# shell through the master (a following call). Prints the medians in milliseconds.
#
# usage: sudo bench/ssh-shell.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
log=$(mktemp)
trap 'rm -f "$log"' EXIT
E2E_ONLY='^s7-ssh-shared$' E2E_SHELL_RUNS=${BENCH_SHELL_RUNS:-20} \
    bash "$repo/tests/e2e/run" >"$log" 2>&1 || { tail -n 40 "$log" >&2; exit 1; }
med() { sed -n "s/.*timing: $1 \([0-9.]*\)s\$/\1/p" "$log" | tail -n 1; }
plain=$(med shell-plain-ssh-median-ms)
first=$(med shell-first-call-median-ms)
follow=$(med shell-following-call-median-ms)
[ -n "$plain" ] && [ -n "$first" ] && [ -n "$follow" ] || { echo "bench/ssh-shell.sh: no timings in the run" >&2; exit 1; }
awk -v p="$plain" -v f="$first" -v o="$follow" -v n="${BENCH_SHELL_RUNS:-20}" 'BEGIN {
    printf "medians of %d rounds, ms (ratio to plain ssh)\n", n
    printf "  plain ssh vmssh true             %6d\n", p
    printf "  microvm-link shell, first call   %6d  (%.2fx, %+d ms)\n", f, f / p, f - p
    printf "  microvm-link shell, following    %6d  (%.2fx)\n", o, o / p
}'
