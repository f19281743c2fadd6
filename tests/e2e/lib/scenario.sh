# shellcheck shell=bash
# Scenario framework: each scenario is a shell function run in a subshell,
# its output in $E2E_RUN/logs/<name>.log; `fail WHY` ends it as failed.

E2E_PASSED=0
E2E_FAILED=0
E2E_SCENARIO_TIMEOUT=${E2E_SCENARIO_TIMEOUT:-300}

fail() {
    printf '%s\n' "$*" > "$E2E_RUN/reason"
    printf 'FAIL: %s\n' "$*"
    exit 1
}

# expect DESCRIPTION CMD... : CMD must succeed
expect() {
    local what=$1; shift
    "$@" || fail "$what"
}

# step TEXT: narrate in the scenario log
step() { printf -- '--- %s\n' "$*"; }

# e2e_scenario NAME FUNCTION
e2e_scenario() {
    local name=$1 fn=$2 t0 rc why
    t0=$(e2e_now)
    rm -f "$E2E_RUN/reason"
    mkdir -p "$E2E_RUN/logs"
    ( set +e; "$fn" ) > "$E2E_RUN/logs/$name.log" 2>&1 &
    local spid=$! wpid
    # a scenario that hangs fails instead of stalling the suite
    (
        sleep "$E2E_SCENARIO_TIMEOUT" & wait $! || exit 0   # sleep killed: the scenario ended
        echo "timed out after ${E2E_SCENARIO_TIMEOUT}s" > "$E2E_RUN/reason"
        pkill -TERM -P "$spid" 2>/dev/null; kill -TERM "$spid" 2>/dev/null
    ) &
    wpid=$!
    wait "$spid"
    rc=$?
    pkill -P "$wpid" 2>/dev/null; kill "$wpid" 2>/dev/null; wait "$wpid" 2>/dev/null
    if [ $rc = 0 ]; then
        printf 'PASS %s (%ss)\n' "$name" "$(e2e_since "$t0")"
        E2E_PASSED=$((E2E_PASSED + 1))
    else
        why=$(cat "$E2E_RUN/reason" 2>/dev/null)
        printf 'FAIL %s: %s\n' "$name" "${why:-exited with status $rc}"
        E2E_FAILED=$((E2E_FAILED + 1))
        E2E_ANY_FAILED=1
        { echo "  --- last lines of $name's log:"; tail -n 25 "$E2E_RUN/logs/$name.log" | sed 's/^/  | /'; } >&2
    fi
}

e2e_scenario_not_run() {
    printf 'FAIL %s: %s\n' "$1" "$2"
    E2E_FAILED=$((E2E_FAILED + 1))
}
