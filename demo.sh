#!/usr/bin/env bash
# microvm-workspaces demo: the real thing in a throwaway systemd container.
#
# On a Debian-like machine, as root: installs what is missing (apt-get, and
# virtiofsd 1.14 with cargo), builds the project, boots a Debian rootfs with
# systemd-nspawn that has microvm.nix-shaped units, real virtiofsd and qemu
# (TCG) guests, and walks through placeholders, linking a repo (the restart,
# stale detection), a running VM following a relink with no restart (a live
# share), `microvm-link shell` from a repo into its VM, and unlinking, run
# by the unprivileged user alice, saying what happens and how long it took.
# Everything it starts or mounts is removed on exit; the rootfs and the
# virtiofsd build stay cached under /var/cache/microvm-workspaces-ci.
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
# The demo's own two VMs (lib/fixture.sh makes their runners, config.json
# and vm1's ssh alias from these): vm1 is the VM of alice's repo ~/vm1,
# with an SSH server; vm2 mounts vm1's workspace read-only twice, pinned
# (as microvm.nix shares a directory) and live (docs: Live links).
E2E_VMS=(
    [vm1]="workspace=$E2E_WS/vm1"
    [vm2]="nixfiles=$E2E_WS/vm1=ro nixfiles-live=$E2E_WS/.live/vm1=ro"
)
E2E_SSH_PORTS=([vm1]=2201)
E2E_COMPANIONS='{}'
E2E_POOLS=
note "done in $(since "$t") s"

# ---------------------------------------------------------------------------
STEPS=()       # "seconds  what", for the summary
TS=; STEP=
begin() { say "$1"; STEP=$1; TS=$(date +%s.%N); }
end() { local s; s=$(since "$TS"); note "(took $s s)"; STEPS+=("$(printf '%6s s  %s' "$s" "$STEP")"); }
die() { echo "demo.sh: $*" >&2; exit 1; }

cleanup() {
    trap - EXIT INT TERM
    say "Cleaning up: stopping the container, removing its files"
    E2E_KEEP=${DEMO_KEEP:-} e2e_ct_destroy
    if [ ${#STEPS[@]} -gt 0 ]; then
        note "how long each part took:"
        printf '    %s\n' "${STEPS[@]}"
    fi
    note "total demo time $(since "$T0") s"
}
E2E_RUN=$(mktemp -d /var/tmp/mvw-demo.XXXXXX)
E2E_ROOT=$E2E_RUN/rootfs
trap cleanup EXIT
trap 'exit 130' INT TERM
STEPS+=("$(printf '%6s s  %s' "$(since "$t")" "Installing what is missing")")

begin "Building the project and the machine to play on"
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
note "guest: Debian kernel $(cat "$guest/kernel-version") + busybox initramfs (+ dropbear); qemu TCG"
end

begin "Booting it: systemd-nspawn -b (real systemd as PID 1)"
e2e_ct_boot
note "The generator added to microvm@.service:"
e2e_ct systemctl cat microvm@vm1.service | grep -A3 -i 'microvm-workspaces' | show
note "/etc/microvm-workspaces/config.json declares two VMs (runners as microvm.nix makes them, in /var/lib/microvms/<vm>/current):"
note "  vm1  shares /var/lib/microvm-workspaces/vm1 as tag 'workspace' (/mnt/workspace in the guest); SSH: dropbear, alias 'vm1'"
note "  vm2  shares the same directory read-only twice: pinned, as microvm.nix shares a directory (tag 'nixfiles'),"
note "       and live (tag 'nixfiles-live', source /var/lib/microvm-workspaces/.live/vm1)"
note "Nothing exists yet under /var/lib/microvm-workspaces:"
e2e_ct ls -la /var/lib/microvm-workspaces | show
end

guest_says() { # VM: what the guest reported at its latest boot, in words
    e2e_last_boot "$1" | sed -n 's/^MVW tag=\([^ ]*\) \(ls\|read marker\|write-as-uid1000\): \{0,1\}\(.*\)/\1 \2: \3/p' |
        sed 's/ ls: $/ ls: (empty)/; s/write-as-uid1000/an unprivileged user writing/' | show
}
guest_now() { # VM TAG...: what the running guest shows right now
    local vm=$1 tag; shift
    e2e_guest_now "$vm" > /dev/null || die "the guest $vm stopped reporting"
    for tag in "$@"; do
        printf '%s ls: %s\n%s read marker: %s\n' "$tag" "$(e2e_guest_value "$vm" "$tag" ls)" "$tag" "$(e2e_guest_value "$vm" "$tag" 'read marker')"
    done | sed 's/ ls: $/ ls: (empty)/' | show
}
ids() { # VM: what a restart would change
    printf 'qemu pid %s, InvocationID %.12s' "$(e2e_ct systemctl show -P MainPID "microvm@$1.service")" \
        "$(e2e_ct systemctl show -P InvocationID "microvm@$1.service")"
}
start_vm() { # VM
    local b t
    b=$(e2e_boot_count "$1"); t=$(date +%s.%N)
    e2e_ct systemctl start "microvm@$1.service" || die "starting $1 failed"
    e2e_wait_probed "$1" $((b + 1)) 120 || die "the guest $1 did not report"
    note "systemctl start microvm@$1: the guest mounted its shares $(since "$t") s later. It reports:"
    guest_says "$1"
}
# as_alice DIR CMD: what alice types in DIR (a login shell of hers; her sudo
# rule lets microvm-link re-run itself as root)
as_alice() { e2e_ct runuser -l alice -c "cd $1 && $2"; }
# link_watch DIR ARGS MARKER: alice runs `microvm-link ARGS` in DIR; meanwhile
# watch vm2's live share until it shows MARKER (LIVE_SECS: seconds from
# microvm-link's start, empty if it never did); shows microvm-link's output
link_watch() {
    local from t pid rc
    from=$(e2e_mvw_count vm2); t=$(date +%s.%N)
    note "\$ cd $1 && microvm-link${2:+ $2}"
    as_alice "$1" "microvm-link $2" > "$E2E_RUN/link.out" 2>&1 & pid=$!
    LIVE_SECS=
    e2e_wait_line vm2 "$from" "^MVW tag=nixfiles-live view: .* marker=$3\$" 90 > /dev/null && LIVE_SECS=$(since "$t")
    wait "$pid"; rc=$?
    show < "$E2E_RUN/link.out"
    [ "$rc" = 0 ] || die "microvm-link exited $rc"
    [ -n "$LIVE_SECS" ] || die "vm2's live share did not show '$3'"
}

# ---------------------------------------------------------------------------
begin "1. Placeholders: start vm1 and vm2 although their share sources are missing"
note "Without this project virtiofsd would exit ('... does not exist') and the VM would not start."
start_vm vm1
start_vm vm2
vm2_ids=$(ids vm2)
note "On the host, prepare made read-only placeholders, and the live root of vm1 for vm2's live share:"
e2e_ct ls -ld /var/lib/microvm-workspaces/vm1 /var/lib/microvm-workspaces/.live/vm1 /var/lib/microvm-workspaces/.live/vm1/current | show
end

begin "2. Link: alice runs microvm-link in her repo ~/vm1"
e2e_ct_as alice sh -c 'mkdir -p ~/vm1/.git ~/vm1/sub && echo "hello from alice repo" > ~/vm1/MARKER && echo hi > ~/vm1/sub/hello.txt'
note "(as alice; it re-runs itself through sudo)"
b=$(e2e_boot_count vm1); t=$(date +%s.%N)
link_watch '~/vm1' '' 'hello from alice repo'
e2e_wait_probed vm1 $((b + 1)) 120 || die "vm1 did not come back"
note "vm1's share is pinned: microvm-link restarted it, and its guest saw the repo $(since "$t") s after microvm-link began:"
guest_says vm1
note "The file the guest wrote as uid 1000 is in alice's repo, owned by her:"
e2e_ct ls -l /home/alice/vm1 | show
note "The workspace is now a bind mount of the repo (a symlink would not work with virtiofsd 1.14):"
e2e_ct findmnt -o TARGET,SOURCE /var/lib/microvm-workspaces/vm1 | show
[ "$(ids vm2)" = "$vm2_ids" ] || die "vm2 was restarted: $vm2_ids -> $(ids vm2)"
note "vm2 was not restarted ($vm2_ids, as in step 1): its live share showed the repo"
note "$LIVE_SECS s after microvm-link began; its pinned share still shows the old directory, the placeholder:"
guest_now vm2 nixfiles nixfiles-live
end

begin "3. Into the VM: microvm-link shell, from a directory of the repo to the same one in the guest"
t=$(date +%s.%N)
note "\$ cd ~/vm1/sub && microvm-link shell -- sh -c 'pwd; ls'"
out=$(as_alice '~/vm1/sub' "microvm-link shell -- sh -c 'pwd; ls'" 2>&1) || die "microvm-link shell failed: $out"
show <<<"$out"
grep -qx /mnt/workspace/sub <<<"$out" || die "microvm-link shell did not land in /mnt/workspace/sub"
note "ssh ran as alice (her key, her ssh config) in the guest directory matching ~/vm1/sub, $(since "$t") s."
note "vm1 already ran and saw this repo, so shell needed no sudo and linked or restarted nothing; the next"
note "calls share its SSH connection. Without '-- COMMAND' it opens a login shell there."
end

begin "4. Live: alice relinks vm1 to a second checkout; vm2 follows without a restart"
e2e_ct_as alice sh -c 'mkdir -p ~/feature/vm1/.git && echo "hello from the feature checkout" > ~/feature/vm1/MARKER'
note "~/feature/vm1: another checkout of the same project (the VM is named after the directory: vm1)"
link_watch '~/feature/vm1' '' 'hello from the feature checkout'
[ "$(ids vm2)" = "$vm2_ids" ] || die "vm2 was restarted: $vm2_ids -> $(ids vm2)"
note "vm2, still the same VM ($vm2_ids), showed the new checkout $LIVE_SECS s after microvm-link began,"
note "through its live share; its pinned share still shows the placeholder:"
guest_now vm2 nixfiles nixfiles-live
note "(vm1's own share is pinned, so microvm-link restarted vm1.)"
end

begin "5. Stale: microvm-link status, then --restart-stale for the VMs left behind"
note "\$ microvm-link status"
as_alice '~' 'microvm-link status' 2>&1 | show
note "vm2's pinned share is STALE: it still sees what it saw at its start. The live share never is."
b=$(e2e_boot_count vm2); t=$(date +%s.%N)
note "\$ cd ~/feature/vm1 && microvm-link --restart-stale"
as_alice '~/feature/vm1' 'microvm-link --restart-stale' 2>&1 | show
e2e_wait_probed vm2 $((b + 1)) 120 || die "vm2 did not come back"
note "vm2 was restarted and sees the checkout through both shares ($(since "$t") s):"
guest_says vm2
vm2_ids=$(ids vm2)
end

begin "6. Unlink: the placeholder serves again, nothing of alice's is touched"
b=$(e2e_boot_count vm1); t=$(date +%s.%N)
link_watch '~' 'unlink vm1' none
e2e_wait_probed vm1 $((b + 1)) 120 || die "vm1 did not come back"
note "vm1, restarted, sees the placeholder ($(since "$t") s):"
guest_says vm1
[ "$(ids vm2)" = "$vm2_ids" ] || die "vm2 was restarted: $vm2_ids -> $(ids vm2)"
note "vm2's live share showed the placeholder again $LIVE_SECS s after microvm-link began, no restart."
note "alice's checkouts are still there:"
e2e_ct ls -l /home/alice/vm1 /home/alice/feature/vm1 | show
end

say "Done"
