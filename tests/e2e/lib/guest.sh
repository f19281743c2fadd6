# shellcheck shell=bash
# The guest: the host's Debian kernel and a busybox-static initramfs whose
# /init is lib/guest-init. Cached under $E2E_CACHE/guest-<key> (key: this
# file, guest-init, the kernel and busybox), built in a temporary directory
# and renamed into place. Sourced after common.sh.

E2E_GUEST_MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci fuse virtiofs"

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
    local kver key dir tmp m f
    kver=$(e2e_guest_kver) || e2e_die "no kernel in /boot with a matching /lib/modules/<ver>/.../virtiofs.ko (apt-get install linux-image-amd64)"
    key=$({ cat "${BASH_SOURCE[0]}" "$E2E_LIB/guest-init"; echo "$kver"; sha256sum < "/boot/vmlinuz-$kver"; sha256sum < "$(command -v busybox)"; } | e2e_hash)
    dir=$E2E_CACHE/guest-$key
    if [ ! -f "$dir/.e2e-complete" ]; then
        tmp=$E2E_CACHE/.tmp-guest-$key-$$
        rm -rf "$tmp"
        mkdir -p "$tmp/initrd/bin" "$tmp/initrd/lib/modules" "$tmp/initrd/etc"
        cp "$(command -v busybox)" "$tmp/initrd/bin/busybox"
        install -m 0755 "$E2E_LIB/guest-init" "$tmp/initrd/init"
        for m in $E2E_GUEST_MODULES; do
            f=$(find "/lib/modules/$kver" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n 1)
            [ -n "$f" ] || e2e_die "module $m not found in /lib/modules/$kver"
            case $f in
                *.ko) cp "$f" "$tmp/initrd/lib/modules/$m.ko" ;;
                *.xz) xz -dc "$f" > "$tmp/initrd/lib/modules/$m.ko" ;;
                *.zst) zstd -dc "$f" > "$tmp/initrd/lib/modules/$m.ko" ;;
                *.gz) gzip -dc "$f" > "$tmp/initrd/lib/modules/$m.ko" ;;
            esac
        done
        printf 'root:x:0:0:root:/:/bin/sh\nalice:x:1000:1000:alice:/:/bin/sh\n' > "$tmp/initrd/etc/passwd"
        printf 'root:x:0:\nalice:x:1000:\n' > "$tmp/initrd/etc/group"
        (cd "$tmp/initrd" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) > "$tmp/initrd.gz"
        install -m 0644 "/boot/vmlinuz-$kver" "$tmp/bzImage"
        rm -rf "$tmp/initrd"
        echo "$kver" > "$tmp/kernel-version"
        touch "$tmp/.e2e-complete"
        rm -rf "$dir"
        mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"   # lost a race: the other copy is as good
        # keep the cache small: drop guests of other recipes
        for tmp in "$E2E_CACHE"/guest-*; do
            [ -d "$tmp" ] && [ "$tmp" != "$dir" ] && rm -rf "$tmp"
        done
    fi
    printf '%s\n' "$dir"
}
