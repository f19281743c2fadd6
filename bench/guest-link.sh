#!/usr/bin/env bash
# What containing the guest costs a link (issue 17): `microvm-link VM --no-restart` relinking
# between two checkouts of a real git repo (REPO_FILES tracked files, so an index of that many
# entries), for a VM with the defaults (idmapped mounts, the VM's own git dir: each relink to
# the other checkout makes a new one, copying HEAD, refs and the index) against the same VM
# with `idmap = false` and `git = "shared"` (one plain mount), and against a static no-op
# process (the floor); and (issue 20) the defaults relinking between two worktrees of the
# first checkout (`.git` a file: the git dir in a scaffold, and the VM's own git dir made from
# the worktree's). Same run, same tree, hyperfine medians.
#
# usage: sudo bench/guest-link.sh        BENCH_RUNS=N (default 30), REPO_FILES=N (default 2000)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
[ "$(id -u)" = 0 ] || { echo "bench/guest-link.sh: run as root (it mounts)" >&2; exit 1; }
if [ -z "${MVW_BENCH_NS:-}" ]; then
    exec unshare --mount --propagation private env MVW_BENCH_NS=1 "$0" "$@"
fi
for t in hyperfine git gcc jq; do
    command -v "$t" >/dev/null || { echo "bench/guest-link.sh: $t is missing" >&2; exit 1; }
done
RUNS=${BENCH_RUNS:-30}
FILES=${REPO_FILES:-2000}
(cd "$repo" && cargo build --release --quiet)
LINK=$repo/target/release/microvm-link
W=$(mktemp -d /var/tmp/mvw-guest-bench.XXXXXX)
cleanup() {
    findmnt -rn -o TARGET | grep "^$W" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    chattr -R -i "$W" 2>/dev/null || true # sealed placeholders (it fails on symlinks, going on)
    rm -rf "$W"
}
trap cleanup EXIT
gcc -O2 -static -o "$W/noop" "$here/noop.c"

R=$W/root
chmod 0755 "$W"
mkdir -p "$R/etc/microvm-workspaces" "$R/home/u"
chmod 0755 "$R" "$R/home"
chown 4242:4242 "$R/home/u"
cat > "$R/etc/microvm-workspaces/config.json" <<'EOF'
{"vms": {
  "contained": {"shares": [{"tag": "w", "proto": "virtiofs", "source": "/var/lib/microvm-workspaces/contained"}]},
  "plain": {"idmap": false, "git": "shared", "shares": [{"tag": "w", "proto": "virtiofs", "source": "/var/lib/microvm-workspaces/plain"}]},
  "worktree": {"shares": [{"tag": "w", "proto": "virtiofs", "source": "/var/lib/microvm-workspaces/worktree"}]}
}}
EOF
for c in a b; do
    HOME=/nonexistent setpriv --reuid=4242 --regid=4242 --clear-groups sh -c '
        set -e; mkdir -p "$1" && cd "$1" && git init -q -b main
        i=0; while [ $i -lt "$2" ]; do mkdir -p "d$((i % 50))"; echo "$i" > "d$((i % 50))/f$i"; i=$((i + 1)); done
        git add -A && git -c user.name=u -c user.email=u@h commit -q -m base' sh "$R/home/u/$c" "$FILES"
done
# Two worktrees of checkout a; their .git files name their git dirs relatively, as
# `--relative-paths` would (under --root an absolute host path means nothing).
for w in wa wb; do
    HOME=/nonexistent setpriv --reuid=4242 --regid=4242 --clear-groups sh -c '
        set -e; cd "$1/a" && git worktree add -q "../$2" -b "$2"
        echo "gitdir: ../a/.git/worktrees/$2" > "../$2/.git"' sh "$R/home/u" "$w"
done
relink() { # VM: link the other checkout (worktree) than last time
    local vm=$1 f=$W/last-$1 next=a pre=
    [ "$vm" = worktree ] && pre=w
    [ "$(cat "$f" 2>/dev/null)" = a ] && next=b
    echo "$next" > "$f"
    "$LINK" --root "$R" --user 4242 "$vm" --repo "$R/home/u/$pre$next" --no-restart >/dev/null
}
export -f relink
export LINK R W
relink contained; relink plain; relink worktree   # first links outside the measurement
out=$W/hf.json
hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$out" \
    -n noop "$W/noop" \
    -n plain "bash -c 'relink plain'" \
    -n contained "bash -c 'relink contained'" \
    -n worktree "bash -c 'relink worktree'" >&2
med() { jq -r --arg n "$1" '.results[] | select(.command == $n) | .median * 1000' "$out"; }
noop=$(med noop); plain=$(med plain); contained=$(med contained); worktree=$(med worktree)
awk -v n="$noop" -v p="$plain" -v c="$contained" -v w="$worktree" -v runs="$RUNS" -v files="$FILES" 'BEGIN {
    printf "relink between two checkouts (%d tracked files), medians of %d runs, ms\n", files, runs
    printf "  static no-op process                        %8.2f\n", n
    printf "  idmap = false, git = shared (plain mount)   %8.2f\n", p
    printf "  defaults: idmapped, the VM'"'"'s own git dir     %8.2f  (%.2fx plain, +%.2f ms)\n", c, c / p, c - p
    printf "  defaults, between two worktrees (a scaffold)  %8.2f  (%.2fx plain, +%.2f ms over a checkout)\n", w, w / p, w - c
}'
