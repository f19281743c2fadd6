#!/usr/bin/env bash
# The shell baseline for the prepare benchmark: what a few lines of shell in ExecStartPre would
# do. For each VM, read every share source from microvm.nix's runner, exactly as
# microvm-workspaces-prepare does (relative sources against <stateDir>/<vm>), and create what
# is missing with `install -d -m 0555`.
#
# It does much less than prepare: no placeholder mark, no owner rules (nothing is created as a
# repo's owner), no safe path walking (symlinks are followed blindly), no links or mounts, no
# lock, no config file, no runtime record. It is the floor a careful tool is measured against.
#
# usage: baseline-prepare.sh ROOT VM...
set -eu
root=$1
shift
for vm in "$@"; do
	state=/var/lib/microvms/$vm
	current=$(readlink "$root$state/current")
	for f in "$root$current"/share/microvm/virtiofs/*/source; do
		read -r src <"$f"
		case $src in
		/*) path=$root$src ;;
		*) path=$root$state/$src ;;
		esac
		test -d "$path" || install -d -m 0555 "$path"
	done
done
