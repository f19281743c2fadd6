# shellcheck shell=bash
# Per-run fixture written into a copy of the base rootfs: microvm.nix-shaped
# template units, runner trees under /var/lib/microvms/<vm>/current (symlinks
# into a fake /nix/store, as microvm.nix's install-microvm-<vm> makes them),
# the guest kernel/initramfs, and /etc/microvm-workspaces/config.json.
# Sourced after common.sh.

E2E_WS=/var/lib/microvm-workspaces
E2E_STATE=/var/lib/microvms
E2E_GUEST_MEM=${E2E_GUEST_MEM:-256}
# virtiofsd's --cache: auto by default (the guest caches entries and
# attributes for 1 s); never, to see what caching costs a live link
E2E_VIRTIOFSD_CACHE=${E2E_VIRTIOFSD_CACHE:-auto}

# vm -> "tag=source[=ro] ..." (source as the user wrote it)
declare -gA E2E_VMS=(
    [vm1]="workspace=$E2E_WS/vm1"
    [vm2]="nixfiles=$E2E_WS/vm1=ro"
    [nixfiles]="nixfiles=$E2E_WS/nixfiles nix-secrets=$E2E_WS/nix-secrets host=$E2E_WS/nixfiles/hosts/microvms/nixfiles"
    [vm3]="nixfiles=$E2E_WS/nixfiles=ro nix-secrets=$E2E_WS/nix-secrets=ro host=$E2E_WS/nixfiles/hosts/microvms/vm3"
    [vmssh]="workspace=$E2E_WS/vmssh"
    # live shares (docs/design.md#live-links): sources below $E2E_WS/.live
    [testvm]="nixfiles=$E2E_WS/.live/nixfiles=ro host=$E2E_WS/.live/nixfiles/hosts/microvms/testvm"
    [web]="nixfiles=$E2E_WS/nixfiles=ro nixfiles-live=$E2E_WS/.live/nixfiles=ro"
    # the pool "agents" (issue 20): each a live share of its own entry, and SSH
    [pool1]="workspace=$E2E_WS/.live/pool1"
    [pool2]="workspace=$E2E_WS/.live/pool2"
)

# VMs whose guest runs an SSH server (dropbear, lib/guest-init): vm -> the TCP
# port on the container's 127.0.0.1 that qemu user networking forwards to
# the guest's port 22 (`-netdev user,hostfwd=tcp:127.0.0.1:PORT-:22` +
# virtio-net). A VM not listed has no NIC at all, exactly as before. The
# container has a network namespace of its own (container.sh), so these
# ports never meet another run's or the host's.
# In the container: alice's key $E2E_SSH_KEY (made per run, authorized in
# the guest through the runner's kernel command line), the guests' host key
# in /etc/ssh/ssh_known_hosts as [127.0.0.1]:PORT, and an ssh_config alias
# per VM in /etc/ssh/ssh_config.d/mvw-e2e.conf (`ssh vmssh CMD` as alice or
# root logs in as alice, BatchMode, StrictHostKeyChecking yes).
declare -gA E2E_SSH_PORTS=(
    [vmssh]=2201
    [testvm]=2202
    [pool1]=2203
    [pool2]=2204
)
# config.json's "companions" and "pools" (JSON; pools left out when empty).
# E2E_VMS, E2E_SSH_PORTS and these are the fixture's parameters: a caller
# with VMs of its own (demo.sh) sets them after sourcing this file, before
# e2e_fixture.
E2E_COMPANIONS='{ "nixfiles": { "nix-secrets": "../nix-secrets" } }'
E2E_POOLS='{ "agents": [ "pool1", "pool2" ] }'
E2E_SSH_USER=alice
E2E_SSH_KEY=/home/alice/.ssh/id_ed25519
E2E_SSH_HOME=/home/alice      # the guest user's home: `pwd` of a login there

e2e_fake_hash() { printf '%s' "$1" | sha256sum | tr -d -c 'a-z0-9' | cut -c1-32; }

# e2e_fixture ROOT GUESTDIR
e2e_fixture() {
    local root=$1 guest=$2 vm gh
    install -m 0644 -t "$root/etc/systemd/system" "$E2E_LIB"/units/*.service
    # sudo wants to resolve the host name (debootstrap writes no /etc/hosts)
    [ -s "$root/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n' > "$root/etc/hosts"
    grep -q "[[:space:]]$(cat "$root/etc/hostname")\$" "$root/etc/hosts" ||
        printf '127.0.1.1\t%s\n' "$(cat "$root/etc/hostname")" >> "$root/etc/hosts"

    gh=/nix/store/$(e2e_fake_hash "guest-$(cat "$guest/kernel-version")")-e2e-guest
    mkdir -p "$root$gh"
    install -m 0644 "$guest/bzImage" "$guest/initrd.gz" "$root$gh/"

    # microvm.nix activation: stateDir owned by microvm:kvm, group-writable
    mkdir -p "$root$E2E_STATE" "$root$E2E_WS"
    chroot "$root" chown microvm:kvm "$E2E_STATE"
    chmod 0775 "$root$E2E_STATE"
    e2e_fixture_ssh "$root" "$guest"
    for vm in "${!E2E_VMS[@]}"; do
        e2e_runner "$root" "$vm" "$gh" ${E2E_VMS[$vm]}
    done
    mkdir -p "$root/etc/microvm-workspaces"
    e2e_config > "$root/etc/microvm-workspaces/config.json.new"
    mv "$root/etc/microvm-workspaces/config.json.new" "$root/etc/microvm-workspaces/config.json"
    e2e_config_ssh "$root"
    # sudo for alice, as the NixOS module's optional rule would grant it
    printf '%s\n' "# microvm-workspaces e2e: the NixOS module's optional sudo rule" \
        "alice ALL=(root) NOPASSWD: /usr/bin/microvm-link" > "$root/etc/sudoers.d/microvm-link"
    chmod 0440 "$root/etc/sudoers.d/microvm-link"
}

# e2e_fixture_ssh ROOT GUESTDIR: alice's key pair, known_hosts and the
# ssh_config aliases of the VMs in E2E_SSH_PORTS
e2e_fixture_ssh() {
    local root=$1 guest=$2 vm port
    [ ${#E2E_SSH_PORTS[@]} -gt 0 ] || return 0
    [ -x "$root/usr/bin/ssh" ] || e2e_die "the rootfs has no ssh client (openssh-client)"
    install -d -m 0700 "$root$(dirname "$E2E_SSH_KEY")"
    chroot "$root" chown "$E2E_SSH_USER:" "$(dirname "$E2E_SSH_KEY")"
    rm -f "$root$E2E_SSH_KEY" "$root$E2E_SSH_KEY.pub"
    chroot --userspec="$E2E_SSH_USER:$E2E_SSH_USER" "$root" \
        ssh-keygen -q -t ed25519 -N '' -C "$E2E_SSH_USER@e2e" -f "$E2E_SSH_KEY" ||
        e2e_die "ssh-keygen for $E2E_SSH_USER failed in the rootfs"
    : > "$root/etc/ssh/ssh_known_hosts"
    printf '# microvm-workspaces e2e: the SSH guests (tests/e2e/lib/fixture.sh)\n' > "$root/etc/ssh/ssh_config.d/mvw-e2e.conf"
    for vm in $(printf '%s\n' "${!E2E_SSH_PORTS[@]}" | sort); do
        port=${E2E_SSH_PORTS[$vm]}
        printf '[127.0.0.1]:%s %s\n' "$port" "$(cat "$guest/ssh_host_ed25519_key.pub")" >> "$root/etc/ssh/ssh_known_hosts"
        printf 'Host %s\n    HostName 127.0.0.1\n    Port %s\n    User %s\n    IdentityFile %s\n    IdentitiesOnly yes\n    BatchMode yes\n    StrictHostKeyChecking yes\n    ConnectTimeout 10\n' \
            "$vm" "$port" "$E2E_SSH_USER" "$E2E_SSH_KEY" >> "$root/etc/ssh/ssh_config.d/mvw-e2e.conf"
    done
}

# e2e_runner ROOT VM GUESTSTOREPATH tag=source[=ro]...
e2e_runner() {
    local root=$1 vm=$2 gh=$3; shift 3
    local store=/nix/store/$(e2e_fake_hash "runner-$vm-$*")-microvm-qemu-$vm
    local d=$root$store spec tag src ro tags="" live="" sock i=0 fsargs="" vfs="" netargs="" sshargs=""
    if [ -n "${E2E_SSH_PORTS[$vm]:-}" ]; then
        # romfile= : no PXE option ROM (ipxe-qemu is not installed; -kernel boots).
        # virtio-rng (as microvm.nix's qemu runner has): dropbear needs the
        # kernel's randomness, which otherwise takes ~4 s to come under TCG
        netargs=" -netdev user,id=n0,hostfwd=tcp:127.0.0.1:${E2E_SSH_PORTS[$vm]}-:22 -device virtio-net-pci,netdev=n0,romfile= -device virtio-rng-pci"
        sshargs=" mvw.ssh_key=$(awk '{ print $2 }' "$root$E2E_SSH_KEY.pub")"
    fi
    mkdir -p "$d/bin" "$d/share/microvm/virtiofs"
    echo qemu > "$d/share/microvm/hypervisor"
    for spec in "$@"; do
        IFS== read -r tag src ro <<<"$spec"
        sock=$vm-virtiofs-$tag.sock
        mkdir -p "$d/share/microvm/virtiofs/$tag"
        printf '%s\n' "$src" > "$d/share/microvm/virtiofs/$tag/source"
        printf '%s\n' "$sock" > "$d/share/microvm/virtiofs/$tag/socket"
        tags=${tags:+$tags,}$tag
        # a live root: the guest mounts it aside and links its mountPoint to
        # <mount>/current, as the NixOS guest module does (lib/guest-init)
        case $src in "$E2E_WS"/.live/*) live=${live:+$live,}$tag ;; esac
        fsargs+=" -chardev socket,id=fs$i,path=$sock -device vhost-user-fs-pci,chardev=fs$i,tag=$tag"
        vfs+="start_virtiofsd $tag $sock $src ${ro:+--readonly}"$'\n'
        i=$((i + 1))
    done

    cat > "$d/bin/microvm-run" <<RUN
#!/bin/sh
# qemu runner of MicroVM '$vm' (microvm.nix-shaped; TCG, KVM is not usable here)
set -e
cd $E2E_STATE/$vm
exec qemu-system-x86_64 -name $vm -accel tcg -m ${E2E_GUEST_MEM}M \\
  -object memory-backend-memfd,id=mem,size=${E2E_GUEST_MEM}M,share=on -numa node,memdev=mem \\
  -nodefaults -no-user-config -display none -no-reboot \\
  -kernel $gh/bzImage -initrd $gh/initrd.gz \\
  -append "console=ttyS0 quiet panic=-1 mvw.vm=$vm mvw.tags=$tags${live:+ mvw.live=$live}$sshargs" \\
  -chardev file,id=ser0,path=$E2E_STATE/$vm/console.log,append=on -serial chardev:ser0 \\
 $fsargs$netargs
RUN

    cat > "$d/bin/microvm-shutdown" <<'RUN'
#!/bin/sh
# The e2e guest has no ACPI daemon, so a powerdown request would only time
# out; qemu exits cleanly on the SIGTERM systemd sends after ExecStop.
exit 0
RUN

    cat > "$d/bin/virtiofsd-run" <<RUN
#!/bin/bash
# virtiofsd supervisor of MicroVM '$vm', in place of microvm.nix's supervisord:
# one virtiofsd per share; READY=1 once every socket exists and every
# virtiofsd has stayed up for a second (supervisord's startsecs=1). A
# virtiofsd that exits with status 0 (its client, qemu, went away) is left
# exited, as supervisord's autorestart=unexpected does. One that dies
# otherwise (error, signal) stops the others and makes this script exit 1,
# so systemd's Restart=always starts the unit again, ExecStartPre included.
# (supervisord would restart such a virtiofsd itself, without systemd.)
set -u
cd $E2E_STATE/$vm
declare -A pid_tag=() tag_args=()
stopping=
start_virtiofsd() { # TAG SOCKET SOURCE [--readonly]
    local tag=\$1 sock=\$2 src=\$3; shift 3
    tag_args[\$tag]="\$sock \$src \$*"
    rm -f "\$sock"
    /usr/libexec/virtiofsd --socket-path="\$sock" --socket-group=kvm \\
        --shared-dir="\$src" "\$@" --cache=$E2E_VIRTIOFSD_CACHE &
    pid_tag[\$!]=\$tag
}
sleeper=
stop_all() {
    stopping=1
    kill -TERM "\${!pid_tag[@]}" \$sleeper 2>/dev/null
    wait
}
trap 'stop_all; exit 0' TERM INT

$vfs
# ready once every socket exists; fail when a virtiofsd dies first
for _ in \$(seq 1 300); do
    missing=0
    for p in "\${!pid_tag[@]}"; do
        if ! kill -0 "\$p" 2>/dev/null; then
            wait "\$p"; rc=\$?
            echo "virtiofsd for tag \${pid_tag[\$p]} exited with status \$rc before it was ready" >&2
            unset "pid_tag[\$p]"; stop_all; exit 1
        fi
        read -r sock _ <<<"\${tag_args[\${pid_tag[\$p]}]}"
        [ -S "\$sock" ] || missing=1
    done
    [ \$missing = 0 ] && break
    sleep 0.1
done
[ \$missing = 0 ] || { echo "virtiofsd sockets did not appear" >&2; stop_all; exit 1; }
# virtiofsd creates its socket before it enters its sandbox (where a bad
# --shared-dir fails): like supervisord's startsecs=1, a virtiofsd counts as
# running only once it has stayed up for a second
sleep 1
for p in "\${!pid_tag[@]}"; do
    if ! kill -0 "\$p" 2>/dev/null; then
        wait "\$p"; rc=\$?
        echo "virtiofsd for tag \${pid_tag[\$p]} exited with status \$rc right after starting" >&2
        unset "pid_tag[\$p]"; stop_all; exit 1
    fi
done
systemd-notify --ready --status="\${#pid_tag[@]} virtiofsd running"

while :; do
    if [ \${#pid_tag[@]} = 0 ]; then
        # every virtiofsd exited cleanly: stay up like supervisord does
        sleep infinity & sleeper=\$!
        wait \$sleeper
        [ -n "\$stopping" ] && exit 0
        continue
    fi
    dead=
    wait -n -p dead "\${!pid_tag[@]}"; rc=\$?
    [ -n "\$stopping" ] && exit 0
    [ -n "\$dead" ] || continue
    tag=\${pid_tag[\$dead]}; unset "pid_tag[\$dead]"
    if [ \$rc = 0 ]; then
        echo "virtiofsd for tag \$tag exited (its client went away); not restarted" >&2
        continue
    fi
    echo "virtiofsd for tag \$tag died (status \$rc); stopping" >&2
    stop_all
    exit 1
done
RUN
    chmod 0755 "$d/bin/"*
    # install-microvm-<vm>: <stateDir>/<vm>/current -> runner, owned microvm:kvm
    mkdir -p "$root$E2E_STATE/$vm"
    ln -sfn "$store" "$root$E2E_STATE/$vm/current"
    chroot "$root" chown -h microvm:kvm "$E2E_STATE/$vm" "$E2E_STATE/$vm/current"
}

e2e_config() {
    local vm spec tag src ro first=1 sfirst
    printf '{\n  "enable": true,\n  "stateDir": "%s",\n  "workspaceDir": "%s",\n' "$E2E_STATE" "$E2E_WS"
    printf '  "placeholder": { "user": "root", "group": "root", "mode": "0555" },\n  "vms": {\n'
    for vm in $(printf '%s\n' "${!E2E_VMS[@]}" | sort); do
        [ $first = 1 ] || printf ',\n'; first=0
        printf '    "%s": { "hostName": "%s", "shares": [' "$vm" "$vm"
        sfirst=1
        for spec in ${E2E_VMS[$vm]}; do
            IFS== read -r tag src ro <<<"$spec"
            [ $sfirst = 1 ] || printf ','; sfirst=0
            printf '\n      { "tag": "%s", "proto": "virtiofs", "source": "%s", "readOnly": %s }' \
                "$tag" "$src" "$([ -n "$ro" ] && echo true || echo false)"
        done
        printf ' ] }'
    done
    printf '\n  },\n  "companions": %s' "$E2E_COMPANIONS"
    [ -z "${E2E_POOLS:-}" ] || printf ',\n  "pools": %s' "$E2E_POOLS"
    printf '\n}\n'
}

# e2e_config_ssh ROOT: in config.json, each VM of E2E_SSH_PORTS gets its
# ssh_config alias as `ssh` and every share its guest mount point (where
# lib/guest-init mounts it) as `mountPoint`, which `microvm-link shell`
# needs to find the guest directory: `/mnt/<tag>`, or for a live share
# `/run/microvm-workspaces/<tag>` (whose `current` /mnt/<tag> links to, as
# the NixOS guest module does). jq of the rootfs.
e2e_config_ssh() {
    local root=$1 cfg=/etc/microvm-workspaces/config.json vm
    for vm in "${!E2E_SSH_PORTS[@]}"; do
        chroot "$root" jq --arg vm "$vm" --arg live "$E2E_WS/.live/" \
            '.vms[$vm].ssh = $vm | .vms[$vm].shares |= map(.mountPoint = (if (.source | startswith($live)) then "/run/microvm-workspaces/" else "/mnt/" end) + .tag)' \
            "$cfg" > "$root$cfg.new" || e2e_die "could not add vms.$vm.ssh to $cfg"
        mv "$root$cfg.new" "$root$cfg"
    done
}
