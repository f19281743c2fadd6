#!/usr/bin/env bash
# A fresh worktree in its own running VM (issue 20): `microvm-link shell --pool agents -- cat
# ID` in a fresh worktree (lease, live switch, ssh) and in a worktree that holds its lease,
# against plain `ssh pool1 true`, measured in the same run on the end-to-end suite's real
# stack (systemd 252 in a container, qemu TCG guest with dropbear, alice's sudo rule and ssh
# alias): scenario 22-pool-bench, BENCH_POOL_RUNS (20) rounds, each a fresh worktree with
# alice's shared ssh connection to the VM open, another with it closed, the lease held, and
# the lease alone (`microvm-link --pool agents`) and then how long until the guest's view shows
# the worktree. Every shell must print its own worktree's ID. Prints the medians in
# milliseconds.
#
# usage: sudo bench/pool-shell.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
log=$(mktemp)
trap 'rm -f "$log"' EXIT
runs=${BENCH_POOL_RUNS:-20}
E2E_ONLY='^22-pool-bench$' E2E_POOL_BENCH_RUNS=$runs E2E_SCENARIO_TIMEOUT=$((120 + runs * 30)) \
    bash "$repo/tests/e2e/run" >"$log" 2>&1 || { tail -n 40 "$log" >&2; exit 1; }
med() { sed -n "s/.*timing: $1 \([0-9.]*\)s\$/\1/p" "$log" | tail -n 1; }
plain=$(med pool-bench-plain-ssh-median-ms)
fresh=$(med pool-bench-fresh-median-ms)
cold=$(med pool-bench-fresh-no-master-median-ms)
held=$(med pool-bench-held-median-ms)
lease=$(med pool-bench-lease-alone-median-ms)
view=$(med pool-bench-lease-to-view-median-ms)
[ -n "$plain" ] && [ -n "$fresh" ] && [ -n "$cold" ] && [ -n "$held" ] && [ -n "$lease" ] && [ -n "$view" ] ||
    { echo "bench/pool-shell.sh: no timings in the run" >&2; exit 1; }
awk -v p="$plain" -v f="$fresh" -v c="$cold" -v h="$held" -v l="$lease" -v v="$view" -v n="$runs" 'BEGIN {
    printf "medians of %d rounds, ms (ratio to plain ssh; difference)\n", n
    printf "  plain ssh pool1 true                            %6d\n", p
    printf "  shell --pool, fresh worktree                    %6d  (%.2fx, %+d ms)\n", f, f / p, f - p
    printf "  shell --pool, fresh worktree, no shared ssh     %6d  (%.2fx, %+d ms)\n", c, c / p, c - p
    printf "  shell --pool, worktree holding its lease        %6d  (%.2fx)\n", h, h / p
    printf "  microvm-link --pool alone (sudo, lease, link)   %6d\n", l
    printf "  then until the guest sees it (shared ssh incl.) %6d\n", v
}'
