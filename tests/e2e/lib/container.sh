# shellcheck shell=bash
# Boot a per-run copy of the base rootfs with systemd-nspawn (real systemd
# 252 as PID 1) and run commands inside it. Sourced after common.sh.
#
#   e2e_ct_create ROOTFS      copy the cached rootfs into $E2E_RUN/rootfs
#   e2e_ct_boot               boot it (pid of its PID 1 in $E2E_RUN/ct.leader)
#   e2e_ct CMD...             run CMD inside (all its namespaces), as root
#   e2e_ct_as alice CMD...    the same as an unprivileged user (login-like env)
#   e2e_ct_poweroff           orderly shutdown, then wait for nspawn to exit
#   e2e_ct_destroy            stop whatever is left and remove the run dir

E2E_RUN=${E2E_RUN:-}
# container state lives in files: scenarios run in subshells and may reboot it
e2e_ct_pid() { cat "$E2E_RUN/ct.pid" 2>/dev/null; }
e2e_ct_leader() { cat "$E2E_RUN/ct.leader" 2>/dev/null; }

# alive and not a zombie
e2e_pid_alive() {
    local st
    [ -n "$1" ] && st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]
}

e2e_pid_gone() { ! e2e_pid_alive "$1"; }

e2e_ct_create() {
    local base=$1
    [ -n "$E2E_RUN" ] || E2E_RUN=$(mktemp -d /var/tmp/mvw-e2e.XXXXXX)
    E2E_ROOT=$E2E_RUN/rootfs
    # a plain copy (reflink where the filesystem can): the project's
    # placeholders live on a real filesystem, not on overlayfs
    cp -a --reflink=auto "$base" "$E2E_ROOT"
    rm -f "$E2E_ROOT/.e2e-complete" "$E2E_ROOT/.e2e-source"
}

e2e_ct_boot() {
    local state pid leader boots deadline
    boots=$(( $(cat "$E2E_RUN/ct.boots" 2>/dev/null || echo 0) + 1 ))
    echo "$boots" > "$E2E_RUN/ct.boots"
    e2e_pid_alive "$(e2e_ct_pid)" && e2e_die "container already running"
    # --private-network: a loopback of its own, so the guests' forwarded SSH
    # ports (fixture.sh) cannot collide with another run's or the host's
    systemd-nspawn -q -D "$E2E_ROOT" --register=no --keep-unit -b --private-network \
        --machine="mvw-e2e-$$" --console=pipe \
        < /dev/null > "$E2E_RUN/nspawn.$boots.log" 2>&1 &
    pid=$!
    echo "$pid" > "$E2E_RUN/ct.pid"
    rm -f "$E2E_RUN/ct.leader"
    leader=
    deadline=$(( $(date +%s) + 15 ))
    local exe nspawn_exe
    nspawn_exe=$(readlink -f "$(command -v systemd-nspawn)")
    while [ "$(date +%s)" -lt "$deadline" ]; do
        leader=$(pgrep -P "$pid" | head -n 1) || true
        # nspawn's own helper children run its binary; one that is exiting
        # has no exe any more, and an empty readlink must not pass for
        # "not nspawn" (the suite then asked a dead pid for 180 s)
        exe=
        if [ -n "$leader" ]; then exe=$(readlink "/proc/$leader/exe" 2>/dev/null) || exe=; fi
        [ -n "$exe" ] && [ "$exe" != "$nspawn_exe" ] && e2e_pid_alive "$leader" && break
        leader=
        e2e_pid_alive "$pid" || break
        sleep 0.1
    done
    [ -n "$leader" ] || { cat "$E2E_RUN/nspawn.$boots.log" >&2; e2e_die "systemd-nspawn did not start a container within 15 s"; }
    echo "$leader" > "$E2E_RUN/ct.leader"
    # until systemd answers and has finished booting
    deadline=$(( $(date +%s) + 180 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        state=$(e2e_ct systemctl is-system-running 2>/dev/null) || true
        case $state in running|degraded) break ;; esac
        sleep 0.2
    done
    case $state in
        running) ;;
        degraded) e2e_log "container booted degraded: $(e2e_ct systemctl --failed --plain --no-legend | tr '\n' ' ')" ;;
        *) e2e_die "container did not finish booting within 180 s (state: ${state:-no answer})" ;;
    esac
}

e2e_ct() {
    nsenter -t "$(e2e_ct_leader)" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}

# e2e_ct_as USER CMD... : what a developer's shell would do
e2e_ct_as() {
    local user=$1; shift
    e2e_ct runuser -l "$user" -c "$(printf '%q ' "$@")"
}

e2e_ct_poweroff() {
    local pid leader
    pid=$(e2e_ct_pid)
    leader=$(e2e_ct_leader)
    rm -f "$E2E_RUN/ct.pid" "$E2E_RUN/ct.leader"
    [ -n "$pid" ] || return 0
    if e2e_pid_alive "$pid"; then
        # SIGTERM to nspawn = orderly halt of the container (its units stop)
        kill -TERM "$pid" 2>/dev/null
        e2e_poll 20 "the container to halt" e2e_pid_gone "$pid" > /dev/null
        if e2e_pid_alive "$pid"; then
            e2e_log "container did not halt within 20 s; killing it"
            # SIGKILL to the container's PID 1 ends its whole PID namespace;
            # killing only nspawn would leave the container running
            [ -n "$leader" ] && kill -KILL "$leader" 2>/dev/null
            e2e_poll 5 "the killed container to go" e2e_pid_gone "$pid" > /dev/null
            kill -KILL "$pid" 2>/dev/null
            e2e_poll 5 "systemd-nspawn to go" e2e_pid_gone "$pid" > /dev/null
            rmdir "/run/systemd/nspawn/propagate/mvw-e2e-$$" 2>/dev/null
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

e2e_ct_destroy() {
    e2e_ct_poweroff
    if [ -n "$E2E_RUN" ] && [ -d "$E2E_RUN" ]; then
        if [ -n "${E2E_KEEP:-}" ]; then
            e2e_log "kept run directory $E2E_RUN (E2E_KEEP set)"
        else
            e2e_rm_tree "$E2E_RUN"
        fi
    fi
}
