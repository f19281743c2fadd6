# shellcheck shell=bash
# Issue 20's proof on the real stack: the pool "agents" of two SSH VMs,
# pool1 and pool2, each with a live share of its own workspace (tag
# workspace = $E2E_WS/.live/<vm>); alice's repo ~/proj and its worktrees
# leased to them with no restart; a full pool; release and re-lease; shell
# --pool; a reboot. 22-pool-bench times shell --pool in fresh worktrees and
# in one that holds its lease against plain ssh (bench/pool-shell.sh runs it
# with 20 rounds). Sourced by run after scenarios-ssh.sh, whose helpers
# (e2e_mvl_alice, e2e_alice_in) these use.

# ---------- helpers -------------------------------------------------------

# e2e_pool_repo WT...: alice's ~/proj, a git repo with one commit on main,
# and a worktree ~/proj-<wt> on a branch <wt> for each WT, its MARKER
# saying which
e2e_pool_repo() {
    e2e_ct_as alice sh -c '
        set -e
        cd ~ && git init -q -b main proj && cd proj
        echo main > MARKER && git add MARKER
        git -c user.name=alice -c user.email=alice@host commit -q -m main
        for w in "$@"; do
            git worktree add -q "../proj-$w" -b "$w"
            echo "worktree $w" > "../proj-$w/MARKER"
        done' sh "$@" || fail "could not make ~alice/proj and its worktrees $*"
}

# e2e_pool_sees VM TEXT: the guest of VM reads TEXT from its workspace's
# MARKER (through /mnt/workspace -> /run/microvm-workspaces/workspace/current);
# polled: the guest's virtiofs caches the old `current` for up to a second
e2e_pool_sees() {
    e2e_poll 20 "guest $1 to read '$2' from /mnt/workspace/MARKER" e2e_pool_marker_is "$1" "$2" >/dev/null
}
e2e_ssh_marker() { e2e_ssh "$1" head -n 1 /mnt/workspace/MARKER 2>/dev/null; }
e2e_pool_marker_is() { [ "$(e2e_ssh_marker "$1")" = "$2" ]; }
e2e_pool_no_marker() { ! e2e_ssh "$1" test -e /mnt/workspace/MARKER; }

# e2e_pool_lease VM: what .leases/VM says: "<owner> <worktree>", or "none"
e2e_pool_lease() {
    e2e_ct sh -c 'l=$1; [ -L "$l" ] && echo "$(stat -c %U "$l") $(readlink "$l")" || echo none' _ "$E2E_WS/.leases/$1"
}

e2e_pool_first_line() { head -n 1 "$E2E_RUN/mvl.out"; }

# e2e_coarse_tick_us: the step of the kernel's coarse clock in microseconds
# (a jiffy: 4000 at HZ=250). A new file's timestamps come from that clock,
# so they read up to one tick earlier than the precise clock systemd's
# timestamps come from.
e2e_coarse_tick_us() {
    [ -x "$E2E_RUN/coarse-tick" ] || cc -o "$E2E_RUN/coarse-tick" -x c - <<'EOF' || return 1
#include <stdio.h>
#include <time.h>
int main(void) {
    struct timespec r;
    if (clock_getres(CLOCK_REALTIME_COARSE, &r) != 0) return 1;
    printf("%ld\n", r.tv_sec * 1000000L + (r.tv_nsec + 999) / 1000);
    return 0;
}
EOF
    "$E2E_RUN/coarse-tick"
}

# What a refused link or lease of ~/foreign-wt or ~/proj-wt3 could touch: the workspace dir,
# both worktrees and root's repo. Not the whole of alice's home and /etc, which other programs
# write on their own (a run saw a difference there that was gone a moment later). Nor the
# guests' own probes (lib/guest-init writes them into a live view that changed, and removes
# the root's again: a run caught one between two snapshots).
e2e_pool_refusal_snapshot() {
    e2e_ct sh -c "find $E2E_WS /home/alice/foreign-wt /home/alice/proj-wt3 /srv/e2e -xdev \\( -name .mvw-root-probe -o -name guest-wrote-as-uid1000 \\) -prune -o -printf '%p %u %m %y %s\n' 2>/dev/null | sort"
}

# bob (the rootfs has alice only), the sudo rule for him too, and
# his repo ~bob/bproj with a worktree ~bob/bproj-wt
e2e_pool_bob() {
    # Bob may exist already, without a home and with sh as his shell (17-upgraded-host-link
    # makes him so; e2e_ct_as quotes for bash).
    e2e_ct sh -c 'id bob >/dev/null 2>&1 || useradd -U bob; usermod -s /bin/bash bob && install -d -o bob -g bob -m 0755 /home/bob' || fail "could not add bob"
    e2e_ct sh -c 'echo "bob ALL=(root) NOPASSWD: /usr/bin/microvm-link" > /etc/sudoers.d/microvm-link-bob && chmod 0440 /etc/sudoers.d/microvm-link-bob' ||
        fail "could not give bob the sudo rule"
    local out
    out=$(e2e_ct_as bob sh -c '
        set -e
        cd ~ && rm -rf bproj bproj-wt && git init -q -b main bproj && cd bproj && echo bob > MARKER && git add MARKER
        git -c user.name=bob -c user.email=bob@host commit -q -m main
        git worktree add -q ../bproj-wt -b wt && echo "worktree of bob" > ../bproj-wt/MARKER' 2>&1) ||
        fail "could not make ~bob/bproj and its worktree: $(tr '\n' '|' <<<"$out")"
}

# e2e_bob_mvl DIR ARGS...: microvm-link ARGS as bob in DIR (as e2e_mvl_alice)
e2e_bob_mvl() {
    local dir=$1 rc; shift
    e2e_ct runuser -u bob -- env HOME=/home/bob USER=bob LOGNAME=bob \
        sh -c 'cd "$1" && shift && exec microvm-link "$@"' sh "$dir" "$@" > "$E2E_RUN/mvl.out" 2> "$E2E_RUN/mvl.err"; rc=$?
    printf '$ (bob in %s) microvm-link%s\n' "$dir" "$([ $# = 0 ] || printf ' %q' "$@")"
    sed 's/^/  stdout| /' "$E2E_RUN/mvl.out"
    sed 's/^/  stderr| /' "$E2E_RUN/mvl.err"
    printf '  [exit %s]\n' "$rc"
    return $rc
}

# the pool's VMs running on their placeholders, their SSH answering
e2e_pool_start() {
    local vm out
    for vm in "$@"; do
        out=$(e2e_ct systemctl start "microvm@$vm.service" 2>&1) || fail "systemctl start microvm@$vm failed: $out"
    done
    for vm in "$@"; do
        e2e_wait_probed "$vm" 1 120 || fail "guest $vm did not report its probes within 120 s"
        out=$(e2e_ssh_wait "$vm") || fail "$vm: $out"
    done
}

# ---------- 21: worktrees leased to a pool of two running VMs -------------

s_pool_worktrees() {
    local ids1 ids2 b1 b2 out rc snap
    e2e_pool_repo wt1 wt2 wt3
    e2e_ct install -d -o alice -g alice -m 0700 /run/user/1000 || fail "could not make alice's runtime dir"
    step "pool1 and pool2 start on their placeholders"
    e2e_pool_start pool1 pool2
    e2e_expect_guest pool1 workspace live "/mnt/workspace -> /run/microvm-workspaces/workspace/current"
    ids1=$(e2e_vm_ids pool1); b1=$(e2e_boot_count pool1)
    ids2=$(e2e_vm_ids pool2); b2=$(e2e_boot_count pool2)
    echo "pool1: InvocationID MainPID virtiofsd-InvocationID = $ids1"
    echo "pool2: InvocationID MainPID virtiofsd-InvocationID = $ids2"

    step "alice in ~/proj-wt1: microvm-link --pool agents leases pool1, which sees the worktree at once (no restart)"
    e2e_mvl_alice /home/alice/proj-wt1 --pool agents || fail "microvm-link --pool agents in ~/proj-wt1 exited $?: $(e2e_mvl_all | tr '\n' '|')"
    [ "$(e2e_pool_first_line)" = "leased pool1 from pool agents for /home/alice/proj-wt1" ] ||
        fail "the first line is '$(e2e_pool_first_line)', expected the lease of pool1"
    grep -qx 'pool1 sees it now: live shares workspace; not restarted' "$E2E_RUN/mvl.out" ||
        fail "microvm-link did not say pool1 sees it without a restart: $(e2e_mvl_all | tr '\n' '|')"
    e2e_pool_sees pool1 "worktree wt1" || fail "pool1's guest does not read ~/proj-wt1's MARKER: '$(e2e_ssh_marker pool1)'"
    [ "$(e2e_pool_lease pool1)" = "alice /home/alice/proj-wt1" ] || fail ".leases/pool1 is '$(e2e_pool_lease pool1)'"
    e2e_expect_same_vm pool1 "$ids1" "$b1"

    step "alice in ~/proj-wt2: pool2"
    e2e_mvl_alice /home/alice/proj-wt2 --pool agents || fail "microvm-link --pool agents in ~/proj-wt2 exited $?: $(e2e_mvl_all | tr '\n' '|')"
    [ "$(e2e_pool_first_line)" = "leased pool2 from pool agents for /home/alice/proj-wt2" ] ||
        fail "the first line is '$(e2e_pool_first_line)', expected the lease of pool2"
    e2e_pool_sees pool2 "worktree wt2" || fail "pool2's guest does not read ~/proj-wt2's MARKER: '$(e2e_ssh_marker pool2)'"
    e2e_expect_same_vm pool2 "$ids2" "$b2"
    e2e_pool_sees pool1 "worktree wt1" || fail "pool1 lost ~/proj-wt1"

    step "git in each guest: a commit on its worktree's branch; microvm-link fetch brings both into the main repo"
    for vm in pool1 pool2; do
        out=$(e2e_ssh "$vm" "cd /mnt/workspace && git branch --show-current && echo $vm >> MARKER && git -c user.name=guest -c user.email=g@vm commit -q -am commit-in-$vm && git log -1 --format=%s" 2>&1) ||
            fail "git in $vm's guest failed: $out"
        echo "$vm: $(tr '\n' ' ' <<<"$out")"
        [ "$(tail -n 1 <<<"$out")" = "commit-in-$vm" ] || fail "git in $vm's guest: $out"
    done
    for wt in wt1 wt2; do
        out=$(e2e_alice_in "/home/alice/proj-$wt" microvm-link fetch 2>&1) || fail "microvm-link fetch in ~/proj-$wt failed: $out"
        echo "fetch in ~/proj-$wt: $out"
    done
    [ "$(e2e_ct_as alice git -C /home/alice/proj log -1 --format=%s pool1/wt1)" = commit-in-pool1 ] ||
        fail "pool1/wt1 in ~/proj is not the guest's commit: $(e2e_ct_as alice git -C /home/alice/proj branch -a 2>&1 | tr '\n' ' ')"
    [ "$(e2e_ct_as alice git -C /home/alice/proj log -1 --format=%s pool2/wt2)" = commit-in-pool2 ] ||
        fail "pool2/wt2 in ~/proj is not the guest's commit"
    [ "$(e2e_ct_as alice git -C /home/alice/proj log -1 --format=%s wt1)" = main ] || fail "the host's wt1 moved"
    out=$(e2e_ct_as alice git -C /home/alice/proj worktree list --porcelain) || fail "git worktree list failed"
    if grep -q prunable <<<"$out"; then fail "a worktree is prunable on the host: $out"; fi

    step "~/proj-wt1 again: its own lease, nothing new"
    e2e_mvl_alice /home/alice/proj-wt1 --pool agents || fail "the second --pool in ~/proj-wt1 exited $?"
    e2e_pool_first_line | grep -q '^pool1 is leased for /home/alice/proj-wt1 already (pool agents, since ' ||
        fail "the second --pool in ~/proj-wt1 said '$(e2e_pool_first_line)'"
    ! grep -q '^linked ' "$E2E_RUN/mvl.out" || fail "the second --pool linked again"

    step "~/proj-wt3: the pool is full, one line naming both leases; nothing changes"
    snap=$(e2e_ws_snapshot)
    e2e_mvl_alice /home/alice/proj-wt3 --pool agents; rc=$?
    [ $rc = 1 ] || fail "--pool in ~/proj-wt3 exited $rc, expected 1"
    [ "$(cat "$E2E_RUN/mvl.err")" = "microvm-link: pool agents is full (2 leased: pool1 by alice for /home/alice/proj-wt1, pool2 by alice for /home/alice/proj-wt2)" ] ||
        fail "the refusal is '$(tr '\n' '|' < "$E2E_RUN/mvl.err")'"
    [ "$(e2e_ws_snapshot)" = "$snap" ] || fail "the refused lease changed something: $(diff <(echo "$snap") <(e2e_ws_snapshot) | head -n 5 | tr '\n' '|')"

    step "status: the pool and its leases"
    out=$(e2e_status_json | e2e_jq -c '[.pools[] | .pool as $p | .vms[] | [$p, .vm, .lease.user, .lease.worktree]]') || fail "status --json failed"
    echo "$out"
    [ "$out" = '[["agents","pool1","alice","/home/alice/proj-wt1"],["agents","pool2","alice","/home/alice/proj-wt2"]]' ] ||
        fail "status --json pools: $out"
    out=$(e2e_ct_as alice microvm-link status) || fail "microvm-link status as alice failed"
    echo "$out" | sed -n '/^POOL/,$p'
    grep -q '^agents  pool1  alice for /home/alice/proj-wt1 since ' <<<"$out" || fail "the status table has no row for pool1's lease"

    step "shell --pool in ~/proj-wt2: into pool2, in the worktree's live view"
    e2e_mvl_alice /home/alice/proj-wt2 shell --pool agents -- sh -c 'pwd; head -n 1 MARKER' || fail "shell --pool exited $?: $(e2e_mvl_all | tr '\n' '|')"
    [ "$(tr '\n' '|' < "$E2E_RUN/mvl.out")" = "/run/microvm-workspaces/workspace/current|worktree wt2|" ] ||
        fail "shell --pool printed '$(tr '\n' '|' < "$E2E_RUN/mvl.out")'"

    step "release ~/proj-wt1's lease: pool1 shows its placeholder, keeps running; ~/proj-wt3 leases it"
    e2e_mvl_alice /home/alice/proj-wt1 release || fail "release in ~/proj-wt1 exited $?: $(e2e_mvl_all | tr '\n' '|')"
    e2e_pool_first_line | grep -q '^released the lease of pool1 (alice for /home/alice/proj-wt1, since [^)]*)$' ||
        fail "release said '$(e2e_pool_first_line)'"
    [ "$(e2e_pool_lease pool1)" = none ] || fail ".leases/pool1 is still '$(e2e_pool_lease pool1)'"
    e2e_poll 20 "pool1's guest to see its placeholder" e2e_pool_no_marker pool1 >/dev/null ||
        fail "pool1's guest still sees a MARKER after the release"
    e2e_expect_placeholder "$E2E_WS/.live/pool1/current"
    step "a worktree of alice's whose main repo is root's: refused as any foreign repo is, with pool1 free"
    e2e_ct sh -c 'set -e; rm -rf /srv/e2e/rproj /home/alice/foreign-wt; mkdir -p /srv/e2e; cd /srv/e2e && git init -q -b main rproj && cd rproj && echo root > MARKER && git add MARKER && git -c user.name=root -c user.email=r@h commit -q -m root && git worktree add -q /home/alice/foreign-wt -b foreign && chown -R alice:alice /home/alice/foreign-wt' ||
        fail "could not make root's repo and alice's worktree of it"
    snap=$(e2e_pool_refusal_snapshot)
    e2e_mvl_alice /home/alice/foreign-wt vm1 --no-restart; rc=$?
    [ $rc = 1 ] || fail "a plain link of the foreign worktree exited $rc"
    out=$(cat "$E2E_RUN/mvl.err")
    e2e_mvl_alice /home/alice/foreign-wt --pool agents; rc=$?
    [ $rc = 1 ] || fail "--pool in the foreign worktree exited $rc"
    [ "$(grep -c . "$E2E_RUN/mvl.err")" = 1 ] || fail "--pool in the foreign worktree: not one line: $(tr '\n' '|' < "$E2E_RUN/mvl.err")"
    [ "$(cat "$E2E_RUN/mvl.err")" = "$out" ] || fail "--pool's refusal '$(cat "$E2E_RUN/mvl.err")' is not link's '$out'"
    [ "$(e2e_pool_refusal_snapshot)" = "$snap" ] || fail "the refused lease changed something: $(diff <(echo "$snap") <(e2e_pool_refusal_snapshot) | tr '\n' '|')"
    e2e_ct rm -rf /home/alice/foreign-wt /srv/e2e/rproj
    step "a pool VM changes hands only through leases: alice's plain link of free pool1 is refused"
    snap=$(e2e_pool_refusal_snapshot)
    e2e_mvl_alice /home/alice/proj-wt3 pool1 --no-restart; rc=$?
    [ $rc = 1 ] || fail "a plain link of pool1 exited $rc"
    [ "$(cat "$E2E_RUN/mvl.err")" = "microvm-link: pool1 is in pool agents: lease it with microvm-link --pool agents and end the lease with microvm-link release (only root links a pool VM by hand)" ] ||
        fail "a plain link of pool1 said '$(tr '\n' '|' < "$E2E_RUN/mvl.err")'"
    [ "$(e2e_pool_refusal_snapshot)" = "$snap" ] || fail "the refused plain link changed something: $(diff <(echo "$snap") <(e2e_pool_refusal_snapshot) | tr '\n' '|')"
    e2e_mvl_alice /home/alice/proj-wt3 --pool agents || fail "--pool in ~/proj-wt3 after the release exited $?"
    [ "$(e2e_pool_first_line)" = "leased pool1 from pool agents for /home/alice/proj-wt3" ] ||
        fail "the re-lease said '$(e2e_pool_first_line)'"
    e2e_pool_sees pool1 "worktree wt3" || fail "pool1's guest does not read ~/proj-wt3's MARKER"
    e2e_expect_same_vm pool1 "$ids1" "$b1"
    e2e_expect_same_vm pool2 "$ids2" "$b2"

    step "bob (a second user) in a worktree of his own repo: may not release alice's lease"
    e2e_pool_bob
    e2e_bob_mvl /home/bob/bproj-wt release pool2; rc=$?
    [ $rc = 1 ] || fail "bob's release of pool2 exited $rc"
    [ "$(cat "$E2E_RUN/mvl.err")" = "microvm-link: pool2 is leased by alice (uid 1000) for /home/alice/proj-wt2; only they or root may release it" ] ||
        fail "bob's release of alice's lease: '$(tr '\n' '|' < "$E2E_RUN/mvl.err")'"
    [ "$(e2e_pool_lease pool2)" = "alice /home/alice/proj-wt2" ] || fail "bob's refused release changed .leases/pool2"
    step "alice releases pool1; bob leases it: its guest ran alice's work, so it is stopped before his lease and link are written, then starts afresh"
    e2e_mvl_alice /home/alice/proj-wt3 release || fail "release in ~/proj-wt3 exited $?"
    e2e_bob_mvl /home/bob/bproj-wt --pool agents || fail "bob's --pool exited $?: $(e2e_mvl_all | tr '\n' '|')"
    # The order, from systemd's and the file system's clocks: pool1 went inactive before bob's
    # lease was written (and the link after it), so nothing of alice's guest saw his worktree.
    # The lease's mtime is from the coarse clock, up to one tick before the write itself (a CI
    # run saw it 3.1 ms before the stop at HZ=250), so the write is later than the stop unless
    # the stop is a whole tick after the mtime; the old stop-after-link order was 75 ms late.
    stopped=$(e2e_ct sh -c 'date -d "$(systemctl show -P InactiveEnterTimestamp --timestamp=us+utc microvm@pool1.service)" +%s%6N')
    leased=$(e2e_ct stat -c %.6Y "$E2E_WS/.leases/pool1" | tr -d .)
    tick=$(e2e_coarse_tick_us) || fail "cannot read the coarse clock's step"
    [ -n "$stopped" ] && [ -n "$leased" ] && [ "$stopped" -lt "$((leased + tick))" ] ||
        fail "pool1 went inactive at $stopped, not before bob's lease was written at $leased (to within the file system clock's tick of $tick us)"
    echo "pool1 went inactive $((leased - stopped)) us before the lease's mtime (tick $tick us)"
    [ "$(e2e_pool_first_line)" = "leased pool1 from pool agents for /home/bob/bproj-wt" ] || fail "bob's lease said '$(e2e_pool_first_line)'"
    grep -qx "pool1 ran alice's work since its start: stopped before the link and started afresh, so that nothing of it meets this worktree" "$E2E_RUN/mvl.out" ||
        fail "bob's lease did not say why pool1 restarts: $(e2e_mvl_all | tr '\n' '|')"
    grep -q '^restarted microvm@pool1.service: active after ' "$E2E_RUN/mvl.out" || fail "bob's lease did not restart pool1"
    [ "$(e2e_boot_count pool1)" -gt "$b1" ] || fail "pool1's guest did not boot again for bob"
    e2e_pool_sees pool1 "worktree of bob" || fail "pool1's guest does not read bob's worktree: '$(e2e_ssh_marker pool1)'"
    e2e_expect_same_vm pool2 "$ids2" "$b2"

    step "a reboot of the container: the leases stay; a lease call starts the VM"
    e2e_ct_poweroff
    e2e_ct_boot
    [ "$(e2e_pool_lease pool1)" = "bob /home/bob/bproj-wt" ] || fail "after the reboot .leases/pool1 is '$(e2e_pool_lease pool1)'"
    [ "$(e2e_pool_lease pool2)" = "alice /home/alice/proj-wt2" ] || fail "after the reboot .leases/pool2 is '$(e2e_pool_lease pool2)'"
    [ "$(e2e_unit_state microvm@pool2.service)" = inactive ] || fail "pool2 runs after the reboot"
    e2e_mvl_alice /home/alice/proj-wt2 --pool agents || fail "--pool in ~/proj-wt2 after the reboot exited $?: $(e2e_mvl_all | tr '\n' '|')"
    e2e_pool_first_line | grep -q '^pool2 is leased for /home/alice/proj-wt2 already ' || fail "after the reboot --pool said '$(e2e_pool_first_line)'"
    grep -q '^restarted microvm@pool2.service: active after ' "$E2E_RUN/mvl.out" || fail "--pool did not start pool2: $(e2e_mvl_all | tr '\n' '|')"
    grep -q '^ssh pool2 (127.0.0.1:2204) answered after ' "$E2E_RUN/mvl.out" || fail "--pool did not wait for pool2's SSH: $(e2e_mvl_all | tr '\n' '|')"
    e2e_pool_sees pool2 "worktree wt2" || fail "pool2's guest does not read ~/proj-wt2's MARKER after the reboot"
    [ "$(e2e_unit_state microvm@pool1.service)" = inactive ] || fail "pool1 was started too"
}

# ---------- 22: the bench --------------------------------------------------

# ms between now and the end of CMD (as alice in DIR); its stdout to
# $E2E_RUN/bench.out; empty when CMD failed
e2e_pool_time() {
    local dir=$1; shift
    e2e_alice_in "$dir" bash -c 't=$EPOCHREALTIME; "$@" > /tmp/bench.out || exit; echo "$t $EPOCHREALTIME" | awk "{ printf \"%d\\n\", (\$2 - \$1) * 1000 }"' _ "$@"
}

# E2E_POOL_BENCH_RUNS (3; bench/pool-shell.sh: 20) rounds on the running
# pool1, each: plain `ssh pool1 true`; `microvm-link shell --pool agents --
# cat ID` in a fresh worktree with alice's shared connection to pool1 open
# and, in another fresh worktree, closed first (what the first shell of a
# VM's start pays); the same in the worktree that holds its lease; and the
# lease alone (`microvm-link --pool agents`, through sudo) in a third. Each
# shell must print its own worktree's ID: the timing ends when the command
# ran in the new worktree. Leases are released between rounds (untimed).
s_pool_bench() {
    local n=${E2E_POOL_BENCH_RUNS:-3} i ids b plain=() fresh=() cold=() held=() lease=() view=() stale=0 wt sock t got ino
    [[ $n =~ ^[1-9][0-9]*$ ]] || fail "E2E_POOL_BENCH_RUNS must be a positive number, not '$n'"
    e2e_pool_repo
    for i in $(seq 1 "$n"); do
        e2e_ct_as alice sh -c 'cd ~/proj && for w in "$@"; do git worktree add -q "../proj-$w" -b "$w" && echo "$w" > "../proj-$w/ID"; done' sh "f$i" "c$i" "l$i" ||
            fail "could not make worktrees f$i c$i l$i"
    done
    e2e_ct install -d -o alice -g alice -m 0700 /run/user/1000 || fail "could not make alice's runtime dir"
    e2e_pool_start pool1
    ids=$(e2e_vm_ids pool1); b=$(e2e_boot_count pool1)
    step "warm-up: a shell in ~/proj (its lease opens alice's shared connection), released"
    e2e_mvl_alice /home/alice/proj shell --pool agents -- true || fail "the warm-up shell exited $?: $(e2e_mvl_all | tr '\n' '|')"
    e2e_mvl_alice /home/alice/proj release > /dev/null || fail "the warm-up release failed"
    sock=$(e2e_ct sh -c 'ls -t /run/user/1000/microvm-workspaces/ | head -n 1')
    [ -n "$sock" ] || fail "no shared connection in alice's runtime dir"
    step "wait until pool1's start is over 60 s ago (a VM past its boot: a shell that serves already probes nothing)"
    e2e_poll 90 "pool1's start more than 61 s ago" e2e_ct sh -c '[ $(( $(date +%s) - $(stat -c %Y /run/microvm-workspaces/pool1.json) )) -gt 61 ]' >/dev/null ||
        fail "pool1's /run record did not age"
    step "$n rounds: plain ssh; shell --pool in a fresh worktree (shared connection open, then closed); in the worktree holding its lease"
    for i in $(seq 1 "$n"); do
        t=$(e2e_pool_time /home/alice ssh pool1 true) && [ -n "$t" ] || fail "round $i: ssh pool1 true failed"
        plain+=("$t")
        for wt in "f$i" "c$i"; do
            [ "$wt" = "c$i" ] && e2e_alice_in /home/alice ssh -o ControlPath="/run/user/1000/microvm-workspaces/$sock" -O exit pool1 >/dev/null 2>&1
            t=$(e2e_pool_time "/home/alice/proj-$wt" microvm-link shell --pool agents -- cat ID) && [ -n "$t" ] ||
                fail "round $i: shell --pool in ~/proj-$wt failed"
            got=$(e2e_ct cat /tmp/bench.out)
            [ "$got" = "$wt" ] || { echo "round $i: ~/proj-$wt's shell read '$got' (the guest's cached view of current)"; stale=$((stale + 1)); }
            if [ "$wt" = "f$i" ]; then fresh+=("$t"); else cold+=("$t"); fi
            if [ "$wt" = "f$i" ]; then
                t=$(e2e_pool_time "/home/alice/proj-$wt" microvm-link shell --pool agents -- cat ID) && [ -n "$t" ] ||
                    fail "round $i: shell --pool again in ~/proj-$wt failed"
                held+=("$t")
            fi
            e2e_mvl_alice "/home/alice/proj-$wt" release > /dev/null || fail "round $i: release in ~/proj-$wt failed"
        done
        t=$(e2e_pool_time "/home/alice/proj-l$i" microvm-link --pool agents) && [ -n "$t" ] ||
            fail "round $i: microvm-link --pool in ~/proj-l$i failed"
        lease+=("$t")
        # then, through the shared connection, how long until the guest's view shows it
        ino=$(e2e_stat %i "/home/alice/proj-l$i")
        t=$(e2e_pool_time /home/alice ssh -o ControlPath="/run/user/1000/microvm-workspaces/$sock" pool1 \
            "n=0; while [ \"\$(stat -c %i /run/microvm-workspaces/workspace/current/.)\" != $ino ] && [ \$n -lt 300 ]; do sleep 0.01; n=\$((n+1)); done; echo \$n") && [ -n "$t" ] ||
            fail "round $i: the guest's view of ~/proj-l$i did not come"
        view+=("$t")
        e2e_mvl_alice "/home/alice/proj-l$i" release > /dev/null || fail "round $i: release in ~/proj-l$i failed"
    done
    e2e_expect_same_vm pool1 "$ids" "$b"
    echo "plain ssh pool1 true, ms:            ${plain[*]}"
    echo "shell --pool, fresh worktree, ms:    ${fresh[*]}"
    echo "  ... shared connection closed, ms:  ${cold[*]}"
    echo "shell --pool, lease held, ms:        ${held[*]}"
    echo "microvm-link --pool alone, ms:       ${lease[*]}"
    echo "then until the guest's view shows it (an ssh through the shared connection included), ms: ${view[*]}"
    echo "shells that ran in the previous view: $stale of $((2 * n))"
    [ "$stale" = 0 ] || fail "$stale shells of fresh worktrees ran before the guest saw their worktree"
    # milliseconds (e2e_timing says "s": these are ms)
    e2e_timing pool-bench-plain-ssh-median-ms "$(printf '%s\n' "${plain[@]}" | e2e_median)"
    e2e_timing pool-bench-fresh-median-ms "$(printf '%s\n' "${fresh[@]}" | e2e_median)"
    e2e_timing pool-bench-fresh-no-master-median-ms "$(printf '%s\n' "${cold[@]}" | e2e_median)"
    e2e_timing pool-bench-held-median-ms "$(printf '%s\n' "${held[@]}" | e2e_median)"
    e2e_timing pool-bench-lease-alone-median-ms "$(printf '%s\n' "${lease[@]}" | e2e_median)"
    e2e_timing pool-bench-lease-to-view-median-ms "$(printf '%s\n' "${view[@]}" | e2e_median)"
}
