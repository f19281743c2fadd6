#!/usr/bin/env bash
# Runs every test: the library's (no root: run here as nobody, as a contributor without root
# runs `cargo test`), the root set (tests/root: prepare, link, generator golden files with
# systemd-analyze verify, the real virtiofsd, ...; tests/reliability: crash, race, hostile
# input, privilege, full disk), the Nix checks, and the end-to-end suite in a booted systemd
# container with real virtiofsd and qemu guests. Needs root; installs what is missing first
# (tests/deps.sh). Ends with one line: "all: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: the tests mount, set trusted xattrs and boot a container: run as root" >&2
  exit 1
fi
tests/deps.sh || { echo "test.sh: installing dependencies failed" >&2; exit 1; }
export VIRTIOFSD=${VIRTIOFSD:-${MVW_CACHE:-/var/cache/microvm-workspaces-ci}/virtiofsd-1.14.0/bin/virtiofsd}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
passed=0 failed=0 broken=()

step() { # name, command...
  local name=$1; shift
  echo "== $name"
  if "$@" 2>&1 | tee -a "$log"; then :; else broken+=("$name"); fi
}

# cargo runs each test executable through the runner: the library's tests as nobody, so
# one that needs root fails here rather than for a contributor.
as_nobody='target."cfg(unix)".runner = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]'

step "cargo fmt" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --all-targets --all-features --quiet -- -D warnings
step "cargo test (no root, as nobody)" cargo test --config "$as_nobody"
step "cargo test (root set)" cargo test --features root-tests --test root --test reliability
step "nix" bash tests/nix/check.sh
step "e2e" bash tests/e2e/run

# Tally every runner's closing lines.
while read -r p f; do
  passed=$((passed + p)); failed=$((failed + f))
done < <(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p; s/^[a-z0-9]+: ([0-9]+) passed, ([0-9]+) failed.*/\1 \2/p' "$log")

if [ ${#broken[@]} -gt 0 ]; then
  echo "test.sh: failed steps: ${broken[*]}" >&2
  [ "$failed" -gt 0 ] || failed=${#broken[@]}
fi
echo "all: $passed passed, $failed failed"
[ ${#broken[@]} -eq 0 ] && [ "$failed" -eq 0 ]
