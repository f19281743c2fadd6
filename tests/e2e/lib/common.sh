# shellcheck shell=bash
# Shared helpers for the end-to-end harness. Sourced, never executed.

E2E_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E_DIR=$(dirname "$E2E_LIB")
E2E_REPO=${E2E_REPO:-$(cd "$E2E_DIR/../.." && pwd)}   # the checkout whose binaries are tested

# Everything expensive lives here, outside the clone, keyed by recipe hashes.
E2E_CACHE=${E2E_CACHE:-${MVW_CACHE:-/var/cache/microvm-workspaces-ci}}
E2E_VIRTIOFSD_VERSION=1.14.0
E2E_VIRTIOFSD=${E2E_VIRTIOFSD:-${VIRTIOFSD:-$E2E_CACHE/virtiofsd-$E2E_VIRTIOFSD_VERSION/bin/virtiofsd}}
E2E_TARGET=${E2E_TARGET:-$E2E_CACHE/e2e-target}
# the Debian mirror and suite of the rootfs come from this machine's apt
# sources: lib/aptsource.sh

e2e_now() { date +%s.%N; }
e2e_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

e2e_log() { printf '[e2e %s] %s\n' "$(date +%T)" "$*" >&2; }
e2e_die() { printf 'e2e: error: %s\n' "$*" >&2; exit 1; }

# sha256 of stdin, first 16 hex digits: enough to key a cache entry.
e2e_hash() { sha256sum | cut -c1-16; }

# Unmount everything at or below $1 (deepest first), then remove it without
# ever crossing into a filesystem that is still mounted.
e2e_rm_tree() {
    local dir=$1 m
    [ -e "$dir" ] || return 0
    dir=$(realpath -e "$dir")
    for _ in 1 2 3; do
        # deepest first
        while read -r m; do
            umount -l "$m" 2>/dev/null || true
        done < <(findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d) == 1 && (length($0) == length(d) || substr($0, length(d) + 1, 1) == "/")' | sort -r)
    done
    # a workspace dir in it has sealed (immutable) directories: lifted only if rm needs it
    rm -rf --one-file-system "$dir" 2>/dev/null || { chattr -R -i "$dir" 2>/dev/null || true; rm -rf --one-file-system "$dir"; }
}

# Fail loudly when a prerequisite of the suite is missing: never skip.
e2e_require_host() {
    [ "$(id -u)" = 0 ] || e2e_die "must run as root (debootstrap, systemd-nspawn, mounts)"
    local c
    for c in debootstrap systemd-nspawn nsenter busybox cpio gzip sha256sum flock findmnt; do
        command -v "$c" >/dev/null || e2e_die "missing host command: $c (apt-get install debootstrap systemd-container busybox-static cpio util-linux)"
    done
    # grep reads the whole list: a `grep -q` leaving early kills busybox with SIGPIPE, which
    # pipefail turned into "lacks setpriv" now and then.
    busybox --list | grep -x setpriv >/dev/null || e2e_die "host busybox lacks setpriv (need busybox-static)"
    file_is_static "$(command -v busybox)" || e2e_die "host busybox is not statically linked (apt-get install busybox-static)"
    [ -x "$E2E_VIRTIOFSD" ] || e2e_die "virtiofsd $E2E_VIRTIOFSD_VERSION missing at $E2E_VIRTIOFSD (cargo install virtiofsd --version $E2E_VIRTIOFSD_VERSION --locked --root $(dirname "$(dirname "$E2E_VIRTIOFSD")"))"
    ls /boot/vmlinuz-* >/dev/null 2>&1 || e2e_die "no kernel in /boot (apt-get install linux-image-amd64)"
}

file_is_static() {
    local out
    out=$(LC_ALL=C ldd "$1" 2>&1)
    [[ $out == *"not a dynamic executable"* ]]
}

# e2e_poll TIMEOUT WHAT CMD...: run CMD every 0.2 s until it succeeds, for at
# most TIMEOUT seconds of wall time (not a count of tries: every try of an
# nsenter'd systemctl costs time too). On timeout print, on stdout,
# "timed out after TIMEOUT s waiting for WHAT" and return 1, so a caller's
# `|| fail "$(...)"` or the log names what never happened.
e2e_poll() {
    local timeout=$1 what=$2 deadline; shift 2
    deadline=$(( $(date +%s%N) + timeout * 1000000000 ))
    while :; do
        "$@" && return 0
        [ "$(date +%s%N)" -lt "$deadline" ] || break
        sleep 0.2
    done
    echo "timed out after ${timeout}s waiting for $what"
    return 1
}
