# shellcheck shell=bash
# Sourced by bench scripts. runner ROOT VM SOURCE...: a root holding VM's runner as microvm.nix
# builds it (<stateDir>/<vm>/current -> a store path whose share/microvm/virtiofs/<tag>/source
# files name the sources).
runner() {
	local root=$1 vm=$2
	shift 2
	local store=/nix/store/0000-microvm-$vm
	local i=0
	for src in "$@"; do
		mkdir -p "$root$store/share/microvm/virtiofs/s$i"
		printf '%s\n' "$src" >"$root$store/share/microvm/virtiofs/s$i/source"
		i=$((i + 1))
	done
	mkdir -p "$root/var/lib/microvms/$vm"
	ln -sfn "$store" "$root/var/lib/microvms/$vm/current"
}

# relink_host ROOT E PREPARE: the relink benchmarks' host: E VMs, each with its own entry and
# started once (PREPARE ran: its runtime record), and `bench` (two shares, one nested) with two
# checkouts of a user's, home/u/a/bench and home/u/b/bench (a link refuses a repo of root's).
relink_host() {
	local root=$1 e=$2 prepare=$3 i
	for i in $(seq 0 $((e - 1))); do
		runner "$root" "vm$i" "/var/lib/microvm-workspaces/vm$i"
	done
	runner "$root" bench /var/lib/microvm-workspaces/bench /var/lib/microvm-workspaces/bench/hosts/bench
	mkdir -p "$root/home/u/a/bench" "$root/home/u/b/bench"
	chown -R 1000:1000 "$root/home/u"
	for i in $(seq 0 $((e - 1))); do
		MICROVM_WORKSPACES_ROOT=$root "$prepare" "vm$i"
	done
}
