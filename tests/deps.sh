#!/usr/bin/env bash
# Installs what the tests and the demo need on a Debian-like machine, only what is missing:
# Debian packages (apt-get update first), and virtiofsd 1.14 from crates.io (the virtiofsd
# NixOS ships), built once into a cache outside the clone keyed by its version.
set -euo pipefail

CACHE=${MVW_CACHE:-/var/cache/microvm-workspaces-ci}
VIRTIOFSD_VERSION=1.14.0
export VIRTIOFSD=${VIRTIOFSD:-$CACHE/virtiofsd-$VIRTIOFSD_VERSION/bin/virtiofsd}

if [ "$(id -u)" != 0 ]; then
  echo "deps.sh: run as root (it installs packages)" >&2
  exit 1
fi
command -v cargo >/dev/null || {
  echo "deps.sh: no cargo: install a Rust toolchain (1.89 or later, e.g. with rustup) for root" >&2
  exit 1
}

# package -> a file it installs (checked instead of asking dpkg, which is slow)
declare -A want=(
  [systemd]=/usr/bin/systemd-analyze
  [systemd-container]=/usr/bin/systemd-nspawn
  [debootstrap]=/usr/sbin/debootstrap
  [qemu-system-x86]=/usr/bin/qemu-system-x86_64
  [linux-image-amd64]=/boot
  [busybox-static]=/bin/busybox
  [cpio]=/usr/bin/cpio
  [nix-bin]=/usr/bin/nix-instantiate
  [util-linux]=/usr/bin/unshare
  [attr]=/usr/bin/getfattr
  [sudo]=/usr/bin/sudo
  [strace]=/usr/bin/strace
  [hyperfine]=/usr/bin/hyperfine
  [pkg-config]=/usr/bin/pkg-config
  [libseccomp-dev]=/usr/include/seccomp.h
  [libcap-ng-dev]=/usr/include/cap-ng.h
  [xz-utils]=/usr/bin/xz
  [zstd]=/usr/bin/zstd
  [gcc]=/usr/bin/cc
  [dropbear-bin]=/usr/sbin/dropbear
  [git]=/usr/bin/git
)
missing=()
for pkg in "${!want[@]}"; do
  f=${want[$pkg]}
  if [ "$pkg" = linux-image-amd64 ]; then
    compgen -G '/boot/vmlinuz-*' >/dev/null || missing+=("$pkg")
  elif [ "$pkg" = busybox-static ]; then
    # Debian's dynamic busybox installs the same path but lacks what the guest needs.
    { [ -e "$f" ] && busybox --list | grep -qx setpriv; } || missing+=("$pkg")
  elif [ ! -e "$f" ]; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps.sh: installing ${missing[*]}"
  # another job may hold the dpkg lock (parallel worktrees on one machine): wait for it
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VIRTIOFSD" ]; then
  # one build at a time: a second deps.sh (another worktree's) waits for the first's result
  mkdir -p "$CACHE"
  exec {lockfd}>"$CACHE/.virtiofsd.lock"
  flock "$lockfd"
fi
if [ ! -x "$VIRTIOFSD" ]; then
  echo "deps.sh: building virtiofsd $VIRTIOFSD_VERSION (about 3 minutes, once)"
  tmp=$(mktemp -d "$CACHE.virtiofsd.XXXXXX" 2>/dev/null || { mkdir -p "$(dirname "$CACHE")"; mktemp -d "$CACHE.virtiofsd.XXXXXX"; })
  cargo install virtiofsd --version "$VIRTIOFSD_VERSION" --locked --root "$tmp" --quiet
  mkdir -p "$CACHE"
  rm -rf "$CACHE/virtiofsd-$VIRTIOFSD_VERSION"
  mv "$tmp" "$CACHE/virtiofsd-$VIRTIOFSD_VERSION"
fi
"$VIRTIOFSD" --version >/dev/null
