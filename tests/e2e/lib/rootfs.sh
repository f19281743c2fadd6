# shellcheck shell=bash
# The cached base rootfs: Debian (minbase; the suite and mirror of this
# machine's apt sources, lib/aptsource.sh) with systemd, qemu (TCG),
# virtiofsd 1.14 and the users the scenarios need. Cached under
# $E2E_CACHE/rootfs-<key>, key = sha256 of this file's text, the virtiofsd
# binary, the suite and the architecture. Built into a temporary directory
# and renamed into place, so a half-built tree is never reused. Sourced after
# common.sh and aptsource.sh.
#
# The mirror is deliberately not part of the key: it says where the packages
# come from, not what is built. Every mirror of a suite serves the same
# archive, and package versions within a suite drift over time whatever the
# mirror, which no key captures either. Keying by mirror would rebuild the
# rootfs whenever a machine's apt moves to another mirror or proxy and keep a
# shared cache from being reused across machines with different mirrors. What
# a tree was built from is written to <rootfs>/.e2e-source and logged.

E2E_ROOTFS_PACKAGES=systemd,systemd-sysv,dbus,sudo,qemu-system-x86,libseccomp2,libcap-ng0,jq,procps,openssh-client,git

e2e_rootfs_key() {
    { cat "${BASH_SOURCE[0]}"; sha256sum < "$E2E_VIRTIOFSD"; echo "$E2E_SUITE $(dpkg --print-architecture)"; } | e2e_hash
}

# Print the path of a complete base rootfs, building it when missing.
e2e_rootfs() {
    local key dir tmp t0
    e2e_apt_source
    key=$(e2e_rootfs_key)
    dir=$E2E_CACHE/rootfs-$key
    mkdir -p "$E2E_CACHE"
    if [ ! -f "$dir/.e2e-complete" ]; then
        exec {lockfd}>"$E2E_CACHE/.rootfs.lock"
        flock "$lockfd"
        if [ ! -f "$dir/.e2e-complete" ]; then
            # leftovers of an interrupted build are never reused
            for tmp in "$E2E_CACHE"/.tmp-rootfs-*; do
                [ -e "$tmp" ] && e2e_rm_tree "$tmp"
            done
            [ -e "$dir" ] && e2e_rm_tree "$dir"
            tmp=$E2E_CACHE/.tmp-rootfs-$key-$$
            t0=$(e2e_now)
            e2e_log "building base rootfs $key (debootstrap $E2E_SUITE from $E2E_MIRROR${E2E_KEYRING:+ with keyring $E2E_KEYRING}, apt source $E2E_APT_ENTRY; about 2 minutes)"
            if ! e2e_rootfs_build "$tmp" > "$E2E_CACHE/rootfs-$key.build.log" 2>&1; then
                tail -n 30 "$E2E_CACHE/rootfs-$key.build.log" >&2
                e2e_rm_tree "$tmp"
                e2e_die "building the rootfs failed (log: $E2E_CACHE/rootfs-$key.build.log)"
            fi
            printf 'mirror=%s suite=%s keyring=%s entry=%s built=%s\n' "$E2E_MIRROR" "$E2E_SUITE" \
                "${E2E_KEYRING:-default}" "$E2E_APT_ENTRY" "$(date -u +%FT%TZ)" > "$tmp/.e2e-source"
            touch "$tmp/.e2e-complete"
            mv -T "$tmp" "$dir"
            e2e_log "base rootfs ready in $(e2e_since "$t0")s: $dir"
            # keep the cache small: drop rootfs trees of other recipes
            for tmp in "$E2E_CACHE"/rootfs-*; do
                [ -d "$tmp" ] && [ "$tmp" != "$dir" ] && e2e_rm_tree "$tmp"
            done
        fi
        exec {lockfd}>&-
    fi
    e2e_log "base rootfs $dir ($(cat "$dir/.e2e-source" 2>/dev/null))"
    printf '%s\n' "$dir"
}

e2e_rootfs_build() {
    local root=$1
    set -ex
    mkdir -p "$E2E_CACHE/debs" "$root"
    e2e_apt_proxy_env
    debootstrap --variant=minbase --include="$E2E_ROOTFS_PACKAGES" \
        ${E2E_KEYRING:+--keyring="$E2E_KEYRING"} \
        --cache-dir="$E2E_CACHE/debs" "$E2E_SUITE" "$root" "$E2E_MIRROR"

    echo e2e > "$root/etc/hostname"
    : > "$root/etc/machine-id"
    install -m 0755 "$E2E_VIRTIOFSD" "$root/usr/libexec/virtiofsd"

    chroot "$root" /bin/sh -exc '
        getent group kvm >/dev/null || groupadd --system kvm
        # microvm.nix: users.users.microvm = { isSystemUser = true; group = "kvm"; }
        useradd --system --gid kvm --home-dir /var/lib/microvms --no-create-home \
            --shell /usr/sbin/nologin microvm
        # the unprivileged developer of the scenarios
        useradd --create-home --uid 1000 --user-group --shell /bin/bash alice
        /usr/libexec/virtiofsd --version
        qemu-system-x86_64 --version
        # nothing periodic may run during a test
        systemctl mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
            e2scrub_all.timer fstrim.timer 2>/dev/null || true
        apt-get clean
        rm -rf /var/lib/apt/lists/* /var/log/*.log
    '
    set +x
}
