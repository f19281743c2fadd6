#!/usr/bin/env bash
# microvm-workspaces demo: the real thing in a throwaway systemd container.
#
# On a Debian-like machine, as root: installs what is missing (apt-get, and
# virtiofsd 1.14 with cargo), builds the project, boots a Debian rootfs with
# systemd-nspawn that has microvm.nix-shaped units, real virtiofsd and qemu
# (TCG) guests, and walks through placeholders, linking a repo, the restart
# and stale detection, saying what happens and how long it took. Everything
# it starts or mounts is removed on exit; the rootfs and the virtiofsd build
# stay cached under /var/cache/microvm-workspaces-ci for the next run.
#
#   sudo ./demo.sh            (DEMO_KEEP=1 keeps the container's files)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E_HERE=$HERE/tests/e2e

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: run as root (it installs packages, mounts, and boots a container)" >&2
    exit 1
fi

T0=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
show() { sed 's/^/    | /'; }

# ---------------------------------------------------------------------------
say "Installing what is missing (apt-get, cargo)"
t=$(date +%s.%N)
"$HERE/tests/deps.sh" || { echo "demo.sh: installing dependencies failed" >&2; exit 1; }
# shellcheck source=tests/e2e/lib/common.sh
for f in common aptsource rootfs guest fixture container guestlog ssh project; do source "$E2E_HERE/lib/$f.sh"; done
e2e_require_host
note "done in $(since "$t") s"

# ---------------------------------------------------------------------------
cleanup() {
    trap - EXIT INT TERM
    say "Cleaning up: stopping the container, removing its files"
    E2E_KEEP=${DEMO_KEEP:-} e2e_ct_destroy
    note "total demo time $(since "$T0") s"
}
E2E_RUN=$(mktemp -d /var/tmp/mvw-demo.XXXXXX)
E2E_ROOT=$E2E_RUN/rootfs
trap cleanup EXIT
trap 'exit 130' INT TERM

say "Building the project and the machine to play on"
t=$(date +%s.%N)
e2e_build_project 2>&1 | show
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
base=$(e2e_rootfs) || exit 1
guest=$(e2e_guest) || exit 1
e2e_ct_create "$base"
e2e_fixture "$E2E_ROOT" "$guest"
# installed like a distribution package, before the boot, so the generator
# runs when systemd starts
e2e_install_project "$E2E_ROOT"
note "Debian rootfs (cached): $base"
note "guest: Debian kernel $(cat "$guest/kernel-version") + busybox initramfs; qemu TCG"
note "ready in $(since "$t") s"

say "Booting it: systemd-nspawn -b (real systemd as PID 1)"
t=$(date +%s.%N)
e2e_ct_boot
note "booted in $(since "$t") s; the generator added to microvm@.service:"
e2e_ct systemctl cat microvm@vm1.service | grep -A3 -i 'microvm-workspaces' | show
note "VMs (microvm.nix-shaped runners in /var/lib/microvms/<vm>/current):"
note "  vm1  shares /var/lib/microvm-workspaces/vm1 as tag 'workspace'"
note "  vm2  shares the same directory read-only (tag 'nixfiles')"
note "Nothing exists yet under /var/lib/microvm-workspaces:"
e2e_ct ls -la /var/lib/microvm-workspaces | show

guest_says() { # VM: what the guest reported at its latest boot, in words
    e2e_last_boot "$1" | sed -n 's/^MVW tag=\([^ ]*\) \(ls\|read marker\|write-as-uid1000\): \{0,1\}\(.*\)/\1 \2: \3/p' |
        sed 's/ ls: $/ ls: (empty)/; s/write-as-uid1000/an unprivileged user writing/' | show
}
start_vm() { # VM TAG
    local b t
    b=$(e2e_boot_count "$1"); t=$(date +%s.%N)
    e2e_ct systemctl start "microvm@$1.service" || { echo "demo.sh: starting $1 failed" >&2; exit 1; }
    e2e_wait_probed "$1" $((b + 1)) 120 || { echo "demo.sh: the guest $1 did not report" >&2; exit 1; }
    note "systemctl start microvm@$1: the guest mounted its shares $(since "$t") s later. It reports:"
    guest_says "$1"
}

# ---------------------------------------------------------------------------
say "1. Placeholders: start vm1 and vm2 although their share source is missing"
note "Without this project virtiofsd would exit ('... does not exist') and the VM would not start."
start_vm vm1
start_vm vm2
note "On the host, prepare made a read-only placeholder:"
e2e_ct ls -ld /var/lib/microvm-workspaces/vm1 | show

say "2. Link: alice runs microvm-link in her repo ~/vm1"
e2e_ct_as alice sh -c 'mkdir -p ~/vm1/.git && echo "hello from alice repo" > ~/vm1/MARKER'
note "\$ cd ~/vm1 && microvm-link        (as alice; it re-runs itself through sudo)"
b=$(e2e_boot_count vm1); t=$(date +%s.%N)
e2e_ct runuser -l alice -c 'cd ~/vm1 && microvm-link' 2>&1 | show
e2e_wait_probed vm1 $((b + 1)) 120 || { echo "demo.sh: vm1 did not come back" >&2; exit 1; }
note "vm1 restarted and its guest saw the repo $(since "$t") s after microvm-link began:"
guest_says vm1
note "The file the guest wrote as uid 1000 is in alice's repo, owned by her:"
e2e_ct ls -l /home/alice/vm1 | show
note "The workspace is now a bind mount of the repo (a symlink would not work with virtiofsd 1.14):"
e2e_ct findmnt -o TARGET,SOURCE /var/lib/microvm-workspaces/vm1 | show

say "3. Stale: vm2 was running before the link and still sees the old directory"
e2e_guest_now vm2
note "vm2's guest right now:"
e2e_last_boot vm2 | grep '^MVW tag=nixfiles \(ls\|read marker\)' | tail -n 2 | sed 's/^MVW tag=//; s/ ls: $/ ls: (empty)/' | show
note "\$ microvm-link status"
e2e_ct microvm-link status 2>&1 | show

say "4. microvm-link --restart-stale restarts the VMs left behind"
b=$(e2e_boot_count vm2); t=$(date +%s.%N)
e2e_ct runuser -l alice -c 'cd ~/vm1 && microvm-link --restart-stale' 2>&1 | show
e2e_wait_probed vm2 $((b + 1)) 120 || { echo "demo.sh: vm2 did not come back" >&2; exit 1; }
note "vm2 now sees the repo ($(since "$t") s):"
guest_says vm2
e2e_ct microvm-link status 2>&1 | show

say "5. Unlink: the placeholder serves again, nothing of alice's is touched"
b=$(e2e_boot_count vm1); t=$(date +%s.%N)
e2e_ct runuser -l alice -c 'microvm-link unlink vm1' 2>&1 | show
e2e_wait_probed vm1 $((b + 1)) 120 || { echo "demo.sh: vm1 did not come back" >&2; exit 1; }
note "vm1 after the unlink ($(since "$t") s):"
guest_says vm1
note "alice's repo is still there:"
e2e_ct ls -l /home/alice/vm1 | show

say "Done"
