# shellcheck shell=bash
# Issue 12's proof in the real stack: `microvm-link shell` into the SSH guest
# vmssh, the SSH wait after a link, bad SSH input, doctor, and status in
# words. Sourced by run after scenarios.sh (whose helpers these use).

# ---------- helpers -------------------------------------------------------

# e2e_alice_in DIR CMD...: CMD as alice in DIR, every argument passed as is
# (newlines too: no shell quoting in between), with her login's HOME/USER
e2e_alice_in() {
    local dir=$1; shift
    e2e_ct runuser -u alice -- env HOME=/home/alice USER=alice LOGNAME=alice \
        sh -c 'cd "$1" && shift && exec "$@"' sh "$dir" "$@"
}

# e2e_mvl_alice DIR ARGS...: microvm-link ARGS as alice in DIR; stdout in
# $E2E_RUN/mvl.out, stderr in $E2E_RUN/mvl.err, both in the log; its status
e2e_mvl_alice() {
    local dir=$1 rc; shift
    e2e_alice_in "$dir" microvm-link "$@" > "$E2E_RUN/mvl.out" 2> "$E2E_RUN/mvl.err"; rc=$?
    printf '$ (alice in %s) microvm-link%s\n' "$dir" "$([ $# = 0 ] || printf ' %q' "$@")"
    sed 's/^/  stdout| /' "$E2E_RUN/mvl.out"
    sed 's/^/  stderr| /' "$E2E_RUN/mvl.err"
    printf '  [exit %s]\n' "$rc"
    return $rc
}

e2e_mvl_all() { cat "$E2E_RUN/mvl.out" "$E2E_RUN/mvl.err"; }

# the number in "... after N s" of the line of the last microvm-link output
# that starts with PREFIX
e2e_after_secs() {
    e2e_mvl_all | grep -F -- "$1" | tail -n 1 | sed -n 's/.* after \([0-9.]*\) s$/\1/p'
}

# e2e_untouched_vmssh BOOTS WHY: vmssh not started again, nothing linked
e2e_untouched_vmssh() {
    [ "$(e2e_boot_count vmssh)" = "$1" ] || fail "$2: vmssh booted (boots $1 -> $(e2e_boot_count vmssh))"
    ! e2e_ct test -e "$E2E_WS/.links/vmssh" -o -L "$E2E_WS/.links/vmssh" ||
        fail "$2: a link record $E2E_WS/.links/vmssh was written"
    ! e2e_is_mount "$E2E_WS/vmssh" || fail "$2: $E2E_WS/vmssh is mounted"
}

# alice's repo ~/vmssh with a subdirectory sub holding one file
e2e_vmssh_repo() {
    e2e_repo vmssh "alice's vmssh repo"
    e2e_ct_as alice sh -c 'mkdir -p ~/vmssh/sub && echo hello > ~/vmssh/sub/hello.txt' || fail "could not create ~alice/vmssh/sub"
}

# ---------- microvm-link shell --------------------------------------------

# alice in ~/vmssh/sub: `microvm-link shell -- CMD` links, starts, waits for
# SSH and runs CMD in the guest's /mnt/workspace/sub as guest user alice,
# exiting with CMD's status.
s_ssh_shell() {
    local out rc b
    step "config: vms.vmssh.ssh and the workspace share's mountPoint"
    out=$(e2e_ct jq -c '.vms.vmssh | {ssh, mp: [.shares[] | select(.tag == "workspace") | .mountPoint][0]}' /etc/microvm-workspaces/config.json)
    [ "$out" = '{"ssh":"vmssh","mp":"/mnt/workspace"}' ] ||
        fail "config.json vms.vmssh: $out, expected ssh vmssh and the workspace share's mountPoint /mnt/workspace"
    step "alice's sudo rule for microvm-link is there"
    out=$(e2e_ct sudo -l -U alice 2>&1)
    echo "$out" | tail -n 2
    grep -q '(root) NOPASSWD: /usr/bin/microvm-link$' <<<"$out" || fail "sudo -l -U alice shows no NOPASSWD rule for /usr/bin/microvm-link: $out"
    e2e_vmssh_repo
    b=$(e2e_boot_count vmssh)
    [ "$(e2e_unit_state microvm@vmssh.service)" = inactive ] || fail "vmssh runs before the test"

    step "alice in ~/vmssh/sub: microvm-link shell -- sh -c 'pwd; ls' (VM stopped, nothing linked)"
    out=$(e2e_ct runuser -l alice -c "cd ~/vmssh/sub && microvm-link shell -- sh -c 'pwd; ls'" 2>&1); rc=$?
    { printf '%s\n' "alice@host:~/vmssh/sub\$ microvm-link shell -- sh -c 'pwd; ls'" "$out"; } | tee "$E2E_RUN/transcript-shell.txt"
    echo "[exit $rc]"
    [ $rc = 0 ] || fail "microvm-link shell -- sh -c 'pwd; ls' exited $rc: $(tail -n 2 <<<"$out" | tr '\n' ' ')"
    grep -qx /mnt/workspace/sub <<<"$out" || fail "shell -- sh -c 'pwd; ls' did not print /mnt/workspace/sub: $(tr '\n' ' ' <<<"$out")"
    grep -qx hello.txt <<<"$out" || fail "shell -- sh -c 'pwd; ls' did not list sub's hello.txt: $(tr '\n' ' ' <<<"$out")"
    [ "$(e2e_boot_count vmssh)" -gt "$b" ] || fail "microvm-link shell did not start vmssh"
    e2e_expect_bind "$E2E_WS/vmssh" /home/alice/vmssh
    b=$(e2e_boot_count vmssh)

    step "-- pwd: the guest path of sub"
    e2e_mvl_alice /home/alice/vmssh/sub shell -- pwd || fail "microvm-link shell -- pwd exited $?"
    [ "$(tail -n 1 "$E2E_RUN/mvl.out")" = /mnt/workspace/sub ] ||
        fail "microvm-link shell -- pwd printed '$(tail -n 1 "$E2E_RUN/mvl.out")', expected /mnt/workspace/sub"
    cp "$E2E_RUN/mvl.out" "$E2E_RUN/pwd.out"
    step "-- id -u / id -un: the guest user alice (uid 1000)"
    e2e_mvl_alice /home/alice/vmssh/sub shell -- id -u || fail "microvm-link shell -- id -u exited $?"
    [ "$(tail -n 1 "$E2E_RUN/mvl.out")" = 1000 ] || fail "microvm-link shell -- id -u printed '$(tail -n 1 "$E2E_RUN/mvl.out")', expected 1000"
    e2e_mvl_alice /home/alice/vmssh/sub shell -- id -un || fail "microvm-link shell -- id -un exited $?"
    [ "$(tail -n 1 "$E2E_RUN/mvl.out")" = alice ] || fail "microvm-link shell -- id -un printed '$(tail -n 1 "$E2E_RUN/mvl.out")', expected alice"
    step "the exit status is the remote command's"
    e2e_mvl_alice /home/alice/vmssh/sub shell -- sh -c 'exit 7'; rc=$?
    [ $rc = 7 ] || fail "microvm-link shell -- sh -c 'exit 7' exited $rc, expected 7"
    step "on the running, linked VM shell restarted nothing"
    [ "$(e2e_boot_count vmssh)" = "$b" ] || fail "shell on a running, linked vmssh booted it again ($b -> $(e2e_boot_count vmssh))"
    step "stdout of shell -- pwd is the remote command's alone (what \$(microvm-link shell -- pwd) gets)"
    [ "$(cat "$E2E_RUN/pwd.out")" = /mnt/workspace/sub ] ||
        fail "stdout of microvm-link shell -- pwd is '$(tr '\n' '|' < "$E2E_RUN/pwd.out")', expected exactly /mnt/workspace/sub (the link's report belongs on stderr)"
}

# ---------- the SSH wait after a link -------------------------------------

# Plain `microvm-link` (restarts) as alice E2E_SSH_LINKS (5) times: each run
# reports the unit's active time and the SSH wait; records both medians.
s_ssh_link_wait() {
    local n=${E2E_SSH_LINKS:-5} i b act waited out acts=() waits=()
    [[ $n =~ ^[1-9][0-9]*$ ]] || fail "E2E_SSH_LINKS must be a positive number, not '$n'"
    e2e_vmssh_repo
    for i in $(seq 1 "$n"); do
        step "link $i of $n: alice in ~/vmssh runs microvm-link"
        b=$(e2e_boot_count vmssh)
        e2e_mvl_alice /home/alice/vmssh || fail "microvm-link (link $i) exited $?: $(e2e_mvl_all | tail -n 2 | tr '\n' ' ')"
        act=$(e2e_after_secs 'restarted microvm@vmssh.service: active after ')
        waited=$(e2e_after_secs 'ssh vmssh (127.0.0.1:2201) answered after ')
        [ -n "$act" ] || fail "link $i: no 'restarted microvm@vmssh.service: active after N s' line: $(e2e_mvl_all | tr '\n' '|')"
        [ -n "$waited" ] || fail "link $i: no 'ssh vmssh (127.0.0.1:2201) answered after N s' line: $(e2e_mvl_all | tr '\n' '|')"
        [ "$(e2e_boot_count vmssh)" -gt "$b" ] || fail "link $i reported SSH ready, but vmssh did not boot again"
        # answered means dropbear of this boot listens: a login works at once
        out=$(e2e_ssh vmssh cat /mnt/workspace/MARKER 2>&1) || fail "link $i: ssh vmssh right after the wait failed: $out"
        [ "$out" = "alice's vmssh repo" ] || fail "link $i: the guest reads '$out' from its workspace, expected alice's repo"
        echo "link $i: active after ${act}s, ssh answered after ${waited}s"
        acts+=("$act"); waits+=("$waited")
    done
    e2e_timing ssh-link-unit-active-median "$(printf '%s\n' "${acts[@]}" | e2e_median)"
    e2e_timing ssh-link-ssh-wait-median "$(printf '%s\n' "${waits[@]}" | e2e_median)"
    echo "unit active, each link: ${acts[*]}"
    echo "ssh wait, each link: ${waits[*]}"
}

# ---------- bad input -----------------------------------------------------

s_ssh_bad_input() {
    local b out rc dest t0 secs act waited refusal_link refusal_shell
    e2e_vmssh_repo
    e2e_ct rm -f /tmp/pwned
    b=$(e2e_boot_count vmssh)
    step "destinations that are ssh options or hold a newline: refused before anything runs"
    for dest in '-oProxyCommand=touch /tmp/pwned' $'vmssh\n-oProxyCommand=touch /tmp/pwned'; do
        e2e_mvl_alice /home/alice/vmssh "--ssh=$dest"; rc=$?
        [ $rc != 0 ] || fail "microvm-link --ssh=$(printf '%q' "$dest") exited 0"
        grep -q "^microvm-link: .*SSH destination" "$E2E_RUN/mvl.err" || fail "link --ssh=$(printf '%q' "$dest"): no error naming the SSH destination: $(e2e_mvl_all | tr '\n' '|')"
        e2e_untouched_vmssh "$b" "link --ssh=$(printf '%q' "$dest")"
        e2e_mvl_alice /home/alice/vmssh/sub shell "--ssh=$dest" -- true; rc=$?
        [ $rc != 0 ] || fail "microvm-link shell --ssh=$(printf '%q' "$dest") exited 0"
        grep -q "^microvm-link: .*SSH destination" "$E2E_RUN/mvl.err" || fail "shell --ssh=$(printf '%q' "$dest"): no error naming the SSH destination: $(e2e_mvl_all | tr '\n' '|')"
        e2e_untouched_vmssh "$b" "shell --ssh=$(printf '%q' "$dest")"
        ! e2e_ct test -e /tmp/pwned || fail "--ssh=$(printf '%q' "$dest") ran its ProxyCommand: /tmp/pwned exists"
    done

    step "shell in a repo alice does not own: the same refusal as link"
    e2e_ct mkdir -p /srv/e2e/vmssh/.git
    e2e_mvl_alice /srv/e2e/vmssh && fail "alice linked root's /srv/e2e/vmssh"
    refusal_link=$(cat "$E2E_RUN/mvl.err")
    e2e_mvl_alice /srv/e2e/vmssh shell -- true && fail "microvm-link shell in root's /srv/e2e/vmssh exited 0"
    refusal_shell=$(cat "$E2E_RUN/mvl.err")
    grep -q 'owned by uid 0, not by you (uid 1000)' <<<"$refusal_link" || fail "link in root's repo: no ownership refusal: $refusal_link"
    [ "$refusal_shell" = "$refusal_link" ] || fail "shell's refusal '$refusal_shell' differs from link's '$refusal_link'"
    e2e_untouched_vmssh "$b" "link/shell in root's repo"

    step "--ssh to a port where nothing listens, --ssh-timeout 5: bounded, one line, non-zero"
    dest=ssh://alice@127.0.0.1:2299
    t0=$(e2e_now)
    e2e_mvl_alice /home/alice/vmssh --ssh "$dest" --ssh-timeout 5; rc=$?
    secs=$(e2e_since "$t0")
    [ $rc != 0 ] || fail "microvm-link --ssh $dest exited 0 although nothing answers"
    act=$(e2e_after_secs 'restarted microvm@vmssh.service: active after ')
    [ -n "$act" ] || fail "no 'restarted ... active after' line: $(e2e_mvl_all | tr '\n' '|')"
    out=$(e2e_mvl_all | grep -F "ssh $dest: ")
    [ "$(grep -c . <<<"$out")" = 1 ] || fail "expected one line 'ssh $dest: ...', got: $(e2e_mvl_all | tr '\n' '|')"
    grep -q "gave no SSH banner within 5 s" <<<"$out" || fail "the SSH line does not say it gave up after 5 s: $out"
    echo "took ${secs}s in all, restart ${act}s: $out"
    awk -v s="$secs" -v a="$act" 'BEGIN { exit !(s - a < 20) }' || fail "the SSH wait was not bounded by --ssh-timeout 5: ${secs}s in all, restart ${act}s"
    step "shell through alice's own ~/.ssh/config alias to that port"
    e2e_ct_as alice sh -c 'printf "Host vmdead\n    HostName 127.0.0.1\n    Port 2299\n" > ~/.ssh/config' || fail "could not write alice's ~/.ssh/config"
    t0=$(e2e_now)
    e2e_mvl_alice /home/alice/vmssh/sub shell --ssh vmdead --ssh-timeout 5 -- true; rc=$?
    secs=$(e2e_since "$t0")
    e2e_ct rm -f /home/alice/.ssh/config
    [ $rc != 0 ] || fail "microvm-link shell --ssh vmdead exited 0 although nothing answers"
    [ "$(grep -c . "$E2E_RUN/mvl.err")" = 1 ] || fail "shell --ssh vmdead: expected one line of error, got: $(tr '\n' '|' < "$E2E_RUN/mvl.err")"
    grep -q '^microvm-link: vmdead (127.0.0.1:2299) gave no SSH banner within 5 s' "$E2E_RUN/mvl.err" ||
        fail "shell --ssh vmdead: unexpected error: $(cat "$E2E_RUN/mvl.err")"
    awk -v s="$secs" 'BEGIN { exit !(s < 20) }' || fail "shell --ssh vmdead --ssh-timeout 5 took ${secs}s"
    echo "shell --ssh vmdead gave up after ${secs}s"
}

# ---------- doctor ---------------------------------------------------------

# e2e_doctor: `microvm-link doctor --json` as root; JSON in $E2E_RUN/doctor.json, its status
e2e_doctor() {
    local rc
    e2e_ct microvm-link doctor --json > "$E2E_RUN/doctor.json" 2> "$E2E_RUN/doctor.err"; rc=$?
    echo "doctor exit $rc; not ok:"
    e2e_jq -r '.findings[] | select(.severity != "ok") | "  \(.severity) \(.check): \(.what)"' < "$E2E_RUN/doctor.json"
    return $rc
}

# e2e_doctor_has SEVERITY CHECK [TEXT]: a finding of CHECK with SEVERITY (whose what holds TEXT)
e2e_doctor_has() {
    e2e_jq -e --arg s "$1" --arg c "$2" --arg t "${3:-}" \
        'any(.findings[]; .severity == $s and .check == $c and (.what | contains($t)))' < "$E2E_RUN/doctor.json" > /dev/null
}

e2e_doctor_fails() { # CHECK TEXT WHAT-WAS-BROKEN RC
    [ "$4" = 1 ] || fail "doctor with $3 exited $4, expected 1"
    [ "$(e2e_jq .ok < "$E2E_RUN/doctor.json")" = false ] || fail "doctor with $3 says ok"
    e2e_doctor_has fail "$1" "$2" || fail "doctor with $3: no $1 fail naming '$2'"
}

s_doctor() {
    local rc vm src f orig
    step "healthy: ok, exit 0"
    e2e_doctor; rc=$?
    e2e_jq -r '.findings[] | "  \(.severity) \(.check): \(.what)"' < "$E2E_RUN/doctor.json"
    [ $rc = 0 ] || fail "doctor on a healthy container exited $rc: $(cat "$E2E_RUN/doctor.err")"
    [ "$(e2e_jq .ok < "$E2E_RUN/doctor.json")" = true ] || fail "doctor on a healthy container: .ok is not true"
    ! e2e_jq -e 'any(.findings[]; .severity == "fail")' < "$E2E_RUN/doctor.json" > /dev/null || fail "doctor on a healthy container has a fail finding"
    e2e_doctor_has ok generator || fail "healthy: generator is not ok"
    for vm in "${!E2E_VMS[@]}"; do
        e2e_doctor_has ok drop-ins "VM $vm:" || fail "healthy: drop-ins of VM $vm not ok"
    done
    e2e_doctor_has ok virtiofsd "virtiofsd 1.14" || fail "healthy: virtiofsd 1.14 not found ok"
    e2e_doctor_has ok sudo || fail "healthy: sudo not ok"

    step "generator removed (daemon-reload): generator and drop-ins fail"
    e2e_ct rm /usr/lib/systemd/system-generators/microvm-workspaces-generator
    e2e_ct systemctl daemon-reload
    e2e_doctor; rc=$?
    e2e_install_project "$E2E_ROOT"
    e2e_ct systemctl daemon-reload
    e2e_doctor_fails generator "is in none of" "the generator removed" "$rc"
    for vm in "${!E2E_VMS[@]}"; do
        e2e_doctor_has fail drop-ins "VM $vm:" || fail "generator removed: drop-ins of VM $vm do not fail"
    done
    e2e_doctor > /dev/null || fail "doctor not healthy again after reinstalling the generator: $(e2e_jq -c '[.findings[] | select(.severity == "fail")]' < "$E2E_RUN/doctor.json")"

    f=$(e2e_ct readlink -f "$E2E_STATE/vm1/current")/share/microvm/virtiofs/workspace/source
    orig=$(e2e_ct cat "$f") || fail "cannot read $f"
    for src in /tmp/x /srv/e2e/link; do
        step "vm1's source $src"
        if [ "$src" = /srv/e2e/link ]; then
            e2e_ct mkdir -p /srv/e2e/repo-a
            e2e_ct ln -sfn /srv/e2e/repo-a /srv/e2e/link
        fi
        e2e_write_file "$f" "$src"
        e2e_doctor; rc=$?
        e2e_write_file "$f" "$orig"
        case $src in
            /tmp/*) e2e_doctor_fails private-tmp "$src" "a source under /tmp" "$rc" ;;
            *) e2e_doctor_fails symlinked-source "$src" "a symlinked source" "$rc" ;;
        esac
        e2e_doctor > /dev/null || fail "doctor not healthy again after restoring $f"
    done
}

# ---------- status in words after a link ----------------------------------

# vm1 and vm2 (vm1's workspace, read-only) run on the placeholder; alice
# links vm1, which restarts (fresh) and vm2 does not (stale).
s_status_words() {
    local out
    e2e_start_ok vm1
    e2e_start_ok vm2
    e2e_repo vm1 "alice's vm1 repo"
    step "link vm1 (restarts vm1 only)"
    e2e_link_as_alice vm1 || fail "microvm-link as alice failed: $(tail -n 3 "$E2E_RUN/link.out" | tr '\n' ' ')"
    out=$(e2e_status_json) || fail "microvm-link status --json failed"
    echo "$out" | e2e_jq -c '.vms[] | select(.vm == "vm1" or .vm == "vm2") | {vm, shares: [.shares[] | {tag, showedAtStart, showsNow, staleBecause}]}'
    [ "$(echo "$out" | e2e_jq -c '.vms[] | select(.vm == "vm1") | [.shares[] | .showedAtStart, .showsNow, .staleBecause]')" = '["repo /home/alice/vm1","repo /home/alice/vm1",null]' ] ||
        fail "vm1 (restarted, fresh) should show 'repo /home/alice/vm1' at start and now, not stale"
    [ "$(echo "$out" | e2e_jq -c '.vms[] | select(.vm == "vm2") | [.shares[] | .showedAtStart, .showsNow, .staleBecause]')" = "[\"placeholder\",\"repo /home/alice/vm1\",\"started on the placeholder; alice's repo is linked now\"]" ] ||
        fail "vm2 (stale) should show placeholder at start, 'repo /home/alice/vm1' now, and why it is stale"
    step "the table, as alice"
    out=$(e2e_ct_as alice microvm-link status) || fail "microvm-link status as alice failed"
    echo "$out"
    grep -q "^vm2 .* placeholder  *repo /home/alice/vm1  *STALE: started on the placeholder; alice's repo is linked now\$" <<<"$out" ||
        fail "the status table's vm2 line does not end with the STALE reason"
    grep "^vm1 " <<<"$out" | grep -q 'repo /home/alice/vm1  *repo /home/alice/vm1 *$' ||
        fail "the status table's vm1 line should show the repo at start and now, not STALE"
}
