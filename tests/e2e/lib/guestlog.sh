# shellcheck shell=bash
# Reading what a guest reports on its serial console (see lib/guest-init).
# The console file is appended to across boots; every boot starts with an
# `MVW boot` line. Sourced after common.sh and fixture.sh; needs E2E_ROOT.

e2e_console() { printf '%s\n' "$E2E_ROOT$E2E_STATE/$1/console.log"; }

# MVW lines of the console, \r stripped
e2e_mvw_lines() { local f; f=$(e2e_console "$1"); [ -f "$f" ] && tr -d '\r' < "$f" | grep -a '^MVW '; }

e2e_boot_count() { local n; n=$(e2e_mvw_lines "$1" | grep -c '^MVW boot '); echo "${n:-0}"; }

# the MVW lines of the latest boot
e2e_last_boot() { e2e_mvw_lines "$1" | awk '/^MVW boot /{buf=""} {buf = buf $0 "\n"} END {printf "%s", buf}'; }

# number of MVW lines VM's console holds now: lines after it are new
e2e_mvw_count() { local n; n=$(e2e_mvw_lines "$1" | wc -l); echo "${n:-0}"; }

# e2e_line_after VM FROM REGEX: a MVW line after the first FROM matches (ERE)
e2e_line_after() { e2e_mvw_lines "$1" | tail -n +$(($2 + 1)) | grep -Eq "$3"; }

# e2e_wait_line VM FROM REGEX TIMEOUT: poll every 0.1 s (the console is a
# file on this host: no nsenter, so fine-grained polling is cheap)
e2e_wait_line() {
    local vm=$1 from=$2 re=$3 deadline
    deadline=$(( $(date +%s%N) + $4 * 1000000000 ))
    while :; do
        e2e_line_after "$vm" "$from" "$re" && return 0
        [ "$(date +%s%N)" -lt "$deadline" ] || break
        sleep 0.1
    done
    echo "timed out after $4 s waiting for guest $vm to report /$re/; its last reports: $(e2e_mvw_lines "$vm" | tail -n +$((from + 1)) | grep -v tick= | tail -n 6 | tr '\n' '|')"
    return 1
}

# e2e_wait_probed VM MIN_BOOTS [TIMEOUT]: wait until boot number MIN_BOOTS
# (or a later one) has finished its probes. Non-zero on timeout.
e2e_wait_probed() {
    local vm=$1 want=$2 timeout=${3:-90} t0
    t0=$(date +%s)
    while [ $(( $(date +%s) - t0 )) -lt "$timeout" ]; do
        if [ "$(e2e_boot_count "$vm")" -ge "$want" ] && e2e_last_boot "$vm" | grep -q '^MVW probes done'; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# e2e_guest_value VM TAG KEY: latest value the running guest reported for KEY
# (mounted, stat, ls, read marker, write-as-uid1000, write-as-root)
e2e_guest_value() {
    e2e_last_boot "$1" | grep "^MVW tag=$2 $3" | tail -n 1 | sed "s/^MVW tag=$2 $3:\{0,1\} \{0,1\}//"
}

e2e_tick() { e2e_last_boot "$1" | grep '^MVW tick=' | tail -n 1 | sed 's/^MVW tick=//'; }

# e2e_guest_now VM: wait until the guest has completed a full re-probe that
# started after this call (two ticks), so its latest values are current.
e2e_tick_at_least() { local t; t=$(e2e_tick "$1"); [ "${t:-0}" -ge "$2" ]; }
e2e_guest_now() {
    local vm=$1 tick
    tick=$(e2e_tick "$vm"); tick=${tick:-0}
    # ticks come every 2 s of guest time, slower on a loaded host
    e2e_poll 40 "two more heartbeats (MVW tick=$((tick + 2))) from guest $vm" e2e_tick_at_least "$vm" $((tick + 2))
}
