# shellcheck shell=bash
# Issue 16's proof in the real stack: a host upgraded from microvm.nix's own
# tmpfiles links at once, a default SSH destination never fails a link, and
# `microvm-link shell` shares one SSH connection per VM start. Sourced by run
# after scenarios.sh and scenarios-ssh.sh (whose helpers these use).

# e2e_config_edit JQ_FILTER: rewrite the container's config.json with jq;
# e2e_config_restore puts the fixture's back (call it from an EXIT trap)
e2e_config_edit() {
    local cfg=/etc/microvm-workspaces/config.json
    e2e_ct test -e "$cfg.fixture" || e2e_ct cp -p "$cfg" "$cfg.fixture"
    e2e_ct sh -c 'jq "$1" "$2" > "$2.new" && mv "$2.new" "$2"' sh "$1" "$cfg" ||
        fail "could not edit config.json with jq '$1'"
}
e2e_config_restore() {
    local cfg=/etc/microvm-workspaces/config.json
    e2e_ct sh -c '! test -e "$1.fixture" || mv "$1.fixture" "$1"' sh "$cfg"
}

# ---------- an upgraded microvm.nix host ----------------------------------

# vmssh's workspace dir as microvm.nix's tmpfiles make it (microvm:kvm 0775),
# the running guest's root writes into it; alice (a member of the link
# group, through sudo) links her repo: the directory moves aside whole into
# the root-only .displaced, the guest sees the repo.
s_upgraded_host_link() {
    local out b kept
    step "microvm.nix's tmpfiles line: d $E2E_WS/vmssh 0775 microvm kvm"
    e2e_ct install -d -o microvm -g kvm -m 0775 "$E2E_WS/vmssh" || fail "could not make $E2E_WS/vmssh"
    e2e_start_ok vmssh
    e2e_ssh_wait vmssh >/dev/null || fail "vmssh gave no SSH banner after its start"
    step "the guest's root writes into its workspace"
    # (one word: ssh joins its arguments into one remote command line)
    e2e_ssh_root vmssh 'echo "written by the guest" > /mnt/workspace/guest-data' ||
        fail "the guest's root could not write into /mnt/workspace"
    out=$(e2e_stat '%U:%G %a' "$E2E_WS/vmssh") && [ "$out" = "microvm:kvm 775" ] ||
        fail "$E2E_WS/vmssh is $out, expected microvm:kvm 775 (left as it was by prepare)"
    e2e_ct test -s "$E2E_WS/vmssh/guest-data" || fail "the guest's file is not in $E2E_WS/vmssh"
    e2e_vmssh_repo
    b=$(e2e_boot_count vmssh)

    step "alice links ~/vmssh (through sudo): the first link works"
    e2e_mvl_alice /home/alice/vmssh || fail "alice's first link on an upgraded host failed: $(e2e_mvl_all | tail -n 2 | tr '\n' ' ')"
    grep -q "^moved the directory of microvm (uid [0-9]*) $E2E_WS/vmssh aside to $E2E_WS/.displaced/vmssh\.[0-9]* (only root can read it there; nothing was deleted)$" "$E2E_RUN/mvl.out" ||
        fail "no line saying where microvm's directory went: $(e2e_mvl_all | tr '\n' '|')"
    e2e_wait_restarted vmssh "$b"
    e2e_expect_bind "$E2E_WS/vmssh" /home/alice/vmssh
    out=$(e2e_ssh vmssh cat /mnt/workspace/MARKER 2>&1) || fail "ssh vmssh cat /mnt/workspace/MARKER failed: $out"
    [ "$out" = "alice's vmssh repo" ] || fail "the guest reads '$out' from its workspace, expected alice's repo"

    step "the old data is whole under .displaced, and root's alone"
    kept=$(e2e_ct sh -c "ls -d $E2E_WS/.displaced/vmssh.*") || fail "nothing under $E2E_WS/.displaced"
    [ "$(e2e_ct cat "$kept/guest-data")" = "written by the guest" ] || fail "$kept/guest-data is not the guest's file"
    out=$(e2e_stat '%U:%G %a' "$kept") && [ "$out" = "microvm:kvm 775" ] || fail "$kept is $out, expected microvm:kvm 775 as it was"
    out=$(e2e_stat '%U:%G %a' "$E2E_WS/.displaced") && [ "$out" = "root:root 700" ] || fail "$E2E_WS/.displaced is $out, expected root:root 700"
    ! e2e_ct runuser -u alice -- cat "$kept/guest-data" >/dev/null 2>&1 || fail "alice can read the displaced data"
    ! e2e_ct runuser -u alice -- ls "$E2E_WS/.displaced" >/dev/null 2>&1 || fail "alice can list $E2E_WS/.displaced"

    step "a directory of another person (bob) is still refused, naming them"
    e2e_ct sh -c "id bob >/dev/null 2>&1 || useradd -M -U bob" || fail "could not add user bob"
    e2e_mvl_alice /home/alice/vmssh unlink vmssh --no-restart || fail "unlink failed"
    # the placeholder unlink left (sealed: lifted from the host, as root can), replaced by a
    # directory of bob's (group kvm)
    chattr -i "$E2E_ROOT$E2E_WS/vmssh" || fail "could not lift the seal of $E2E_WS/vmssh"
    e2e_ct sh -c "rmdir $E2E_WS/vmssh && install -d -o bob -g kvm -m 0775 $E2E_WS/vmssh" ||
        fail "could not put bob's directory in place"
    e2e_mvl_alice /home/alice/vmssh --no-restart && fail "alice's link over bob's directory succeeded"
    grep -q "^microvm-link: $E2E_WS/vmssh is a directory of bob (uid [0-9]*); only they or root may change it$" "$E2E_RUN/mvl.err" ||
        fail "the refusal does not name bob in one line: $(e2e_mvl_all | tr '\n' '|')"
    e2e_ct test -d "$E2E_WS/vmssh" -a "$(e2e_stat %U "$E2E_WS/vmssh")" = bob || fail "bob's directory was changed"
}

# ---------- SSH: a destination nobody chose -------------------------------

# vm1 has no SSH server. With `sshDefault` (what the NixOS module writes when
# the user set no destination) a link never fails on SSH: a name that does
# not resolve is not waited for at all; one that resolves is waited for
# briefly. The same destination set as `ssh` (chosen) waits and fails.
s_ssh_default() {
    local t0 secs rc
    trap e2e_config_restore EXIT
    e2e_repo vm1 "alice's vm1 repo"
    e2e_start_ok vm1

    step "sshDefault 'vm1' (no such host name): exit 0 at once, one line"
    e2e_config_edit '.vms.vm1.sshDefault = "vm1"'
    t0=$(e2e_now)
    e2e_mvl_alice /home/alice/vm1 || fail "the link exited $? on an unanswered default destination: $(e2e_mvl_all | tail -n 2 | tr '\n' ' ')"
    secs=$(e2e_since "$t0")
    grep -q "^restarted microvm@vm1.service: active after" "$E2E_RUN/mvl.out" || fail "vm1 was not restarted: $(e2e_mvl_all | tr '\n' '|')"
    grep -q "^not waiting for SSH: vm1 (the default destination, nobody chose it) gave no answer (cannot resolve vm1.*); the link is done" "$E2E_RUN/mvl.out" ||
        fail "no one line saying the default destination did not answer: $(e2e_mvl_all | tr '\n' '|')"
    e2e_timing ssh-default-unresolvable-link "$secs"
    awk -v s="$secs" 'BEGIN { exit !(s < 20) }' || fail "the link took ${secs}s: it waited for a name that does not resolve"

    step "sshDefault '127.0.0.1' (resolves, nothing listens): a short wait, exit 0"
    e2e_config_edit '.vms.vm1.sshDefault = "127.0.0.1"'
    t0=$(e2e_now)
    e2e_mvl_alice /home/alice/vm1 --ssh-timeout 120 || fail "the link exited $? on an unanswered default destination"
    secs=$(e2e_since "$t0")
    grep -q "^not waiting for SSH: 127.0.0.1 (the default destination, nobody chose it) gave no answer (127.0.0.1 (127.0.0.1:22) gave no SSH banner within 15 s" "$E2E_RUN/mvl.out" ||
        fail "no line saying the default destination gave no banner within 15 s: $(e2e_mvl_all | tr '\n' '|')"
    e2e_timing ssh-default-silent-link "$secs"
    awk -v s="$secs" 'BEGIN { exit !(s < 60) }' || fail "the link took ${secs}s, not a short wait"

    step "the same destination chosen (vms.vm1.ssh): waits, then fails"
    e2e_config_edit 'del(.vms.vm1.sshDefault) | .vms.vm1.ssh = "127.0.0.1"'
    e2e_mvl_alice /home/alice/vm1 --ssh-timeout 3; rc=$?
    [ $rc = 1 ] || fail "a chosen destination that never answers exited $rc, expected 1"
    grep -q "^ssh 127.0.0.1: .*gave no SSH banner within 3 s" "$E2E_RUN/mvl.out" || fail "no failure line for the chosen destination: $(e2e_mvl_all | tr '\n' '|')"

    step "someone outside the sudo rule, without a terminal: refused at once (sudo -n), no prompt"
    t0=$(e2e_now)
    e2e_ct sh -c 'id mallory >/dev/null 2>&1 || useradd -m -U mallory' || fail "could not add user mallory"
    out=$(e2e_ct timeout 30 runuser -u mallory -- sh -c 'cd /tmp && microvm-link vm1 --no-restart' 2>&1 </dev/null); rc=$?
    echo "$out"
    [ $rc = 1 ] || fail "microvm-link as mallory exited $rc (124: it hung at a password prompt), expected 1"
    grep -q "password is required" <<<"$out" || fail "sudo did not say a password is required: $out"
    awk -v s="$(e2e_since "$t0")" 'BEGIN { exit !(s < 10) }' || fail "the refusal took $(e2e_since "$t0")s"
}

# ---------- SSH: one shared connection per VM start -----------------------

# alice with a runtime dir (/run/user/1000, as logind makes it): the first
# `shell -- true` starts a master, the following ones go through it without
# sudo; a restart of the VM starts a new master on a new socket. Medians of
# E2E_SHELL_RUNS (10) calls each against plain `ssh vmssh true`, same run.
s_ssh_shared() {
    local n=${E2E_SHELL_RUNS:-10} i b plain=() first=() follow=() sock sock2 sudos
    [[ $n =~ ^[1-9][0-9]*$ ]] || fail "E2E_SHELL_RUNS must be a positive number, not '$n'"
    e2e_vmssh_repo
    e2e_ct install -d -o alice -g alice -m 0700 /run/user/1000 || fail "could not make alice's runtime dir"
    e2e_mvl_alice /home/alice/vmssh/sub shell -- true || fail "the first shell (link and start) exited $?: $(e2e_mvl_all | tail -n 2 | tr '\n' ' ')"
    sock=$(e2e_ct sh -c 'ls /run/user/1000/microvm-workspaces/') || fail "no control socket in alice's runtime dir"
    [ "$(printf '%s\n' "$sock" | wc -l)" = 1 ] || fail "expected one control socket, found: $sock"
    [ "$(e2e_stat '%U %a %F' "/run/user/1000/microvm-workspaces/$sock")" = "alice 600 socket" ] ||
        fail "the control socket is $(e2e_stat '%U %a %F' "/run/user/1000/microvm-workspaces/$sock")"
    e2e_alice_in /home/alice ssh -o ControlPath="/run/user/1000/microvm-workspaces/$sock" -O check vmssh 2>&1 ||
        fail "no master answers on $sock"

    step "following calls: through the master, no sudo"
    sudos=$(e2e_ct journalctl -q --no-pager _COMM=sudo | grep -c 'COMMAND=/usr/bin/microvm-link')
    # the first shell (which linked and started) went through sudo: the count can tell
    [ "${sudos:-0}" -ge 1 ] || fail "sudo's journal shows no run of microvm-link, though the first shell needed one"
    e2e_mvl_alice /home/alice/vmssh/sub shell -- pwd || fail "shell -- pwd exited $?"
    [ "$(cat "$E2E_RUN/mvl.out")" = /mnt/workspace/sub ] || fail "shell -- pwd printed '$(cat "$E2E_RUN/mvl.out")'"
    [ "$(e2e_ct journalctl -q --no-pager _COMM=sudo | grep -c 'COMMAND=/usr/bin/microvm-link')" = "$sudos" ] ||
        fail "shell on a running VM that serves the repo ran sudo"

    step "a restart of the VM: a new master on a new socket, the old one out of the way"
    b=$(e2e_boot_count vmssh)
    e2e_ct systemctl restart microvm@vmssh.service || fail "systemctl restart microvm@vmssh failed"
    e2e_wait_restarted vmssh "$b"
    e2e_mvl_alice /home/alice/vmssh/sub shell -- cat /proc/sys/kernel/random/boot_id || fail "shell after the restart exited $?: $(e2e_mvl_all | tail -n 2 | tr '\n' ' ')"
    sock2=$(e2e_ct sh -c 'ls -t /run/user/1000/microvm-workspaces/ | head -n 1')
    [ "$sock2" != "$sock" ] || fail "the restarted VM is reached through the old socket $sock"
    [ "${sock2#*-}" = "${sock#*-}" ] || fail "the new socket $sock2 is not for the same VM and destination as $sock"

    step "a running VM left stale (relinked with --no-restart): shell restarts it, then runs"
    e2e_ct_as alice sh -c 'mkdir -p ~/other/vmssh/sub ~/other/vmssh/.git && echo "the other checkout" > ~/other/vmssh/MARKER' || fail "could not make ~/other/vmssh"
    e2e_mvl_alice /home/alice/other/vmssh --no-restart || fail "the relink with --no-restart failed"
    b=$(e2e_boot_count vmssh)
    e2e_mvl_alice /home/alice/other/vmssh/sub shell -- cat /mnt/workspace/MARKER || fail "shell on the stale VM exited $?: $(e2e_mvl_all | tail -n 2 | tr '\n' ' ')"
    [ "$(tail -n 1 "$E2E_RUN/mvl.out")" = "the other checkout" ] || fail "shell on the stale VM read '$(tail -n 1 "$E2E_RUN/mvl.out")', not the other checkout"
    [ "$(e2e_boot_count vmssh)" -gt "$b" ] || fail "shell did not restart the stale VM"
    e2e_mvl_alice /home/alice/vmssh --no-restart >/dev/null || fail "the relink back to ~/vmssh failed"
    e2e_ct systemctl restart microvm@vmssh.service || fail "systemctl restart microvm@vmssh failed"
    e2e_ssh_wait vmssh >/dev/null || fail "vmssh gave no banner after its restart"
    e2e_mvl_alice /home/alice/vmssh/sub shell -- true || fail "shell after relinking back exited $?"
    sock2=$(e2e_ct sh -c 'ls -t /run/user/1000/microvm-workspaces/ | head -n 1')

    step "wait until vmssh's start is over 60 s ago (a VM past its boot: shell makes no banner probe)"
    e2e_poll 90 "vmssh's start more than 61 s ago" e2e_ct sh -c '[ $(( $(date +%s) - $(stat -c %Y /run/microvm-workspaces/vmssh.json) )) -gt 61 ]' >/dev/null ||
        fail "vmssh's /run record did not age"
    step "timing: $n x plain ssh vmssh true, shell first call (no master), shell following call"
    for i in $(seq 1 "$n"); do
        plain+=("$(e2e_alice_in /home/alice/vmssh/sub bash -c 't=$EPOCHREALTIME; ssh vmssh true || exit; echo "$t $EPOCHREALTIME" | awk "{ printf \"%d\\n\", (\$2 - \$1) * 1000 }"')")
        e2e_alice_in /home/alice ssh -o ControlPath="/run/user/1000/microvm-workspaces/$sock2" -O exit vmssh >/dev/null 2>&1
        first+=("$(e2e_alice_in /home/alice/vmssh/sub bash -c 't=$EPOCHREALTIME; microvm-link shell -- true || exit; echo "$t $EPOCHREALTIME" | awk "{ printf \"%d\\n\", (\$2 - \$1) * 1000 }"')")
        follow+=("$(e2e_alice_in /home/alice/vmssh/sub bash -c 't=$EPOCHREALTIME; microvm-link shell -- true || exit; echo "$t $EPOCHREALTIME" | awk "{ printf \"%d\\n\", (\$2 - \$1) * 1000 }"')")
    done
    echo "plain ssh, ms:     ${plain[*]}"
    echo "shell, first, ms:  ${first[*]}"
    echo "shell, follow, ms: ${follow[*]}"
    [ ${#plain[@]} = "$n" ] && [ ${#first[@]} = "$n" ] && [ ${#follow[@]} = "$n" ] || fail "a timed call failed"
    # milliseconds (e2e_timing says "s": these are ms)
    e2e_timing shell-plain-ssh-median-ms "$(printf '%s\n' "${plain[@]}" | e2e_median)"
    e2e_timing shell-first-call-median-ms "$(printf '%s\n' "${first[@]}" | e2e_median)"
    e2e_timing shell-following-call-median-ms "$(printf '%s\n' "${follow[@]}" | e2e_median)"
}
