#!/usr/bin/env bash
# Relink without restart on a host with E VMs (bench/run.sh's setup: each VM started once, its
# entry and runtime record there; `bench` relinked from checkout b to checkout a each run), two
# builds side by side in one hyperfine run, beside a static no-op process (the floor).
#
# usage: sudo bench/relink-compare.sh OLD_BIN_DIR NEW_BIN_DIR [E]   (E: 1000 by default)
#   e.g. git worktree add /tmp/old 253ec30 && (cd /tmp/old && cargo build --release)
#        sudo bench/relink-compare.sh /tmp/old/target/release target/release
# Each build gets a tree of its own, prepared by its own prepare. BENCH_RUNS=N (default 30).
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
	echo "bench/relink-compare.sh: run as root (links mount)" >&2
	exit 1
fi
[ -n "${MVW_BENCH_NS:-}" ] || exec unshare --mount --propagation private env MVW_BENCH_NS=1 "$0" "$@"
[ $# -ge 2 ] || { echo "usage: $0 OLD_BIN_DIR NEW_BIN_DIR [E]" >&2; exit 2; }
old=$(realpath "$1") new=$(realpath "$2") e=${3:-1000} runs=${BENCH_RUNS:-30}
here=$(cd "$(dirname "$0")" && pwd)
w=$(mktemp -d /var/tmp/mvw-relink.XXXXXX)
# The links' mounts first (deepest first), then the trees.
cleanup() {
	findmnt -rn -o TARGET | grep "^$w/" | sort -r | xargs -r -n 1 umount -l
	chattr -R -i "$w" 2>/dev/null || true # sealed placeholders (it fails on symlinks, going on)
	rm -rf "$w"
}
trap cleanup EXIT
# shellcheck source=bench/runner.sh
source "$here/runner.sh"
link() { # build-name bin-dir checkout
	echo "env MICROVM_WORKSPACES_ROOT=$w/$1 $2/microvm-link bench --repo $w/$1/home/u/$3/bench --no-restart"
}
for b in old new; do
	bin=$old
	[ $b = new ] && bin=$new
	relink_host "$w/$b" "$e" "$bin/microvm-workspaces-prepare"
	$(link $b "$bin" b) >/dev/null
done
gcc -static -O2 -o "$w/noop" "$here/noop.c"
hyperfine -N --style basic --warmup 3 --runs "$runs" --export-json "$w/out.json" \
	--prepare "$(link old "$old" b)" -n old "$(link old "$old" a)" \
	--prepare "$(link new "$new" b)" -n new "$(link new "$new" a)" \
	--prepare true -n noop "$w/noop" >/dev/null
for b in old new; do
	[ "$(readlink "$w/$b/var/lib/microvm-workspaces/.links/bench")" = /home/u/a/bench ] ||
		{ echo "bench/relink-compare.sh: $b did not link bench to checkout a" >&2; exit 1; }
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
jq -r '.results[] | "\(.command): median \(.median * 1000 * 100 | round / 100) ms, CPU \((.user + .system) * 1000 * 100 | round / 100) ms"' "$w/out.json"
