# shellcheck shell=bash
# Issue 17's proof in the real stack: the guest is not trusted. A real qemu
# guest behind virtiofsd 1.14 (microvm.nix's flags), with git in it, attacks
# the linked repo as its root; the host's repo, its .git and the user's git
# stay the user's. Sourced by run after the other scenario files.

# the repo's state as the host sees it, for before/after comparisons
e2e_repo_state() {
    e2e_ct sh -c 'cd "$1" && sha256sum .git/config && stat -c "%i %U" .git && ls .git/hooks | sort' sh "$1"
}

# ---------- the guest's root is nobody; git stays the host's ---------------

s_guest_contained() {
    local out before after repo=/home/alice/vmssh b att bob_ids
    e2e_vmssh_repo
    e2e_ct rm -rf "$repo/.git"
    e2e_ct_as alice sh -c 'cd ~/vmssh && git init -q -b main && git add -A && git -c user.name=alice -c user.email=a@h commit -q -m host-commit' ||
        fail "could not make ~alice/vmssh a git repo"
    before=$(e2e_repo_state "$repo")
    b=$(e2e_boot_count vmssh)
    step "alice links ~/vmssh (defaults: idmapped, git private) and the VM starts"
    e2e_mvl_alice "$repo" || fail "alice's link failed: $(e2e_mvl_all | tail -n 2 | tr '\n' ' ')"
    e2e_wait_restarted vmssh "$b"
    e2e_ssh_wait vmssh >/dev/null || fail "vmssh gave no SSH banner"
    e2e_ct findmnt -o TARGET,PROPAGATION,OPTIONS -R "$E2E_WS/vmssh" || true

    step "the guest's root attacks the repo: root files, chown, setuid; .git/config, hooks, mv .git"
    out=$(e2e_ssh_root vmssh 'cd /mnt/workspace; echo x > by-root; mkdir dir-by-root; chown 0:0 sub/hello.txt; cp /bin/busybox suid && chmod 4755 suid; mv by-root by-root-renamed; for a in "mknod blk b 8 0" "echo [core] >> .git/config" "echo x > .git/hooks/post-checkout" "mv .git .git-old"; do if sh -c "$a" 2>/dev/null; then echo "ok: $a"; else echo "denied: $a"; fi; done; ls -ln /mnt/workspace' 2>&1) ||
        fail "ssh as the guest's root failed: $out"
    printf '%s\n' "$out"
    if grep '^ok: ' <<<"$out"; then fail "the guest's root could do the above (a device node, or to .git)"; fi
    e2e_ct test ! -e "$repo/blk" || fail "a device node landed in the repo"
    step "the host: what the guest's root made or chowned is nobody's, nothing is root's, no set-uid-root; .git as it was; no mount under the repo"
    e2e_ct ls -ln "$repo"
    out=$(e2e_ct find "$repo" \( -uid 0 -o -gid 0 \) -print) || fail "find failed"
    [ -z "$out" ] || fail "root's files in the repo: $out"
    for f in by-root-renamed dir-by-root suid sub/hello.txt; do
        [ "$(e2e_stat '%u:%g' "$repo/$f")" = 65534:65534 ] || fail "$repo/$f is $(e2e_stat '%u:%g' "$repo/$f"), not nobody's"
    done
    after=$(e2e_repo_state "$repo")
    [ "$before" = "$after" ] || fail ".git changed: before [$before] after [$after]"
    out=$(e2e_ct findmnt -rn -o TARGET | grep "^$repo" || true)
    [ -z "$out" ] || fail "mounts under the repo's own path: $out"

    step "the guest's user commits in its own git dir; the host's branch does not move"
    out=$(e2e_ssh vmssh 'cd /mnt/workspace && ls -ln MARKER && git status --short && echo guest >> MARKER && git -c user.name=guest -c user.email=g@vm commit -q -am guest-commit && git log --format=%s' 2>&1) ||
        fail "git in the guest failed: $out"
    printf '%s\n' "$out"
    grep -q '^guest-commit$' <<<"$out" || fail "the guest's commit is not in its log: $out"
    grep -q ' 1000 *1000 .* MARKER$' <<<"$out" || fail "the guest does not see alice's file as its user's: $out"
    att=$(e2e_ssh vmssh 'cd /mnt/workspace; for a in "echo x >> .git/config" "echo x > .git/hooks/pre-commit" "mv .git .git-old" "rm -rf .git/hooks"; do if sh -c "$a" 2>/dev/null; then echo "ok: $a"; else echo "denied: $a"; fi; done' 2>&1)
    printf '%s\n' "$att"
    if grep '^ok: ' <<<"$att"; then fail "the guest's user could do the above"; fi
    [ "$(e2e_ct_as alice git -C "$repo" log -1 --format=%s main)" = host-commit ] || fail "the host's main moved"
    out=$(e2e_stat '%U:%G' "$repo/MARKER") && [ "$out" = alice:alice ] || fail "the guest's write left MARKER $out"

    step "alice edits .git/config and commits on the host while the VM runs"
    e2e_ct_as alice sh -c "cd $repo && git config user.name alice-host && git -c user.email=a@h commit -q --allow-empty -m host-two" ||
        fail "git config / commit on the host failed while linked"

    step "microvm-link fetch (as alice, no sudo): the guest's commit arrives as vmssh/main"
    out=$(e2e_ct_as alice sh -c "cd $repo && microvm-link fetch" 2>&1) || fail "fetch failed: $out"
    printf '%s\n' "$out"
    [ "$out" = "vmssh: 1 branch new or moved (main), under refs/remotes/vmssh/" ] || fail "fetch said: $out"
    [ "$(e2e_ct_as alice git -C "$repo" log -1 --format=%s vmssh/main)" = guest-commit ] || fail "vmssh/main is not the guest's commit"

    step "root links bob's repo (bob's uid and group are not 1000; the guest's user is 1000:1000, guestGid 1000); the guest user's files are bob's"
    trap e2e_config_restore EXIT
    e2e_config_edit '.vms.vmssh.guestGid = 1000'
    # (17-upgraded-host-link may have made bob already, without a home)
    e2e_ct sh -c "id bob >/dev/null 2>&1 || useradd -U bob; install -d -o bob -g bob -m 0755 /home/bob" || fail "could not add bob"
    bob_ids=$(e2e_ct sh -c 'echo "$(id -u bob):$(id -g bob)"')
    [ "${bob_ids%%:*}" != 1000 ] || fail "bob has the guest's uid 1000: not the case this step is about"
    e2e_ct_as bob sh -c 'mkdir -p ~/work && echo "bob'"'"'s" > ~/work/MARKER' || fail "could not make bob's repo"
    b=$(e2e_boot_count vmssh)
    # root links it (the record is root's; the mapping follows the repo's owner, bob)
    out=$(e2e_ct microvm-link vmssh --repo /home/bob/work --no-wait 2>&1) || fail "linking bob's repo failed: $out"
    e2e_wait_restarted vmssh "$b"
    e2e_ssh_wait vmssh >/dev/null || fail "vmssh gave no SSH banner after bob's link"
    out=$(e2e_ssh vmssh 'echo from-guest > /mnt/workspace/from-guest && ls -ln /mnt/workspace' 2>&1) || fail "the guest user could not write into bob's repo: $out"
    out=$(e2e_stat '%u:%g %U' /home/bob/work/from-guest) && [ "$out" = "$bob_ids bob" ] || fail "the guest's file is $out on the host, not bob's ($bob_ids)"
}

# ---------- where nothing is linked, the guest's root meets sealed directories -

# virtiofsd runs as root, so a placeholder's mode (root 0555) never stopped the
# guest's root: it left set-uid-root binaries in the workspace dir that host
# users could run (docs/security.md#sealed). vmssh's workspace is a placeholder,
# testvm's host share a live root with its current; in each the guest's root
# tries to write, make a set-uid binary, chmod, and lift the seal itself
# (lib/unseal.c, FS_IOC_SETFLAGS through virtiofsd).
s_guest_sealed() {
    local out vm dir found
    cc -static -O2 -o "$E2E_RUN/unseal" "$E2E_HERE/lib/unseal.c" || fail "cannot build lib/unseal.c"
    for vm in vmssh testvm; do
        e2e_start_ok "$vm"
        out=$(e2e_ssh_wait "$vm") || fail "$out"
    done
    for at in vmssh:/mnt/workspace testvm:/run/microvm-workspaces/host testvm:/mnt/host; do
        vm=${at%%:*} dir=${at#*:}
        step "$vm's root in $dir"
        out=$(e2e_ct ssh -l root "$vm" -- "cat > /tmp/unseal && chmod 0755 /tmp/unseal && cd $dir && for a in 'echo x > planted' 'mkdir planted-dir' 'cp /bin/busybox suid' 'chmod 0777 .'; do if sh -c \"\$a\" >/dev/null 2>&1; then echo \"ok: \$a\"; else echo \"denied: \$a\"; fi; done; echo \"unseal: \$(/tmp/unseal .)\"" < "$E2E_RUN/unseal" 2>&1) ||
            fail "ssh as $vm's root failed: $out"
        printf '%s\n' "$out"
        [ "$(grep -c '^denied: ' <<<"$out")" = 4 ] || fail "$vm's root could do this in $dir: $(grep '^ok: ' <<<"$out" | tr '\n' '|')"
        # the program ran and virtiofsd refused it (not a program that failed to start)
        grep -Eq '^unseal: (getflags|setflags): |^unseal: still sealed$' <<<"$out" || fail "$vm's root lifting the seal of $dir: $(grep '^unseal: ' <<<"$out")"
    done
    step "the host: nothing of theirs in the workspace dir; the directories are sealed"
    found=$(e2e_ct find "$E2E_WS" \( -name planted -o -name planted-dir -o -name suid -o -perm -4000 \) -print)
    [ -z "$found" ] || fail "the guests' root left: $found"
    for d in vmssh .live/nixfiles/hosts/microvms/testvm .live/nixfiles/hosts/microvms/testvm/current; do
        # from the host, on the container's tree: the flag is the inode's
        out=$(lsattr -d "$E2E_ROOT$E2E_WS/$d" 2>&1) || fail "lsattr $E2E_WS/$d: $out"
        echo "$out"
        [[ ${out%% *} == *i* ]] || fail "$E2E_WS/$d is not sealed: $out"
    done
    e2e_stop_vms
}

# ---------- issue 18, item 4: a repo's contents fail no other VM's start ----

# alice holds nixfiles, which vm3 shares from (hosts/microvms/vm3). She puts
# a file there. vm3 still starts: its virtiofsd unit's prepare serves a
# placeholder in that unit's own mount namespace; the repo and the host's
# namespace are untouched; the journal names the path and alice; status and
# doctor say so.
s_fallback_placeholder() {
    local out before b
    e2e_repo nixfiles "alice's nixfiles"
    e2e_link_as_alice nixfiles --no-restart || fail "microvm-link as alice failed: $(tail -n 3 "$E2E_RUN/link.out" | tr '\n' ' ')"
    step "alice puts a file where vm3 shares from her repo"
    e2e_ct_as alice sh -c 'rmdir ~/nixfiles/hosts/microvms/vm3 2>/dev/null; mkdir -p ~/nixfiles/hosts/microvms && echo "not a directory" > ~/nixfiles/hosts/microvms/vm3' ||
        fail "could not put the file in place"
    before=$(e2e_ct sh -c 'cd /home/alice/nixfiles && find . -printf "%p %y %U %m\n" | sort')
    step "vm3 starts anyway, with a placeholder for that share"
    b=$(e2e_boot_count vm3)
    if ! out=$(e2e_ct systemctl start microvm@vm3.service 2>&1); then
        e2e_ct journalctl -b -u microvm-virtiofsd@vm3.service -u microvm@vm3.service --no-pager -o cat | tail -n 30
        fail "systemctl start microvm@vm3 failed: $out"
    fi
    e2e_wait_probed vm3 $((b + 1)) 120 || fail "vm3 did not boot and probe its shares"
    e2e_last_boot vm3
    e2e_expect_mounted vm3 nixfiles host
    e2e_expect_guest vm3 host ls ""
    e2e_expect_guest vm3 host write-as-uid1000 denied
    e2e_expect_guest vm3 nixfiles "read marker" "alice's nixfiles"
    out=$(e2e_ct journalctl -b -u microvm-virtiofsd@vm3.service --no-pager -o cat | grep 'this VM gets a placeholder there') ||
        fail "no journal line about the placeholder"
    echo "$out"
    grep -q "linked by alice (uid 1000)" <<<"$out" || fail "the journal line does not name alice: $out"
    step "the repo and the host's namespace are untouched"
    [ "$before" = "$(e2e_ct sh -c 'cd /home/alice/nixfiles && find . -printf "%p %y %U %m\n" | sort')" ] || fail "the repo changed"
    out=$(e2e_ct findmnt -rn -o TARGET | grep "^/home/alice" || true)
    [ -z "$out" ] || fail "a mount at the repo's path: $out"
    out=$(e2e_ct findmnt -rn -o TARGET,SOURCE | grep "microvm-workspaces-fallback" || true)
    [ -z "$out" ] || fail "the placeholder is still in the host's namespace after virtiofsd started: $out"
    e2e_ct test -f "$E2E_WS/nixfiles/hosts/microvms/vm3" || fail "the host's view of the entry is not the repo's"
    out=$(e2e_status_json vm3) || fail "status --json failed"
    [ "$(echo "$out" | e2e_jq -r '.vms[0].shares[] | select(.tag == "host") | .showedAtStart')" = "placeholder (alice's linked repo cannot serve it)" ] ||
        fail "status does not say it: $out"
    out=$(e2e_ct microvm-link doctor 2>&1 || true)
    grep -q "VM vm3 share host .* got a placeholder at its last start" <<<"$out" || fail "doctor does not say it: $out"
}

# e2e_vmssh_git_mode MODE: vmssh's git mode in config.json, and vmssh restarted with it, up to
# its SSH banner.
e2e_vmssh_git_mode() {
    e2e_config_edit ".vms.vmssh.git = \"$1\""
    local b
    b=$(e2e_boot_count vmssh)
    e2e_ct systemctl restart microvm@vmssh.service || fail "restart failed"
    e2e_wait_restarted vmssh "$b"
    e2e_ssh_wait vmssh >/dev/null || fail "vmssh gave no SSH banner"
}

# ---------- issue 20, items 1 and 2: a worktree in the guest ---------------

# alice has a main repo ~/vmssh and a worktree of it ~/vmssh-feat (its .git
# a file naming /home/alice/vmssh/.git/worktrees/vmssh-feat, a host path the
# guest does not have). From the worktree she runs microvm-link naming no VM:
# there is no VM vmssh-feat, so the one named after the main repo, vmssh. In
# each git mode, git works in the guest on the worktree; the main repo's
# checkout is never seen, nor (private) its config; the host's worktree
# metadata stays valid; the guest's commits reach the main repo (fetch, or at
# once in shared).
s_worktree_git() {
    local out b repo=/home/alice/vmssh wt=/home/alice/vmssh-feat guest_git status
    guest_git='git -c user.name=guest -c user.email=g@vm'
    # git status in the guest, less what the guest's own boot probe writes
    status='{ git status --short --ignored | grep -v " guest-wrote-as-" || true; }'
    e2e_vmssh_repo
    e2e_ct rm -rf "$repo/.git"
    e2e_ct_as alice sh -c 'cd ~/vmssh && git init -q -b main && git add -A && git -c user.name=alice -c user.email=a@h commit -q -m host-commit && git config remote.origin.url https://token@example.com/secret && git worktree add -q ../vmssh-feat -b feat && echo "of the main checkout" > main-only' ||
        fail "could not make ~alice/vmssh a repo with a worktree ~/vmssh-feat"
    out=$(e2e_ct cat "$wt/.git")
    [ "$out" = "gitdir: $repo/.git/worktrees/vmssh-feat" ] || fail "the worktree's .git says: $out"
    trap e2e_config_restore EXIT
    b=$(e2e_boot_count vmssh)

    step "alice links her worktree, naming no VM: no VM vmssh-feat, so vmssh (after the main repo)"
    e2e_mvl_alice "$wt" || fail "alice's link failed: $(e2e_mvl_all | tail -n 2 | tr '\n' ' ')"
    grep -q "^linked $E2E_WS/vmssh -> $wt$" "$E2E_RUN/mvl.out" || fail "not linked into vmssh: $(e2e_mvl_all | tr '\n' '|')"
    e2e_wait_restarted vmssh "$b"
    e2e_ssh_wait vmssh >/dev/null || fail "vmssh gave no SSH banner"
    e2e_ct findmnt -o TARGET,FSTYPE,OPTIONS -R "$E2E_WS/vmssh" || true

    step "private (the default): in the guest, git status, log, commit and switch -c work in the worktree"
    out=$(e2e_ssh vmssh "cd /mnt/workspace && cat .git && $status && git branch --show-current && git log -1 --format=%s && echo guest >> MARKER && $guest_git commit -q -am guest-commit && git switch -q -c guest-topic && $guest_git commit -q --allow-empty -m topic-commit && git log --format=%s && $status" 2>&1) ||
        fail "git in the guest failed: $out"
    printf '%s\n' "$out"
    [ "$(tr '\n' '|' <<<"$out")" = "gitdir: .microvm-git/.git/c/.git|!! .microvm-git/|feat|host-commit|topic-commit|guest-commit|host-commit|!! .microvm-git/|" ] ||
        fail "the guest's git (its .git file, a clean status but for its ignored room, the branch feat, the worktree's log, its commits): $out"
    step "the guest's git clean -fdx, as its user and as its root, leaves its git dir alone"
    out=$(e2e_ssh vmssh 'cd /mnt/workspace && git clean -fdxq -e "guest-wrote-as-*" 2>&1; git log -1 --format=%s' 2>&1)
    printf '%s\n' "$out"
    [ "$(tail -n 1 <<<"$out")" = topic-commit ] || fail "after git clean -fdx as the guest's user: $out"
    out=$(e2e_ssh_root vmssh 'cd /mnt/workspace && git -c safe.directory="*" clean -fdxq -e "guest-wrote-as-*" 2>&1; git -c safe.directory="*" log -1 --format=%s' 2>&1)
    printf '%s\n' "$out"
    [ "$(tail -n 1 <<<"$out")" = topic-commit ] || fail "after git clean -fdx as the guest's root: $out"

    step "the guest sees nothing of the main repo but its objects: not its checkout, not its config"
    out=$(e2e_ssh_root vmssh 'find /mnt/workspace -name main-only | wc -l' 2>&1) || fail "ssh as root failed: $out"
    [ "$out" = 0 ] || fail "the main checkout's file is in the guest's view: $out"
    out=$(e2e_ssh vmssh 'cd /mnt/workspace && git config remote.origin.url || echo none' 2>&1)
    [ "$out" = none ] || fail "the guest reads the main repo's config: $out"

    step "the host: the worktree valid and not prunable, the room in no status, nothing mounted under /home/alice, git works there while linked"
    out=$(e2e_ct_as alice git -C "$repo" worktree list --porcelain) || fail "git worktree list failed: $out"
    printf '%s\n' "$out"
    grep -qx "worktree $wt" <<<"$out" || fail "the worktree is not listed: $out"
    if grep -q prunable <<<"$out"; then fail "the worktree is prunable: $out"; fi
    out=$(e2e_ct_as alice git -C "$wt" status --porcelain --ignored -uall) || fail "git status failed"
    if grep -q microvm-git <<<"$out"; then fail "the room shows in the host's git status: $out"; fi
    e2e_ct test -d "$wt/.microvm-git" || fail "no room in the worktree"
    out=$(e2e_ct findmnt -rn -o TARGET | grep "^/home/alice" || true)
    [ -z "$out" ] || fail "mounts under /home/alice: $out"
    e2e_ct_as alice sh -c "cd $wt && git config user.name alice-host && git -c user.email=a@h commit -q --allow-empty -m host-two" ||
        fail "git config / commit in the worktree on the host failed while linked"

    step "microvm-link fetch (as alice, in the worktree, no sudo): the guest's branches land in the main repo"
    out=$(e2e_alice_in "$wt" microvm-link fetch 2>&1) || fail "fetch failed: $out"
    printf '%s\n' "$out"
    grep -q "^vmssh: .* new or moved (.*guest-topic.*), under refs/remotes/vmssh/$" <<<"$out" || fail "fetch said: $out"
    [ "$(e2e_ct_as alice git -C "$repo" log -1 --format=%s vmssh/guest-topic)" = topic-commit ] || fail "vmssh/guest-topic is not the guest's commit"
    [ "$(e2e_ct_as alice git -C "$repo" log -1 --format=%s feat)" = host-two ] || fail "the host's feat moved"

    step "readonly: git status and log work in the guest, commit is refused"
    e2e_vmssh_git_mode readonly
    out=$(e2e_ssh vmssh "cd /mnt/workspace && $status && git log -1 --format=%s && if $guest_git commit -q --allow-empty -m nope 2>/dev/null; then echo committed; else echo refused; fi; find /mnt/workspace -name main-only 2>/dev/null | wc -l" 2>&1) ||
        fail "git in the guest failed: $out"
    printf '%s\n' "$out"
    [ "$(tr '\n' '|' <<<"$out")" = " M MARKER|!! .microvm-git/|host-two|refused|0|" ] || fail "readonly: $out"

    step "shared: the guest commits and switches in the main repo's git dir itself; the host has it at once"
    e2e_vmssh_git_mode shared
    out=$(e2e_ssh vmssh "cd /mnt/workspace && $status && $guest_git commit -q -am shared-commit && git switch -q -c shared-topic && git log -1 --format=%s && find /mnt/workspace -name main-only 2>/dev/null | wc -l" 2>&1) ||
        fail "git in the guest failed: $out"
    printf '%s\n' "$out"
    [ "$(tr '\n' '|' <<<"$out")" = " M MARKER|!! .microvm-git/|shared-commit|0|" ] || fail "shared: $out"
    out=$(e2e_ssh_root vmssh 'cd /mnt/workspace && git -c safe.directory="*" clean -fdxq -e "guest-wrote-as-*" 2>&1; ls .microvm-git/.git/c/.git | wc -l' 2>&1)
    [ "$(tail -n 1 <<<"$out")" -gt 5 ] || fail "the guest root's git clean -fdx emptied the main repo's git dir: $out"
    e2e_ct_as alice git -C "$repo" fsck --no-progress >/dev/null || fail "git fsck of the main repo failed"
    [ "$(e2e_ct_as alice git -C "$repo" log -1 --format=%s feat)" = shared-commit ] || fail "the main repo's feat is not the guest's commit"
    [ "$(e2e_ct_as alice git -C "$wt" branch --show-current)" = shared-topic ] || fail "the worktree's HEAD did not follow the guest's switch"
    out=$(e2e_ct_as alice git -C "$repo" worktree list --porcelain)
    grep -qx "worktree $wt" <<<"$out" && ! grep -q prunable <<<"$out" || fail "the worktree metadata: $out"
    out=$(e2e_alice_in "$wt" microvm-link fetch 2>&1) || fail "fetch failed: $out"
    [ "$out" = "vmssh: nothing to fetch: git = shared, the guest writes the repo's own .git" ] || fail "fetch said: $out"
    out=$(e2e_ct findmnt -rn -o TARGET | grep "^/home/alice" || true)
    [ -z "$out" ] || fail "mounts under /home/alice: $out"
    e2e_config_restore
    trap - EXIT
}
