#!/usr/bin/env bash
# Evaluates the module beside microvm.nix's real host module with nixpkgs'
# real lib, where nixpkgs itself (and so NixOS) is not available: NixOS's
# options are stubbed (tests/nix/eval-with-nixpkgs-lib.nix). Checks the
# hosts of tests/nix/host.nix (assertions, config.json, masked tmpfiles
# lines, the sudo rule, the warnings), the guest module (nixosModules.guest)
# beside microvm.nix's real guest module (live shares, their mounts and
# symlinks, the refusals), and that README.md's options tables are the ones
# generated from the two modules.
#
# Not part of tests/nix/check.sh, which needs nothing but nix-instantiate:
# this one needs two checkouts, given by path (it fetches nothing):
#   NIXPKGS_LIB   nixpkgs, or nixpkgs.lib (github:nix-community/nixpkgs.lib):
#                 the directory holding lib/
#   MICROVM_NIX   microvm.nix (github:microvm-nix/microvm.nix)
# Usage: NIXPKGS_LIB=... MICROVM_NIX=... bash tests/nix/eval-with-nixpkgs-lib.sh [--table|--guest-table]
#   --table        print the host module's generated options table and exit
#   --guest-table  the same for the guest module (nixosModules.guest)
# Ends with "nixpkgs-lib-eval: N passed, M failed"; exit 1 when anything
# failed, 2 when a checkout is missing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

for var in NIXPKGS_LIB MICROVM_NIX; do
    if [ -z "${!var:-}" ]; then
        echo "eval-with-nixpkgs-lib: set $var (see the header of $0)" >&2
        exit 2
    fi
done
if [ ! -f "$NIXPKGS_LIB/lib/default.nix" ]; then
    echo "eval-with-nixpkgs-lib: $NIXPKGS_LIB/lib/default.nix not found" >&2
    exit 2
fi
if [ ! -f "$MICROVM_NIX/nixos-modules/host/default.nix" ]; then
    echo "eval-with-nixpkgs-lib: $MICROVM_NIX/nixos-modules/host/default.nix not found" >&2
    exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Nothing is built or copied to the store (the checkouts are passed as
# strings): the dummy store will do.
unset NIX_REMOTE
export XDG_CACHE_HOME=$tmp/cache
nix=(nix-instantiate --store dummy:// --eval --strict)
expr="import $here/eval-with-nixpkgs-lib.nix {
  lib = import $(realpath "$NIXPKGS_LIB")/lib;
  microvm = \"$(realpath "$MICROVM_NIX")\";
  readme = $root/README.md;
}"

case ${1:-} in
--table | --guest-table)
    table=optionsTable
    if [ "$1" = --guest-table ]; then table=guestOptionsTable; fi
    "${nix[@]}" --json -E "($expr).$table" | python3 -c 'import json,sys; print(json.load(sys.stdin))'
    exit 0
    ;;
esac

echo "nixpkgs lib $(cat "$NIXPKGS_LIB/lib/.version" 2>/dev/null || echo '?'), nix $(nix-instantiate --version | awk '{print $NF}')"
passed=0
failed=0
# One line per check: name, then its problems (none when it passed).
results=$("${nix[@]}" --json -E "builtins.attrNames ($expr).results")
while IFS= read -r name; do
    [ -n "$name" ] || continue
    if out=$("${nix[@]}" --json --argstr name "$name" -E "{ name }: ($expr).results.\${name}" 2>&1); then
        if [ "$out" = "[]" ]; then
            passed=$((passed + 1))
            printf 'ok   %s\n' "$name"
        else
            failed=$((failed + 1))
            printf 'FAIL %s\n' "$name"
            printf '%s\n' "$out" | sed 's/^/     /'
        fi
    else
        failed=$((failed + 1))
        printf 'FAIL %s\n' "$name"
        printf '%s\n' "$out" | tail -n 30 | sed 's/^/     /'
    fi
done < <(printf '%s\n' "$results" | sed -e 's/^\[//' -e 's/\]$//' -e 's/","/"\n"/g' | sed -e 's/^"//' -e 's/"$//')

count=$("${nix[@]}" -E "builtins.length (builtins.attrNames ($expr).results)")
if [ "$((passed + failed))" -ne "$count" ]; then
    failed=$((failed + 1))
    printf 'FAIL %s\n' "ran $((passed + failed - 1)) of $count checks"
fi
echo "nixpkgs-lib-eval: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
