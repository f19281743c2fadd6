#!/usr/bin/env bash
# Benchmarks of microvm-workspaces (issue 6), each beside a peer measured in the same run:
#   generator        vs systemd-fstab-generator (same number of fstab entries, and 8x), and
#                    bench/gen-floor.c: the system calls of its output layout and nothing else
#   prepare          vs systemd-tmpfiles --create (equivalent `d` lines)
#                    and vs bench/baseline-prepare.sh (test -d / install -d)
#   microvm-link     relink without restart, 10 and 1000 workspace entries
#   syscalls         strace -c -f of prepare, all sources existing, vs the minimum it needs
#   start-up         prepare for a VM with 8 existing shares vs a static no-op process (issue 10)
#   binary sizes     against the 1.5 MiB limit of issue 10
# Medians of hyperfine runs on a warm cache; ratios are ours / peer (below 1: we are faster).
# Prints a table and writes bench/results.md.
#
# usage: sudo bench/run.sh          (root: mounts and trusted xattrs; runs in a private mount
#                                    namespace). BENCH_RUNS=N sets the runs per measurement.
#        sudo BENCH_ONLY=generator bench/run.sh   only the generator section, spliced into
#                                    bench/results.md in place of the old one.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
if [ "$(id -u)" != 0 ]; then
	echo "bench/run.sh: run as root (it mounts and sets trusted xattrs)" >&2
	exit 1
fi
if [ -z "${MVW_BENCH_NS:-}" ]; then
	exec unshare --mount --propagation private env MVW_BENCH_NS=1 "$0" "$@"
fi

FSTABGEN=/usr/lib/systemd/system-generators/systemd-fstab-generator
for t in hyperfine strace jq /usr/bin/time systemd-tmpfiles "$FSTABGEN" cargo gcc; do
	command -v "$t" >/dev/null || {
		echo "bench/run.sh: $t is missing (Debian: apt-get install hyperfine strace jq time systemd gcc libc6-dev)" >&2
		exit 1
	}
done

RUNS=${BENCH_RUNS:-30}
ROUNDS=5
# The no-op comparison: one hyperfine run of this many runs each (issue 10 asks for 1000).
NOOP_RUNS=${BENCH_NOOP_RUNS:-1000}
echo "building (cargo build --release)..." >&2
(cd "$repo" && cargo build --release --quiet)
BIN=$repo/target/release
PREPARE=$BIN/microvm-workspaces-prepare
GENERATOR=$BIN/microvm-workspaces-generator
LINK=$BIN/microvm-link
BASELINE=$here/baseline-prepare.sh

W=$(mktemp -d /var/tmp/mvw-bench.XXXXXX)
# Generators write into /run/systemd/generator*, a tmpfs: so do they here (on this disk,
# creating 4,000 inodes takes seconds and would measure the disk). Prepare's trees stay on
# disk, like /var/lib.
RUN=$W/run
mkdir "$RUN"
mount -t tmpfs -o mode=0755 tmpfs "$RUN"
cleanup() {
	findmnt -rn -o TARGET | grep "^$W" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
	# placeholders are sealed (immutable): lifted before removing
	chattr -R -i "$W" 2>/dev/null || true # it fails on symlinks, going on
	rm -rf "$W"
}
trap cleanup EXIT

# The floor of a process start: a static C program that returns 0 (no loader, no libc start-up
# beyond the minimum). /bin/true is dynamically linked on Debian, so build one.
NOOP=$W/noop
gcc -static -O2 -o "$NOOP" "$here/noop.c"
# The floor of the generator's output layout: its system calls and nothing else (issue 19).
FLOOR=$W/gen-floor
gcc -static -O2 -o "$FLOOR" "$here/gen-floor.c"

# ---- helpers ----

# group NAME [hyperfine options...] -- COMMAND...: the median wall time in ms of each command
# (space-separated). The runs are taken in $ROUNDS rounds, each running every command in turn,
# so that a burst of noise on the machine falls on all the commands compared, not on one.
group() {
	local name=$1
	shift
	local opts=()
	while [ "$1" != -- ]; do
		opts+=("$1")
		shift
	done
	shift
	local per=$(((RUNS + ROUNDS - 1) / ROUNDS)) round
	for round in $(seq 1 "$ROUNDS"); do
		hyperfine -N --style none --warmup 2 --runs "$per" "${opts[@]}" \
			--export-json "$W/$name.$round.json" "$@" >/dev/null 2>"$W/$name.err" || {
			cat "$W/$name.err" >&2
			exit 1
		}
	done
	jq -rs --argjson n $# '[range(0; $n) as $i | [.[].results[$i].times[]] | sort
	    | (if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end)
	    | . * 1000 | tostring] | join(" ")' "$W/$name".*.json
}

# cputime NAME N: the mean CPU time (user + system, ms) of each of the N commands of group NAME,
# over its rounds. Less moved by other load on the machine than the wall clock.
cputime() {
	jq -rs --argjson n "$2" '[range(0; $n) as $i | [.[].results[$i] | .user + .system] | add / length
	    | . * 1000 | tostring] | join(" ")' "$W/$1".*.json
}

# peak RSS in KiB: median of 5 runs of COMMAND, each after PREP (a shell line).
peak() {
	local prep=$1
	shift
	for _ in 1 2 3 4 5; do
		bash -c "$prep"
		/usr/bin/time -f %M -o "$W/rss" "$@" >/dev/null 2>&1
		cat "$W/rss"
	done | sort -n | sed -n 3p
}

ms() { awk -v v="$1" 'BEGIN { printf "%.2f", v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

declare -a TABLE
row() { TABLE+=("$*"); }

# runner ROOT VM SOURCE... and relink_host ROOT E PREPARE (the relink host).
# shellcheck source=bench/runner.sh
source "$here/runner.sh"

# tmpfiles `d` lines for the given inside paths (parents first, as placeholders would be).
dlines() {
	for p in "$@"; do
		printf 'd %s 0555 root root -\n' "$p"
	done
}

# The 8 shares of VM $1 in the 100-VM figures: its entry and two dirs in it, one in the shared
# nixfiles entry, one deeper, one outside the workspace dir, and two relative to its state dir.
eight() {
	local vm=$1 ws=/var/lib/microvm-workspaces
	echo "$ws/$vm" "$ws/$vm/a" "$ws/$vm/b" "$ws/nixfiles/hosts/microvms/$vm" "$ws/$vm/c/d" \
		"/srv/vm-data/$vm" var etc
}

# ---- machine ----

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
sysd=$(systemctl --version | head -1)
fs=$(df -T "$W" | awk 'NR == 2 { print $2 }')

# ---- 1. generator vs systemd-fstab-generator ----

echo "generator..." >&2
declare -A GEN
for n in 0 10 100 1000; do
	d=$W/gen$n
	mkdir -p "$d/root/etc/microvm-workspaces"
	vms=""
	for i in $(seq 0 $((n - 1))); do
		vms+=" vm$i"
	done
	# n VMs with 8 shares each, as the NixOS module writes them.
	jq -n --arg vms "$vms" '
	  { vms: ($vms | split(" ") | map(select(. != "")) | map({ key: ., value: { hostName: ., shares: (
	      . as $vm | [
	        { tag: "ws",      proto: "virtiofs", source: "/var/lib/microvm-workspaces/\($vm)" },
	        { tag: "nixfiles",proto: "virtiofs", source: "/var/lib/microvm-workspaces/nixfiles", readOnly: true },
	        { tag: "host",    proto: "virtiofs", source: "/var/lib/microvm-workspaces/nixfiles/hosts/microvms/\($vm)" },
	        { tag: "secrets", proto: "virtiofs", source: "/var/lib/microvm-workspaces/nix-secrets", readOnly: true },
	        { tag: "store",   proto: "9p",       source: "/nix/store", readOnly: true },
	        { tag: "var",     proto: "virtiofs", source: "var" },
	        { tag: "data",    proto: "virtiofs", source: "/srv/vm-data/\($vm)" },
	        { tag: "etc",     proto: "9p",       source: "etc" } ]) } }) | from_entries),
	    companions: { nixfiles: { "nix-secrets": "../nix-secrets" } } }' \
		>"$d/root/etc/microvm-workspaces/config.json"
	for m in $n $((8 * n)); do
		: >"$d/fstab$m"
		for i in $(seq 0 $((m - 1))); do
			echo "/srv/src/e$i /mnt/e$i none bind,nofail 0 0" >>"$d/fstab$m"
		done
	done
	o=$RUN/gen$n
	fresh="rm -rf $o && mkdir $o"
	ours="env MICROVM_WORKSPACES_ROOT=$d/root SYSTEMD_IN_INITRD=0 SYSTEMD_PROC_CMDLINE= $GENERATOR $o $o $o"
	peer="env SYSTEMD_IN_INITRD=0 SYSTEMD_PROC_CMDLINE= SYSTEMD_FSTAB=$d/fstab$n $FSTABGEN $o $o $o"
	peer8="env SYSTEMD_IN_INITRD=0 SYSTEMD_PROC_CMDLINE= SYSTEMD_FSTAB=$d/fstab$((8 * n)) $FSTABGEN $o $o $o"
	floor="$FLOOR $o $n"
	# All really do the work: count what they wrote (2 template drop-ins, 2 a VM; the floor
	# writes the same names).
	for cmd in "$ours" "$floor"; do
		bash -c "$fresh" && $cmd 2>/dev/null
		got=$(find "$o" -name '50-microvm-workspaces*.conf' | wc -l)
		[ "$got" = $((2 + 2 * n)) ] || { echo "$cmd wrote $got drop-ins for $n VMs" >&2; exit 1; }
	done
	for m in $n $((8 * n)); do
		bash -c "$fresh" && env SYSTEMD_IN_INITRD=0 SYSTEMD_PROC_CMDLINE= SYSTEMD_FSTAB="$d/fstab$m" "$FSTABGEN" "$o" "$o" "$o"
		got=$(find "$o" -maxdepth 1 -name '*.mount' | wc -l)
		[ "$got" = "$m" ] || { echo "fstab-generator made $got mount units of $m entries" >&2; exit 1; }
	done
	read -r "GEN[$n,ours]" "GEN[$n,peer]" "GEN[$n,peer8]" "GEN[$n,floor]" < <(group gen$n --prepare "bash -c '$fresh'" -- "$ours" "$peer" "$peer8" "$floor")
	read -r "GEN[$n,cours]" "GEN[$n,cpeer]" "GEN[$n,cpeer8]" "GEN[$n,cfloor]" < <(cputime gen$n 4)
	GEN[$n,rss]=$(peak "$fresh" $ours)
	GEN[$n,prss]=$(peak "$fresh" $peer)
done

if [ "${BENCH_ONLY:-}" != generator ]; then

# ---- 2. prepare vs systemd-tmpfiles and the shell baseline ----

echo "prepare..." >&2
declare -A PREP
for s in 1 10 100; do
	r=$W/prep$s/root
	srcs=()
	for i in $(seq 0 $((s - 1))); do
		srcs+=("/var/lib/microvm-workspaces/bench-vm/s$i")
	done
	runner "$r" bench-vm "${srcs[@]}"
	{
		echo "d /var/lib/microvm-workspaces 0755 root root -"
		dlines /var/lib/microvm-workspaces/bench-vm "${srcs[@]}"
	} >"$W/prep$s/tmpfiles.conf"
	ours="env MICROVM_WORKSPACES_ROOT=$r $PREPARE bench-vm"
	tmpf="systemd-tmpfiles --create --root=$r $W/prep$s/tmpfiles.conf"
	base="bash $BASELINE $r bench-vm"
	wipe_sh="chattr -R -i $r/var/lib/microvm-workspaces 2>/dev/null; rm -rf $r/var/lib/microvm-workspaces $r/run"
	wipe="bash -c '$wipe_sh'"
	# All missing: each run on a fresh tree.
	read -r "PREP[$s,miss,ours]" "PREP[$s,miss,tmpf]" "PREP[$s,miss,base]" < <(group prep$s-miss --prepare "$wipe" -- "$ours" "$tmpf" "$base")
	# All existing (the common case): the tree prepare made.
	bash -c "$wipe_sh" && $ours
	n=$(find "$r/var/lib/microvm-workspaces/bench-vm" -mindepth 1 -maxdepth 1 -type d | wc -l)
	[ "$n" = "$s" ] || { echo "prepare made $n of $s sources" >&2; exit 1; }
	read -r "PREP[$s,have,ours]" "PREP[$s,have,tmpf]" "PREP[$s,have,base]" < <(group prep$s-have -- "$ours" "$tmpf" "$base")
done

# ---- 3. 100 VMs x 8 shares (the figure of issue 2) ----

echo "100 VMs x 8 shares..." >&2
r=$W/hundred/root
vms=()
all=()
for i in $(seq 0 99); do
	vm=vm$i
	vms+=("$vm")
	# shellcheck disable=SC2046
	runner "$r" "$vm" $(eight "$vm")
	for p in $(eight "$vm"); do
		case $p in /*) all+=("$p") ;; *) all+=("/var/lib/microvms/$vm/$p") ;; esac
	done
done
dlines "${all[@]}" >"$W/hundred/tmpfiles.conf"
[ "$(wc -l <"$W/hundred/tmpfiles.conf")" = 800 ] || exit 1
cat >"$W/hundred/loop.sh" <<EOF
for vm in ${vms[*]}; do MICROVM_WORKSPACES_ROOT=$r $PREPARE \$vm || exit 1; done
EOF
bash "$W/hundred/loop.sh"
[ "$(find "$r/var/lib/microvm-workspaces" "$r/srv" -type d | wc -l)" -gt 500 ] || exit 1
read -r H_OURS H_TMPF H_BASE < <(group hundred -- "bash $W/hundred/loop.sh" \
	"systemd-tmpfiles --create --root=$r $W/hundred/tmpfiles.conf" "bash $BASELINE $r ${vms[*]}")

# ---- 4. microvm-link: relink without restart ----

echo "microvm-link..." >&2
declare -A LINKT
for e in 10 1000; do
	r=$W/link$e/root
	# A host with e VMs (each an entry in the workspace dir, started once: a runtime record),
	# and bench, relinked between two checkouts.
	relink_host "$r" "$e" "$PREPARE"
	n=$(find "$r/var/lib/microvm-workspaces" -mindepth 1 -maxdepth 1 -not -name '.*' | wc -l)
	[ "$n" = "$e" ] || { echo "$n entries, wanted $e" >&2; exit 1; }
	to() { echo "env MICROVM_WORKSPACES_ROOT=$r $LINK bench --repo $r/home/u/$1/bench --no-restart"; }
	$(to b) >/dev/null
	LINKT[$e]=$(group link$e --prepare "$(to b)" -- "$(to a)")
	[ "$(readlink "$r/var/lib/microvm-workspaces/.links/bench")" = /home/u/a/bench ] || exit 1
	findmnt -rn -o TARGET | grep -qx "$r/var/lib/microvm-workspaces/bench" || exit 1
done

# ---- 5. syscalls of prepare, all sources existing ----

echo "syscalls..." >&2
declare -A SYS
for s in 1 10 100; do
	r=$W/prep$s/root
	env MICROVM_WORKSPACES_ROOT="$r" "$PREPARE" bench-vm
	strace -f -c -S calls -E MICROVM_WORKSPACES_ROOT="$r" -o "$W/strace$s" "$PREPARE" bench-vm
	SYS[$s]=$(awk '$NF == "total" { print $4 }' "$W/strace$s")
done
PER_SHARE=$(awk -v a="${SYS[100]}" -v b="${SYS[1]}" 'BEGIN { printf "%.1f", (a - b) / 99 }')
FIXED=$(awk -v t="${SYS[1]}" -v p="$PER_SHARE" 'BEGIN { printf "%d", t - p }')
TOP=$(awk 'NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ && n++ < 10 { printf "%s %d, ", $NF, $4 }' "$W/strace100")

# ---- 6. start-up: prepare, 8 existing shares, vs a static no-op ----

echo "prepare vs a static no-op..." >&2
r=$W/startup/root
# shellcheck disable=SC2046
runner "$r" vm0 $(eight vm0)
# The config as the NixOS module writes it (prepare reads it at every start), and /run a tmpfs
# as on the host: on this disk, renaming the record over the last one (ext4 auto_da_alloc)
# would measure writeback, not prepare.
mkdir -p "$r/etc/microvm-workspaces" "$r/run"
mount -t tmpfs -o mode=0755 tmpfs "$r/run"
# shellcheck disable=SC2046
printf '%s\n' $(eight vm0) | jq -R . | jq -s '{ vms: { vm0: { hostName: "vm0", shares:
    [ to_entries[] | { tag: "s\(.key)", proto: "virtiofs", source: .value } ] } } }' \
	>"$r/etc/microvm-workspaces/config.json"
(unset SUDO_UID && MICROVM_WORKSPACES_ROOT=$r "$PREPARE" vm0)
n=$(jq '.shares | length' "$r/run/microvm-workspaces/vm0.json" 2>/dev/null || echo 0)
[ "$n" = 8 ] || { echo "prepare recorded $n of 8 shares" >&2; exit 1; }
# Both in each hyperfine run, in $ROUNDS rounds (as group() does) so a burst of noise falls on
# both, at nice -20: sub-millisecond runs are otherwise mostly a measure of what else the
# machine runs. The root goes through hyperfine's environment, not an `env VAR=...` wrapper, which
# would add a dynamically linked exec (~0.4 ms here) to every prepare. Re-rooting is refused
# through sudo: SUDO_UID is dropped.
for round in $(seq 1 "$ROUNDS"); do
	(
		unset SUDO_UID
		export MICROVM_WORKSPACES_ROOT=$r
		nice -n -20 hyperfine -N --style none --warmup 50 --runs $(((NOOP_RUNS + ROUNDS - 1) / ROUNDS)) \
			--export-json "$W/noop.$round.json" "$PREPARE vm0" "$NOOP" >/dev/null 2>"$W/noop.err"
	) || {
		cat "$W/noop.err" >&2
		exit 1
	}
done
# median and minimum (ms) of all the runs of command $1 (0: prepare, 1: no-op)
noopstat() {
	jq -rs --argjson i "$1" '[.[].results[$i].times[]] | sort
	    | [(if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end), .[0]]
	    | map(. * 1000 | tostring) | join(" ")' "$W"/noop.*.json
}
read -r NOOP_PREP NOOP_PREP_MIN < <(noopstat 0)
read -r NOOP_NOOP NOOP_NOOP_MIN < <(noopstat 1)

fi

# ---- 7. sizes ----

size() { stat -c %s "$1" | awk '{ printf "%.0f KiB", $1 / 1024 }'; }
# Issue 10: under 1.5 MiB each.
LIMIT=$((1536 * 1024))

# ---- report ----

# The generator's section of the report.
gen_section() {
	echo "## Generator vs systemd-fstab-generator"
	echo
	echo "N VMs of 8 shares each in config.json, beside an fstab of N bind entries and of 8N."
	echo "Both write into a fresh output directory on a tmpfs each run (as into /run/systemd); the"
	echo "script checks that each really wrote its units (2 + 2N drop-ins; N and 8N .mount units)."
	echo "Peak RSS: median of 5 runs."
	if [ "${BENCH_ONLY:-}" = generator ]; then
		echo
		echo "Measured alone (\`BENCH_ONLY=generator bench/run.sh\`) on $(date -u +%Y-%m-%d): $RUNS runs of each"
		echo "command in $ROUNDS rounds, $(nproc) CPUs, kernel $(uname -r), $sysd, $(hyperfine --version)."
		echo "The rest of this file is from the run named at its top."
	fi
	echo
	echo "| VMs | generator | fstab-gen, N entries | ratio | fstab-gen, 8N entries | ratio | peak RSS | fstab-gen peak RSS | ratio |"
	echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	for n in 0 10 100 1000; do
		echo "| $n | $(ms "${GEN[$n,ours]}") ms | $(ms "${GEN[$n,peer]}") ms | $(ratio "${GEN[$n,ours]}" "${GEN[$n,peer]}") | $(ms "${GEN[$n,peer8]}") ms | $(ratio "${GEN[$n,ours]}" "${GEN[$n,peer8]}") | ${GEN[$n,rss]} KiB | ${GEN[$n,prss]} KiB | $(ratio "${GEN[$n,rss]}" "${GEN[$n,prss]}") |"
	done
	echo
	echo "The floor of the output layout: \`bench/gen-floor.c\` (\`gcc -static\`), in the same hyperfine"
	echo "runs, makes the same directories and files with the same system calls (mkdirat, openat +"
	echo "one write + close, linkat) and does nothing else: no config, no text, no loader. The golden"
	echo "trees of tests/generator fix that layout (2 + 2N directories, one file in each), so no"
	echo "generator that writes it can be faster. CPU: mean user + system time of the same runs,"
	echo "which other load on the machine moves less than the wall clock."
	echo
	echo "| VMs | generator | floor | fstab-gen, N | generator / fstab-gen | floor / fstab-gen | CPU: generator | CPU: floor | CPU: fstab-gen | CPU ratio |"
	echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	for n in 0 10 100 1000; do
		echo "| $n | $(ms "${GEN[$n,ours]}") ms | $(ms "${GEN[$n,floor]}") ms | $(ms "${GEN[$n,peer]}") ms | $(ratio "${GEN[$n,ours]}" "${GEN[$n,peer]}") | $(ratio "${GEN[$n,floor]}" "${GEN[$n,peer]}") | $(ms "${GEN[$n,cours]}") ms | $(ms "${GEN[$n,cfloor]}") ms | $(ms "${GEN[$n,cpeer]}") ms | $(ratio "${GEN[$n,cours]}" "${GEN[$n,cpeer]}") |"
	done
	echo
}

out=$here/results.md
if [ "${BENCH_ONLY:-}" = generator ]; then
	# Splice: everything before the section and from the next "## " heading on stays.
	gen_section >"$W/gen.md"
	awk -v new="$W/gen.md" '
	  /^## Generator vs systemd-fstab-generator$/ { while ((getline l < new) > 0) print l; skip = 1; next }
	  skip && /^## / { skip = 0 }
	  !skip { print }' "$out" >"$W/results.md"
	cp "$W/results.md" "$out"
	cat "$W/gen.md"
	echo >&2
	echo "generator section written into $out" >&2
	exit 0
fi
{
	echo "# Benchmarks"
	echo
	echo "Made by \`bench/run.sh\` on $(date -u +%Y-%m-%d). Medians of $RUNS runs of each command (hyperfine,"
	echo "warm cache), taken in $ROUNDS rounds that each run all the commands compared in turn (after 2"
	echo "warm-up runs), so noise falls on all of them; ratio = ours / peer (below 1: ours is faster)."
	echo
	echo "Machine: $(nproc) CPUs, $cpu; kernel $(uname -r); $sysd; work tree on $fs;"
	echo "$(hyperfine --version); $(rustc --version 2>/dev/null || echo rustc)."
	echo
	gen_section
	echo "## Prepare vs systemd-tmpfiles --create and a shell baseline"
	echo
	echo "One VM with S shares (\`<workspaceDir>/bench-vm/sN\`), read from its runner. tmpfiles gets"
	echo "the equivalent \`d\` lines (root 0555), the baseline (\`bench/baseline-prepare.sh\`) reads the"
	echo "runner and runs \`test -d || install -d -m 0555\`. Neither marks placeholders, checks owners"
	echo "or symlinks, takes a lock or writes prepare's runtime record. *Missing*: every run on a"
	echo "fresh tree (hyperfine --prepare wipes it). *Existing*: the tree prepare made."
	echo
	echo "| shares | sources | prepare | tmpfiles | ratio | shell | ratio |"
	echo "|---:|---|---:|---:|---:|---:|---:|"
	for s in 1 10 100; do
		for st in have miss; do
			label=$([ $st = have ] && echo "all existing" || echo "all missing")
			echo "| $s | $label | $(ms "${PREP[$s,$st,ours]}") ms | $(ms "${PREP[$s,$st,tmpf]}") ms | $(ratio "${PREP[$s,$st,ours]}" "${PREP[$s,$st,tmpf]}") | $(ms "${PREP[$s,$st,base]}") ms | $(ratio "${PREP[$s,$st,ours]}" "${PREP[$s,$st,base]}") |"
		done
	done
	echo
	echo "## 100 VMs x 8 shares (issue 2)"
	echo
	echo "All sources existing. prepare runs once per VM (as systemd runs it, one process per start:"
	echo "a loop of 100); tmpfiles runs once over the 800 \`d\` lines; the shell baseline once over"
	echo "the 100 runners. The generator figure is its 100-VM row above."
	echo
	echo "| what | ours | peer | ratio |"
	echo "|---|---:|---:|---:|"
	echo "| 100 prepares (loop) vs tmpfiles, 800 lines | $(ms "$H_OURS") ms ($(ms "$(awk -v v="$H_OURS" 'BEGIN { print v / 100 }')") ms a VM) | $(ms "$H_TMPF") ms | $(ratio "$H_OURS" "$H_TMPF") |"
	echo "| 100 prepares (loop) vs shell baseline, 100 VMs | $(ms "$H_OURS") ms | $(ms "$H_BASE") ms | $(ratio "$H_OURS" "$H_BASE") |"
	echo "| generator, 100 VMs x 8 shares vs fstab-generator, 800 entries | $(ms "${GEN[100,ours]}") ms | $(ms "${GEN[100,peer8]}") ms | $(ratio "${GEN[100,ours]}" "${GEN[100,peer8]}") |"
	echo
	echo "## microvm-link: relink without restart"
	echo
	echo "A host with E VMs that have each started once (E entries in the workspace dir, E runtime"
	echo "records, all looked at for staleness), and \`bench\` (two shares, one nested) relinked from"
	echo "checkout b to checkout a each run (the link to b is made untimed before each run)."
	echo
	echo "| entries | relink |"
	echo "|---:|---:|"
	for e in 10 1000; do
		echo "| $e | $(ms "${LINKT[$e]}") ms |"
	done
	echo
	echo "## System calls of prepare, all sources existing"
	echo
	echo "\`strace -f -c\`, the process's own calls (loader and runtime start included). The minimum"
	echo "it needs is one stat-like call per source plus writing the runtime record (open, write,"
	echo "rename, close): S + 4."
	echo
	echo "| shares | system calls | minimum | ratio |"
	echo "|---:|---:|---:|---:|"
	for s in 1 10 100; do
		echo "| $s | ${SYS[$s]} | $((s + 4)) | $(ratio "${SYS[$s]}" $((s + 4))) |"
	done
	echo
	echo "Per share: $PER_SHARE calls (minimum 1); fixed cost: $FIXED (process start, config,"
	echo "runner directory, lock-free look pass, record). At 100 shares: ${TOP%, }."
	echo
	echo "## Start-up: prepare with 8 existing shares vs a static no-op (issue 10)"
	echo
	echo "One VM, \`vm0\`, with the 8 shares of the 100-VM figure, all existing, its config.json as the"
	echo "module writes it, \`/run\` a tmpfs. The peer is \`bench/noop.c\` (\`int main(void) { return 0; }\`,"
	echo "\`gcc -static -O2\`): the cost of a process start, no work. $NOOP_RUNS runs of each, in $ROUNDS"
	echo "rounds of \`hyperfine -N --warmup 50\` (at nice -20) that each run both. Issue 10 asks for a ratio"
	echo "of at most 2."
	echo
	echo "| what | prepare | static no-op | ratio |"
	echo "|---|---:|---:|---:|"
	echo "| median | $(ms "$NOOP_PREP") ms | $(ms "$NOOP_NOOP") ms | $(ratio "$NOOP_PREP" "$NOOP_NOOP") |"
	echo "| minimum | $(ms "$NOOP_PREP_MIN") ms | $(ms "$NOOP_NOOP_MIN") ms | $(ratio "$NOOP_PREP_MIN" "$NOOP_NOOP_MIN") |"
	echo
	echo "## Release binary sizes"
	echo
	echo "\`[profile.release]\` of Cargo.toml; issue 10's limit is 1.5 MiB (1536 KiB) each."
	echo
	echo "| binary | size | under 1.5 MiB |"
	echo "|---|---:|---|"
	for b in microvm-workspaces-generator microvm-workspaces-prepare microvm-link; do
		echo "| $b | $(size "$BIN/$b") | $([ "$(stat -c %s "$BIN/$b")" -lt "$LIMIT" ] && echo yes || echo NO) |"
	done
} >"$out"

# The section written by hand (history of the figures) is kept below the generated part.
if [ -f "$here/notes.md" ]; then
	{
		echo
		cat "$here/notes.md"
	} >>"$out"
fi

cat "$out"
echo >&2
echo "written to $out" >&2
