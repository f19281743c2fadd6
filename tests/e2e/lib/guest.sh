# shellcheck shell=bash
# The guest: the host's Debian kernel and a busybox-static initramfs whose
# /init is lib/guest-init. Cached under $E2E_CACHE/guest-<key> (key: this
# file, guest-init, the kernel, busybox and dropbear), built in a temporary
# directory and renamed into place. Sourced after common.sh.
#
# For VMs with SSH (E2E_SSH_PORTS in fixture.sh) the initramfs also holds
# dropbear (Debian's dropbear-bin: the binary and the shared libraries ldd
# names, at the same paths), a host key made at build time (its public half
# in <guest dir>/ssh_host_ed25519_key.pub, for known_hosts) and the modules of
# virtio-net and virtio-rng. The guest user alice (uid 1000) has home
# /home/alice; her authorized key comes from the kernel command line
# (mvw.ssh_key=), so no client key is baked into the cache.

E2E_GUEST_MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci fuse virtiofs"
# virtio-rng: without it dropbear waits ~4 s at its first connection for
# the kernel's randomness (no RDRAND under TCG's default CPU)
E2E_GUEST_SSH_MODULES="failover net_failover virtio_net virtio-rng"
E2E_DROPBEAR=${E2E_DROPBEAR:-/usr/sbin/dropbear}
# git in the guest (the guest-containment scenario commits there): the binary and its libraries
E2E_GUEST_GIT=${E2E_GUEST_GIT:-/usr/bin/git}

# newest kernel in /boot that has the modules we need
e2e_guest_kver() {
    local k v
    for k in $(ls -v /boot/vmlinuz-* 2>/dev/null | sort -rV); do
        v=${k#/boot/vmlinuz-}
        [ -n "$(find "/lib/modules/$v" -name 'virtiofs.ko*' 2>/dev/null | head -n 1)" ] && { echo "$v"; return 0; }
    done
    return 1
}

e2e_guest() {
    local kver key dir tmp m f lockfd
    kver=$(e2e_guest_kver) || e2e_die "no kernel in /boot with a matching /lib/modules/<ver>/.../virtiofs.ko (apt-get install linux-image-amd64)"
    [ -x "$E2E_GUEST_GIT" ] || e2e_die "git missing at $E2E_GUEST_GIT, needed in the guest (apt-get install git)"
    [ -x "$E2E_DROPBEAR" ] || e2e_die "dropbear missing at $E2E_DROPBEAR, needed for the SSH guest (apt-get install dropbear-bin)"
    command -v dropbearkey >/dev/null || e2e_die "dropbearkey missing, needed for the SSH guest's host key (apt-get install dropbear-bin)"
    key=$({ cat "${BASH_SOURCE[0]}" "$E2E_LIB/guest-init"; echo "$kver"; sha256sum < "/boot/vmlinuz-$kver"; sha256sum < "$(command -v busybox)"; sha256sum < "$E2E_DROPBEAR"; sha256sum < "$E2E_GUEST_GIT"; } | e2e_hash)
    dir=$E2E_CACHE/guest-$key
    mkdir -p "$E2E_CACHE"
    # one builder at a time: the host key is random, so two runs racing to
    # rename their builds into place could pair one's initramfs with the
    # other's public key
    exec {lockfd}>"$E2E_CACHE/.guest.lock"
    flock "$lockfd"
    if [ ! -f "$dir/.e2e-complete" ]; then
        tmp=$E2E_CACHE/.tmp-guest-$key-$$
        rm -rf "$tmp"
        mkdir -p "$tmp/initrd/bin" "$tmp/initrd/lib/modules" "$tmp/initrd/etc"
        cp "$(command -v busybox)" "$tmp/initrd/bin/busybox"
        install -m 0755 "$E2E_LIB/guest-init" "$tmp/initrd/init"
        for m in $E2E_GUEST_MODULES $E2E_GUEST_SSH_MODULES; do
            f=$(find "/lib/modules/$kver" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n 1)
            [ -n "$f" ] || e2e_die "module $m not found in /lib/modules/$kver"
            case $f in
                *.ko) cp "$f" "$tmp/initrd/lib/modules/$m.ko" ;;
                *.xz) xz -dc "$f" > "$tmp/initrd/lib/modules/$m.ko" ;;
                *.zst) zstd -dc "$f" > "$tmp/initrd/lib/modules/$m.ko" ;;
                *.gz) gzip -dc "$f" > "$tmp/initrd/lib/modules/$m.ko" ;;
            esac
        done
        printf 'root:x:0:0:root:/:/bin/sh\nalice:x:1000:1000:alice:/home/alice:/bin/sh\n' > "$tmp/initrd/etc/passwd"
        printf 'root:x:0:\nalice:x:1000:\n' > "$tmp/initrd/etc/group"
        printf '/bin/sh\n' > "$tmp/initrd/etc/shells"
        e2e_guest_add_dropbear "$tmp"
        e2e_guest_add_binary "$tmp/initrd" "$E2E_GUEST_GIT"
        (cd "$tmp/initrd" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) > "$tmp/initrd.gz"
        install -m 0644 "/boot/vmlinuz-$kver" "$tmp/bzImage"
        rm -rf "$tmp/initrd"
        echo "$kver" > "$tmp/kernel-version"
        touch "$tmp/.e2e-complete"
        rm -rf "$dir"
        mv -T "$tmp" "$dir"
        # keep the cache small: drop guests of other recipes
        for tmp in "$E2E_CACHE"/guest-*; do
            [ -d "$tmp" ] && [ "$tmp" != "$dir" ] && rm -rf "$tmp"
        done
    fi
    exec {lockfd}>&-
    printf '%s\n' "$dir"
}

# e2e_guest_add_binary ROOT BIN: BIN and the shared libraries ldd names, at the same paths
e2e_guest_add_binary() {
    local root=$1 bin=$2 lib
    install -D -m 0755 "$bin" "$root$bin"
    for lib in $(LC_ALL=C ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

# e2e_guest_add_dropbear TMP: dropbear and its libraries into TMP/initrd,
# a fresh ed25519 host key, alice's home with an empty ~/.ssh
e2e_guest_add_dropbear() {
    local tmp=$1 root=$1/initrd lib
    install -D -m 0755 "$E2E_DROPBEAR" "$root/usr/sbin/dropbear"
    # `libx.so => /lib/.../libx.so (0x...)` and the loader `/lib64/ld-linux-x86-64.so.2 (0x...)`
    for lib in $(LC_ALL=C ldd "$E2E_DROPBEAR" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    mkdir -p "$root/etc/dropbear" "$root/home/alice/.ssh"
    dropbearkey -t ed25519 -f "$root/etc/dropbear/dropbear_ed25519_host_key" > /dev/null 2>&1 ||
        e2e_die "dropbearkey could not make a host key"
    dropbearkey -y -f "$root/etc/dropbear/dropbear_ed25519_host_key" | grep '^ssh-ed25519 ' |
        awk '{ print $1, $2 }' > "$tmp/ssh_host_ed25519_key.pub"
    [ -s "$tmp/ssh_host_ed25519_key.pub" ] || e2e_die "dropbearkey made no ed25519 host key"
    # dropbear refuses keys in a home or ~/.ssh that others can write
    chown -R 1000:1000 "$root/home/alice"
    chmod 0755 "$root/home/alice"
    chmod 0700 "$root/home/alice/.ssh"
}
