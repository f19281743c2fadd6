#!/usr/bin/env bash
# Nix checks that need no nixpkgs (docs/design.md#testing: these machines cannot fetch it):
#   1. every .nix file of the repository parses (nix-instantiate --parse);
#   2. the module's pure helpers (nixos-module/lib.nix) give, on the hand-made
#      inputs of tests/nix/cases.nix, exactly the JSON of tests/nix/expected/
#      (config.json, the tmpfiles masks, the warnings' conditions); the cases
#      under `failures` must fail with the expected message; the VM test's
#      report filter tolerates a journal without reports (run with bash);
#      among them the guest module's live shares (tags within 36 bytes and
#      unique, live roots, the refusals) and the SSH destination template;
#   3. the README section lists every option the host module
#      (nixos-module/default.nix) and the guest module (guest.nix) declare;
#   4. with cargo: the rustc floor of Cargo.lock is Cargo.toml's
#      rust-version at most, and the README, tests/deps.sh and the module's
#      minNixpkgs agree with it (tests/nix/rust-floor.nix).
# What needs nixpkgs' lib and microvm.nix (the module evaluated beside
# microvm.nix's host module, the generated options table) is in
# tests/nix/eval-with-nixpkgs-lib.sh, run by hand with checkouts of both.
# Prints one line per check and ends with "nix: N passed, M failed"; exits
# non-zero when anything failed. Needs only nix-instantiate (Debian's nix-bin,
# Nix 2.8 or later).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cases=$here/cases.nix

if ! command -v nix-instantiate >/dev/null 2>&1; then
    echo "nix: nix-instantiate not found; install Nix (on Debian: apt-get install nix-bin)" >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Nothing here builds or copies to the store, so evaluate against the dummy
# store: no daemon, no writable /nix, no root. Older Nix without it gets a
# private chroot store in the temporary directory instead.
unset NIX_REMOTE
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-$tmp/cache}
if nix-instantiate --store dummy:// --eval -E null >/dev/null 2>&1; then
    nix=(nix-instantiate --store dummy://)
else
    export NIX_STATE_DIR=$tmp/state NIX_LOG_DIR=$tmp/log
    nix=(nix-instantiate --store "local?root=$tmp/store")
fi

passed=0
failed=0
pass() {
    passed=$((passed + 1))
    printf 'ok   %s\n' "$1"
}
fail() {
    failed=$((failed + 1))
    printf 'FAIL %s\n' "$1"
    if [ -n "${2:-}" ]; then
        printf '%s\n' "$2" | sed 's/^/     /'
    fi
}

# 1. Parse every .nix file (not under target/ or .git/).
parsed=()
while IFS= read -r -d '' file; do
    rel=${file#"$root"/}
    parsed+=("$rel")
    if err=$("${nix[@]}" --parse "$file" 2>&1 >/dev/null); then
        pass "parse $rel"
    else
        fail "parse $rel" "$err"
    fi
done < <(find "$root" \( -name target -o -name .git \) -prune -o -type f -name '*.nix' -print0 | sort -z)

for required in flake.nix nixos-module/default.nix nixos-module/guest.nix nixos-module/lib.nix \
    nixos-module/package.nix nixos-module/test.nix tests/nix/cases.nix; do
    found=no
    for rel in "${parsed[@]}"; do
        if [ "$rel" = "$required" ]; then found=yes; fi
    done
    if [ "$found" = yes ]; then
        pass "present $required"
    else
        fail "present $required" "not found under $root"
    fi
done

# Evaluate Nix text to a JSON string.
eval_json() {
    "${nix[@]}" --eval --strict --json "$@"
}

# Case names are plain words; the list comes out as one JSON string.
names() {
    local out
    out=$(eval_json -E "builtins.concatStringsSep \" \" (builtins.attrNames (import $cases).$1)")
    out=${out#\"}
    printf '%s\n' "${out%\"}"
}

# 2a. Values: compare with expected/<name>.json as JSON values (key order and
# white space do not matter; everything else does).
read -r -a value_cases <<<"$(names values)"
if [ "${#value_cases[@]}" -eq 0 ]; then
    fail "eval cases" "no cases in $cases"
fi
for name in "${value_cases[@]}"; do
    expected_file=$here/expected/$name.json
    if [ ! -f "$expected_file" ]; then
        fail "eval $name" "missing $expected_file"
        continue
    fi
    if ! actual=$(eval_json --argstr name "$name" -E "{ name }: (import $cases).values.\${name}" 2>&1); then
        fail "eval $name" "$actual"
        continue
    fi
    if ! same=$("${nix[@]}" --eval --strict \
        --argstr actual "$actual" --argstr expected "$(cat "$expected_file")" \
        -E '{ actual, expected }: builtins.fromJSON actual == builtins.fromJSON expected' 2>&1); then
        fail "eval $name" "cannot compare: $same"
    elif [ "$same" = true ]; then
        pass "eval $name"
    else
        fail "eval $name" "expected: $(tr -s ' \n' ' ' <"$expected_file")
actual:   $actual"
    fi
done

# Every expected file belongs to a case.
for expected_file in "$here"/expected/*.json; do
    name=$(basename "$expected_file" .json)
    known=no
    for n in "${value_cases[@]}"; do
        if [ "$n" = "$name" ]; then known=yes; fi
    done
    if [ "$known" = no ]; then
        fail "expected/$name.json" "no case values.$name in $cases"
    fi
done

# 2b. Failures: evaluation must fail, with the expected message.
read -r -a failure_cases <<<"$(names failures)"
for name in "${failure_cases[@]}"; do
    # (plain text: no quotes or backslashes to unescape)
    message=$(eval_json --argstr name "$name" -E "{ name }: (import $cases).failures.\${name}.message")
    message=${message#\"}
    message=${message%\"}
    if out=$(eval_json --argstr name "$name" -E "{ name }: (import $cases).failures.\${name}.expr" 2>&1); then
        fail "fails $name" "evaluated to $out"
    elif [[ "$out" != *"$message"* ]]; then
        fail "fails $name" "error without \"$message\": $out"
    else
        pass "fails $name"
    fi
done

# 2c. The VM test's report filter (lib.nix guestReportFilter), run the way
# the NixOS test driver runs commands: bash with `set -euo pipefail`. It must
# succeed with no output before the guest's first report, pick the last 20
# report lines out of console noise, and still fail when grep itself fails.
filter=$(eval_json -E "(import $root/nixos-module/lib.nix).guestReportFilter")
filter=${filter#\"}
filter=${filter%\"}
case $filter in
*\\*) fail "report filter" "has a JSON escape this script does not decode: $filter" ;;
esac
run_filter() { # input text; prints output, returns the pipeline's status
    printf '%s' "$1" | bash -c "set -euo pipefail; cat | $filter"
}
if out=$(run_filter "") && [ -z "$out" ]; then
    pass "report filter: empty journal"
else
    fail "report filter: empty journal" "status $?, output: $out (filter: $filter)"
fi
noise=$'[    1.2] virtio_blk virtio1: [vda] 2097152 512-byte logical blocks\nMVW vm=vm1 boot=ab seq=1 /w=[a]:ok\n-- No entries --\n'
if out=$(run_filter "$noise") && [ -z "$out" ]; then
    pass "report filter: console noise and a cut-off report only"
else
    fail "report filter: console noise and a cut-off report only" "status $?, output: $out"
fi
many=
for i in $(seq 1 25); do
    many+="[   $i.0] kernel: noise"$'\n'"<<<MVW vm=vm1 boot=ab seq=$i /w=[a,b]:ok END"$'\n'
done
want=
for i in $(seq 6 25); do want+="MVW vm=vm1 boot=ab seq=$i /w=[a,b]:ok END"$'\n'; done
if out=$(run_filter "$many") && [ "$out"$'\n' = "$want" ]; then
    pass "report filter: the last 20 reports"
else
    fail "report filter: the last 20 reports" "status $?, output: $out"
fi
mkdir -p "$tmp/badgrep"
printf '#!/bin/sh\necho "grep: broken" >&2\nexit 2\n' >"$tmp/badgrep/grep"
chmod +x "$tmp/badgrep/grep"
if PATH=$tmp/badgrep:$PATH run_filter "$many" >/dev/null 2>&1; then
    fail "report filter: a failing grep still fails" "status 0 with a grep that exits 2"
else
    pass "report filter: a failing grep still fails"
fi

# 2d. The VM test's Python (nixos-module/test.nix testScript) compiles. The
# NixOS driver also type-checks and lints it (checks.vm-test-driver), which
# needs nixpkgs; this catches syntax errors where only python3 is at hand.
if command -v python3 >/dev/null 2>&1; then
    if script=$(eval_json -E "(import $root/nixos-module/test.nix { self = { }; microvm = { }; }).testScript" 2>&1) &&
        out=$(printf '%s' "$script" | python3 -c '
import json, sys
compile(json.load(sys.stdin), "testScript", "exec")' 2>&1); then
        pass "VM test script compiles"
    else
        fail "VM test script compiles" "${out:-$script}"
    fi
else
    echo "skip VM test script compiles (no python3)"
fi

# 2e2. The guest's boot check of its live symlinks (lib.nix liveLinkCheck),
# run with bash on a tree here: a directory in the way is reported (exit 1)
# and kept with its contents, a symlink already made passes.
mkdir -p "$tmp/guest/in-the-way/sub" "$tmp/guest/run"
echo data >"$tmp/guest/in-the-way/sub/file"
ln -s /run/microvm-workspaces/made/current "$tmp/guest/made"
check=$(eval_json --argstr g "$tmp/guest" -E "{ g }: (import $root/nixos-module/lib.nix).liveLinkCheck {
  way = { entry = \"e\"; mountPoint = g + \"/in-the-way\"; };
  made = { entry = \"e\"; mountPoint = g + \"/made\"; };
}" | python3 -c 'import json,sys; print(json.load(sys.stdin))' 2>&1) || true
if out=$(bash -c "$check" 2>&1); then
    fail "live link check: a directory in the way" "exit 0: $out"
elif [[ "$out" == *"in-the-way is in the way of live share way"* ]] && [[ "$out" != *"made is in"* ]] &&
    [ "$(cat "$tmp/guest/in-the-way/sub/file")" = data ]; then
    pass "live link check: a directory in the way is reported and kept"
else
    fail "live link check: a directory in the way" "$out"
fi

# 2f. The modules say they are NixOS modules (`_class = "nixos"`), and the
# flake's per-system outputs cover x86_64-linux and aarch64-linux: flake.nix's
# outputs evaluated with a stub nixpkgs that has nothing but lib.genAttrs
# (only the names of each output's systems are forced).
for module in nixos-module/default.nix nixos-module/guest.nix; do
    if grep -qE '^  _class = "nixos";$' "$root/$module"; then
        pass "$module: _class = \"nixos\""
    else
        fail "$module: _class = \"nixos\"" "no top-level _class = \"nixos\"; line"
    fi
done
want='{"checks":["aarch64-linux","x86_64-linux"],"devShells":["aarch64-linux","x86_64-linux"],"formatter":["aarch64-linux","x86_64-linux"],"packages":["aarch64-linux","x86_64-linux"]}'
if systems=$(eval_json -E "let
  o = (import $root/flake.nix).outputs {
    self = o;
    nixpkgs = {
      lib.genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
      legacyPackages = { };
    };
    microvm = { };
  };
in builtins.mapAttrs (_: builtins.attrNames) { inherit (o) packages checks devShells formatter; }" 2>&1) &&
    [ "$systems" = "$want" ]; then
    pass "flake outputs for x86_64-linux and aarch64-linux"
else
    fail "flake outputs for x86_64-linux and aarch64-linux" "want $want
got  $systems"
fi

# 2e. One package: the module builds the flake's packages.default, so
# package.nix bakes no sudo path and the module overrides nothing but
# systemd (tests/nix/eval-with-nixpkgs-lib.sh checks the override itself).
if grep -nE 'sudoPath|MICROVM_WORKSPACES_SUDO' "$root/nixos-module/package.nix" "$root/nixos-module/default.nix" >"$tmp/sudo.txt"; then
    fail "one package: no baked sudo path" "$(cat "$tmp/sudo.txt")"
else
    pass "one package: no baked sudo path"
fi

# 2g. The package compiles in util-linux's unshare (src/fs/idmap.rs reads
# MICROVM_WORKSPACES_UNSHARE with option_env!), so the idmapped mounts never
# run an unshare found on root's PATH. tests/nix/eval-with-nixpkgs-lib.sh
# checks the value with nixpkgs' lib.
if grep -qE '^    MICROVM_WORKSPACES_UNSHARE = lib\.getExe'"'"' util-linux "unshare";$' "$root/nixos-module/package.nix"; then
    pass "package: util-linux's unshare compiled in"
else
    fail "package: util-linux's unshare compiled in" "nixos-module/package.nix sets no env.MICROVM_WORKSPACES_UNSHARE = lib.getExe' util-linux \"unshare\""
fi

# 3. The options each module declares are exactly these, and the README
# section (docs/nixos.md, or README.md once merged) names each of them.
doc=$root/docs/nixos.md
if [ ! -f "$doc" ]; then doc=$root/README.md; fi
check_options() { # module prefix option...
    local module=$root/$1 prefix=$2 declared option
    shift 2
    declared=$(grep -cE '^ +[A-Za-z]+ = lib\.mk(Enable)?Option\b' "$module" || true)
    if [ "$declared" -eq "$#" ]; then
        pass "${module#"$root"/} declares $# options"
    else
        fail "${module#"$root"/} declares $# options" "found $declared mkOption/mkEnableOption declarations"
    fi
    for option in "$@"; do
        if ! grep -qE "^ +${option##*.} = lib\.mk(Enable)?Option\b" "$module"; then
            fail "option $prefix.$option" "not declared in ${module#"$root"/}"
        elif grep -qF "\`$prefix.$option\`" "$doc" 2>/dev/null; then
            pass "documented $prefix.$option"
        else
            fail "documented $prefix.$option" "\`$prefix.$option\` is not in ${doc#"$root"/}"
        fi
    done
}
check_options nixos-module/default.nix services.microvm-workspaces \
    enable package workspaceDir placeholder.user placeholder.group placeholder.mode \
    companions ssh.destination ssh.perVm linkGroup pools \
    vms 'vms.<name>.guestUid' 'vms.<name>.guestGid' 'vms.<name>.idmap' 'vms.<name>.git'
check_options nixos-module/guest.nix services.microvm-workspaces.guest \
    workspaceDir shares 'shares.<name>.entry' 'shares.<name>.path' \
    'shares.<name>.mountPoint' 'shares.<name>.readOnly'

# 4. The rustc floor: the highest rust-version over what the crate builds
# from Cargo.lock (tests/nix/rust-floor.nix) is at most Cargo.toml's
# rust-version, and README.md and tests/deps.sh name that version. Needs
# cargo (CI has it; the flake's nix-lib check, in the build sandbox, does
# not and skips it). Offline first; cargo's registry cache holds what a
# build fetched.
if command -v cargo >/dev/null 2>&1 && [ -f "$root/Cargo.lock" ]; then
    metadata_files=()
    meta_err=
    for target in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu; do
        out=$tmp/metadata-$target.json
        if (cd "$root" && { cargo metadata --format-version 1 --locked --offline --filter-platform "$target" ||
            cargo metadata --format-version 1 --locked --filter-platform "$target"; }) >"$out" 2>"$tmp/metadata.err"; then
            metadata_files+=("\"$out\"")
        else
            meta_err+="$target: $(tail -n 3 "$tmp/metadata.err")"$'\n'
        fi
    done
    if [ -n "$meta_err" ]; then
        fail "rustc floor" "cargo metadata failed: $meta_err"
    elif floor=$("${nix[@]}" --eval --strict --json --argstr root "$root" \
        -E "{ root }: import $here/rust-floor.nix { metadata = [ ${metadata_files[*]} ]; inherit root; }" 2>&1); then
        name=$(printf '%s' "$floor" | sed -e 's/.*"floor":"\([^"]*\)".*/\1/')
        stated=$(printf '%s' "$floor" | sed -e 's/.*"stated":"\([^"]*\)".*/\1/')
        if printf '%s' "$floor" | grep -q '"problems":\[\]'; then
            pass "rustc floor $name (Cargo.lock) <= rust-version $stated, named in README.md and tests/deps.sh"
        else
            fail "rustc floor" "$floor"
        fi
    else
        fail "rustc floor" "$floor"
    fi
else
    echo "skip rustc floor (no cargo or Cargo.lock)"
fi

echo "nix: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
