# shellcheck shell=bash
# Reaching a guest's SSH server (VMs in E2E_SSH_PORTS, lib/fixture.sh) from
# inside the container. Sourced after common.sh, fixture.sh and container.sh.
#
#   e2e_ssh_port VM            the container-loopback port forwarded to VM:22
#   e2e_ssh_banner PORT        the port's first line, if it starts with SSH-
#   e2e_ssh_wait VM [TIMEOUT]  poll until VM answers with a banner (120 s);
#                              prints the banner, or "timed out after ..."
#   e2e_ssh VM CMD...          `ssh VM CMD...` as alice through the alias

e2e_ssh_port() {
    [ -n "${E2E_SSH_PORTS[$1]:-}" ] || { echo "VM $1 has no SSH server (not in E2E_SSH_PORTS, lib/fixture.sh)"; return 1; }
    echo "${E2E_SSH_PORTS[$1]}"
}

# qemu's user networking accepts a forwarded connection before the guest
# listens and then closes it: only a line starting with SSH- counts. While
# the guest's network is not up yet such a connection hangs (qemu keeps
# resending its SYN with backoff), so each try gives up after 1 s and the
# next one connects afresh: the banner is seen within about a second of
# dropbear listening (it sends it at once on accept).
e2e_ssh_banner() {
    local line
    line=$(e2e_ct timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && IFS= read -r -t 1 l <&3 && printf "%s\n" "$l"' _ "$1" 2>/dev/null) ||
        return 1
    line=${line%$'\r'}
    [[ $line == SSH-* ]] || return 1
    printf '%s\n' "$line"
}

e2e_ssh_wait() {
    local vm=$1 timeout=${2:-120} port
    port=$(e2e_ssh_port "$vm") || { echo "$port"; return 1; }
    e2e_poll "$timeout" "an SSH banner (SSH-) from $vm on 127.0.0.1:$port in the container" e2e_ssh_banner "$port"
}

e2e_ssh() {
    local vm=$1; shift
    e2e_ct_as "$E2E_SSH_USER" ssh "$vm" -- "$@"
}
