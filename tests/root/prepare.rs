//! Prepare against a temporary root, as root: one test per rule of docs/design.md#prepare-rules.
//! Tests that mount run in a private mount namespace (see `common::isolated`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;

use crate::common::api::*;
use crate::common::*;

const WS: &str = "/var/lib/microvm-workspaces";

#[test]
fn missing_source_becomes_marked_root_placeholder() {
    let fx = Fx::new();
    fx.runner("vm1", &[("workspace", b"/var/lib/microvm-workspaces/vm1")]);
    fx.prepare_ok("vm1");
    let p = fx.p("/var/lib/microvm-workspaces/vm1");
    assert_eq!(meta(&p), (0, 0, 0o555));
    assert!(is_marked(&p), "placeholder must carry the trusted mark");
    // The workspace dir itself is a plain root directory, not a placeholder.
    assert_eq!(meta(&fx.p(WS)), (0, 0, 0o755));
    assert!(!is_marked(&fx.p(WS)));
    assert_eq!(fx.record("vm1")["shares"][0]["kind"], "placeholder");
}

/// The guest's root reaches a placeholder through virtiofsd, which runs as root: its mode does
/// not stop root, the immutable flag does (docs/security.md#sealed). Root here stands in for
/// it; the e2e has the real guest try.
#[test]
fn placeholders_and_live_roots_are_sealed_even_against_root() {
    let fx = Fx::new();
    fx.runner(
        "vm1",
        &[
            ("ws", b"/var/lib/microvm-workspaces/vm1"),
            ("deep", b"/var/lib/microvm-workspaces/vm1/hosts/vm1"),
            ("live", b"/var/lib/microvm-workspaces/.live/dots/sub"),
        ],
    );
    fx.prepare_ok("vm1");
    for d in [
        "vm1",
        "vm1/hosts",
        "vm1/hosts/vm1",
        ".live/dots",
        ".live/dots/sub",
        ".live/dots/sub/current",
    ] {
        let p = fx.p(&format!("{WS}/{d}"));
        assert!(is_sealed(&p), "{d} is not sealed");
        let e = std::fs::create_dir(p.join("planted")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc_eperm()), "creating in {d}: {e}");
        let e = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4777)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc_eperm()), "chmod of {d}: {e}");
    }
    // Not the workspace dir, `.live` or `.links`: guests see none of them.
    for d in ["", ".live"] {
        assert!(
            !is_sealed(&fx.p(&format!("{WS}/{d}"))),
            "{WS}/{d} is sealed"
        );
    }
    // Made by an older version (or lifted by a killed run): sealed at the next start, and a
    // dry run says so first.
    unseal_tree(&fx.p(WS));
    let plan = fx.prepare_dry("vm1");
    assert!(
        plan.contains(&format!("seal (immutable) {WS}/vm1/hosts/vm1")),
        "the dry run does not say it seals: {plan}"
    );
    assert!(
        !is_sealed(&fx.p(&format!("{WS}/vm1"))),
        "the dry run sealed"
    );
    fx.prepare_ok("vm1");
    for d in ["vm1", "vm1/hosts/vm1", ".live/dots/sub/current"] {
        assert!(
            is_sealed(&fx.p(&format!("{WS}/{d}"))),
            "{d} is not sealed again"
        );
    }
}

/// What a guest's root wrote where no seal stopped it (an older version; a killed run's
/// lifted seal) is dealt with at the next start: directories sealed, anything else
/// quarantined (mode 0, sealed), a tree too deep quarantined whole; a dry run says so first.
#[test]
fn what_a_guest_wrote_into_a_placeholder_is_quarantined_at_the_next_start() {
    let fx = Fx::new();
    fx.runner("vm1", &[("ws", b"/var/lib/microvm-workspaces/vm1")]);
    fx.prepare_ok("vm1");
    let ph = fx.p(&format!("{WS}/vm1"));
    unseal_tree(&ph);
    let suid = ph.join("suid");
    std::fs::write(&suid, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::create_dir(ph.join("d")).unwrap();
    std::fs::write(ph.join("d/f"), b"x").unwrap();
    // What cannot be quarantined is removed: a symlink out of the tree (root would follow
    // it), a FIFO, a second name of someone's file (the first keeps its mode).
    std::os::unix::fs::symlink("/etc", ph.join("out")).unwrap();
    nix::unistd::mkfifo(
        &ph.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let someones = fx.write("/srv/someones-file", b"mine");
    std::fs::set_permissions(&someones, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::hard_link(&someones, ph.join("linked")).unwrap();
    let mut deep = ph.join("deep");
    for _ in 0..20 {
        deep = deep.join("x");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let plan = fx.prepare_dry("vm1");
    for line in [
        format!("quarantine (mode 0, sealed) {WS}/vm1/suid"),
        format!("quarantine (mode 0, sealed) {WS}/vm1/d/f"),
        format!("seal (immutable) {WS}/vm1/d"),
        format!("seal (immutable) {WS}/vm1"),
        format!("remove (a link or special file a guest planted) {WS}/vm1/out"),
        format!("remove (a link or special file a guest planted) {WS}/vm1/fifo"),
        format!("remove (a link or special file a guest planted) {WS}/vm1/linked"),
    ] {
        assert!(plan.contains(&line), "the dry run lacks '{line}': {plan}");
    }
    assert_eq!(meta(&suid).2, 0o4755, "the dry run changed {suid:?}");
    fx.prepare_ok("vm1");
    for f in [suid.clone(), ph.join("d/f")] {
        assert_eq!(meta(&f).2, 0, "{f:?} is not mode 0");
        assert!(is_sealed(&f), "{f:?} is not sealed");
    }
    for d in [ph.clone(), ph.join("d"), ph.join("deep")] {
        assert!(is_sealed(&d), "{d:?} is not sealed");
    }
    for gone in ["out", "fifo", "linked"] {
        assert!(
            std::fs::symlink_metadata(ph.join(gone)).is_err(),
            "{gone} is still there"
        );
    }
    assert_eq!(meta(&someones).2, 0o644, "someone's file lost its mode");
    assert!(!is_sealed(&someones), "someone's file was sealed");
    // Past the depth bound a directory is quarantined whole, not walked.
    let cut = (0..16).fold(ph.join("deep"), |p, _| p.join("x"));
    assert_eq!(meta(&cut).2, 0, "{cut:?}: the deep tree was not cut off");
    assert!(is_sealed(&cut), "{cut:?} is not sealed");
    // Nothing is left to do: the next start changes nothing.
    let again = fx.prepare_dry("vm1");
    assert!(
        !again.contains("quarantine") && !again.contains("seal"),
        "{again}"
    );
}

/// The window of a lifted seal: what appears in a sealed directory of ours while this code
/// changes it (a running guest racing) is quarantined as soon as the seal is back.
#[test]
fn what_appears_while_a_seal_is_lifted_is_quarantined_when_it_is_back() {
    let fx = Fx::new();
    fx.runner("vm1", &[("ws", b"/var/lib/microvm-workspaces/vm1")]);
    fx.prepare_ok("vm1");
    let root = Root::from_args(Some(fx.root())).unwrap();
    let tree = Tree::open(&root).unwrap();
    let Walk::Found(dir) = tree
        .walk(Path::new(&format!("{WS}/vm1")), Trust::All)
        .unwrap()
    else {
        panic!("no placeholder");
    };
    let ph = fx.p(&format!("{WS}/vm1"));
    seal::opened(&dir, || {
        // The guest, through virtiofsd, as root.
        std::fs::write(ph.join("planted"), b"x").unwrap();
        std::fs::set_permissions(ph.join("planted"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        std::os::unix::fs::symlink("/home", ph.join("hosts")).unwrap();
        Ok(())
    })
    .unwrap();
    assert!(is_sealed(&ph));
    assert_eq!(meta(&ph.join("planted")).2, 0);
    assert!(is_sealed(&ph.join("planted")));
    assert!(
        std::fs::symlink_metadata(ph.join("hosts")).is_err(),
        "the planted symlink is still there"
    );
}

/// A symlink in a placeholder is a guest's (made before sealing): root never follows it, or a
/// nested source behind it would be made and served in the tree it names (alice's home).
#[test]
fn a_symlink_a_guest_left_in_a_placeholder_is_never_followed() {
    let fx = Fx::new();
    fx.runner(
        "vm1",
        &[
            ("ws", b"/var/lib/microvm-workspaces/vm1"),
            ("deep", b"/var/lib/microvm-workspaces/vm1/hosts/vm1"),
        ],
    );
    fx.prepare_ok("vm1");
    let ph = fx.p(&format!("{WS}/vm1"));
    unseal_tree(&ph);
    std::fs::remove_dir_all(ph.join("hosts")).unwrap();
    let home = fx.mkdir("/home/alice", ALICE, 0o755);
    std::os::unix::fs::symlink("/home/alice", ph.join("hosts")).unwrap();
    let out = fx.prepare("vm1");
    assert!(
        !out.status.success(),
        "prepare followed the guest's symlink"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().count() == 1 && err.contains("where only a guest makes one"),
        "not one line saying why: {err}"
    );
    assert!(!home.join("vm1").exists(), "made in alice's home");
}

fn libc_eperm() -> i32 {
    nix::errno::Errno::EPERM as i32
}

#[test]
fn placeholder_owner_and_mode_come_from_config() {
    let fx = Fx::new();
    fx.config(r#"{"placeholder": {"user": "65534", "group": "65533", "mode": "0500"}}"#);
    fx.runner("vm1", &[("workspace", b"/var/lib/microvm-workspaces/vm1")]);
    fx.prepare_ok("vm1");
    assert_eq!(
        meta(&fx.p("/var/lib/microvm-workspaces/vm1")),
        (65534, 65533, 0o500)
    );
}

#[test]
fn children_of_placeholders_are_placeholders_and_root_parents_are_0755() {
    let fx = Fx::new();
    fx.runner(
        "vm1",
        &[
            ("ws", b"/var/lib/microvm-workspaces/vm1"),
            (
                "deep",
                b"/var/lib/microvm-workspaces/vm1/hosts/microvms/vm1",
            ),
            ("outside", b"/srv/shares/a/b"),
        ],
    );
    fx.prepare_ok("vm1");
    for p in [
        "/var/lib/microvm-workspaces/vm1/hosts",
        "/var/lib/microvm-workspaces/vm1/hosts/microvms/vm1",
    ] {
        assert_eq!(meta(&fx.p(p)), (0, 0, 0o555), "{p}");
        assert!(is_marked(&fx.p(p)), "{p} must be a placeholder");
    }
    // Missing parents in a root-owned tree: plain root 0755; the leaf a placeholder.
    for p in ["/srv/shares", "/srv/shares/a"] {
        assert_eq!(meta(&fx.p(p)), (0, 0, 0o755), "{p}");
        assert!(!is_marked(&fx.p(p)), "{p} must not be a placeholder");
    }
    assert!(is_marked(&fx.p("/srv/shares/a/b")));
}

#[test]
fn relative_source_resolves_against_the_vm_state_dir() {
    let fx = Fx::new();
    fx.runner("vm1", &[("data", b"data/../shared")]);
    fx.prepare_ok("vm1");
    assert!(is_marked(&fx.p("/var/lib/microvms/vm1/shared")));
    assert_eq!(
        fx.record("vm1")["shares"][0]["path"],
        "/var/lib/microvms/vm1/shared"
    );
}

#[test]
fn existing_directories_and_their_content_are_left_exactly_as_they_are() {
    let fx = Fx::new();
    fx.runner(
        "vm1",
        &[
            ("ws", b"/var/lib/microvm-workspaces/vm1"),
            ("data", b"/srv/data"),
        ],
    );
    fx.mkdir(WS, 0, 0o755);
    fx.mkdir("/var/lib/microvm-workspaces/vm1", ALICE, 0o700);
    fx.write("/var/lib/microvm-workspaces/vm1/notes", b"mine");
    fx.mkdir("/srv/data", 0, 0o1777);
    let before = fx.snapshot();
    fx.prepare_ok("vm1");
    let mut after = fx.snapshot();
    // Only our own bookkeeping may appear: the lock and the /run record.
    after.retain(|p, _| !p.starts_with("run") && !p.ends_with(".lock"));
    assert_eq!(before, after);
    assert_eq!(fx.record("vm1")["shares"][0]["kind"], "existing");
}

#[test]
fn a_users_own_0555_directory_is_not_taken_for_a_placeholder() {
    let fx = Fx::new();
    fx.runner("vm1", &[("ws", b"/var/lib/microvm-workspaces/vm1")]);
    fx.mkdir(WS, 0, 0o755);
    // Forged: same owner and mode as a placeholder, but no trusted mark (which a user
    // cannot set).
    fx.mkdir("/var/lib/microvm-workspaces/vm1", 0, 0o555);
    fx.prepare_ok("vm1");
    assert_eq!(fx.record("vm1")["shares"][0]["kind"], "existing");
    assert!(!is_marked(&fx.p("/var/lib/microvm-workspaces/vm1")));
}

#[test]
fn nix_store_sources_are_never_created_or_touched() {
    let fx = Fx::new();
    fx.runner("vm1", &[("store", b"/nix/store")]);
    let before = fx.snapshot();
    fx.prepare_ok("vm1");
    let mut after = fx.snapshot();
    after.retain(|p, _| !p.starts_with("run"));
    assert_eq!(before, after);

    let fx = Fx::new();
    fx.runner("vm1", &[("gone", b"/nix/store/1111-missing")]);
    let out = fx.prepare("vm1");
    assert_one_line_error(
        &out,
        &[
            "vm1",
            "\"gone\"",
            "/nix/store/1111-missing",
            "never created",
        ],
    );
    assert!(!fx.p("/nix/store/1111-missing").exists());
}

#[test]
fn a_file_where_a_directory_belongs_fails_and_touches_nothing() {
    let fx = Fx::new();
    // Sorted parents first, so the placeholder share would be made before the bad one if
    // prepare did not look before it leaps.
    fx.runner(
        "vm1",
        &[
            ("a", b"/srv/a"),
            ("bad", b"/srv/x/file/below"),
            ("c", b"/srv/c"),
        ],
    );
    fx.write("/srv/x/file", b"not a dir");
    let before = fx.snapshot();
    let out = fx.prepare("vm1");
    assert_one_line_error(&out, &["vm1", "\"bad\"", "/srv/x/file", "not a directory"]);
    assert_eq!(
        before,
        fx.snapshot(),
        "a failing prepare must change nothing"
    );

    let fx = Fx::new();
    fx.runner("vm1", &[("sock", b"/srv/thing")]);
    fx.write("/srv/thing", b"");
    let out = fx.prepare("vm1");
    assert_one_line_error(
        &out,
        &["\"sock\"", "/srv/thing", "exists but is not a directory"],
    );
}

/// What is wrong, the runner's source, the config (if any), what the error must say.
type Malformed<'a> = (&'a str, &'a [u8], Option<&'a str>, &'a [&'a str]);

#[test]
fn malformed_input_gives_one_line_errors() {
    let cases: [Malformed; 5] = [
        (
            "bad json",
            b"/x",
            Some("{\"vms\": "),
            &["config", "config.json", "EOF"],
        ),
        (
            "unknown key",
            b"/x",
            Some(r#"{"workspaceDirectory": "/x"}"#),
            &["unknown field `workspaceDirectory`"],
        ),
        (
            "non-utf8 source",
            b"/srv/\xff\xfe",
            None,
            &["not valid UTF-8", "\\xff"],
        ),
        (
            "newline source",
            b"/srv/a\n/srv/b",
            None,
            &["newline", "/srv/a"],
        ),
        (
            "bad mode",
            b"/x",
            Some(r#"{"placeholder": {"mode": "rwx"}}"#),
            &["placeholder.mode"],
        ),
    ];
    for (what, source, config, needles) in cases {
        let fx = Fx::new();
        fx.runner("vm1", &[("t", source)]);
        if let Some(c) = config {
            fx.config(c);
        }
        let before = fx.snapshot();
        let out = fx.prepare("vm1");
        eprintln!("{what}: {}", String::from_utf8_lossy(&out.stderr));
        assert_one_line_error(&out, needles);
        assert_eq!(before, fx.snapshot(), "{what}: nothing may change");
    }
}

#[test]
fn unknown_vm_and_bad_names_are_refused() {
    let fx = Fx::new();
    fx.runner("vm1", &[("t", b"/srv/a")]);
    fx.config(r#"{"vms": {"vm2": {"shares": []}}}"#);
    assert_one_line_error(
        &fx.prepare("nope"),
        &["unknown VM \"nope\"", "known VMs: vm1, vm2"],
    );
    assert_one_line_error(&fx.prepare("../etc"), &["VM name \"../etc\""]);
    assert_one_line_error(&fx.prepare("a/b"), &["VM name", "'/'"]);
    assert_one_line_error(&fx.prepare(".links"), &["starts with '.'"]);
}

#[test]
fn the_unit_instance_escaping_is_decoded() {
    let fx = Fx::new();
    fx.runner("ümlaut", &[("t", b"/srv/u")]);
    // systemd passes %i, which for this VM is \xc3\xbcmlaut.
    fx.prepare_ok("\\xc3\\xbcmlaut");
    assert!(is_marked(&fx.p("/srv/u")));
    assert!(fx.p("/run/microvm-workspaces/ümlaut.json").exists());
}

#[test]
fn config_shares_including_9p_are_prepared_and_the_runner_wins_on_a_tag() {
    let fx = Fx::new();
    fx.runner("vm1", &[("ws", b"/srv/from-runner")]);
    fx.config(
        r#"{"vms": {"vm1": {"hostName": "vm1", "shares": [
            {"tag": "ws", "proto": "virtiofs", "source": "/srv/from-config", "readOnly": true},
            {"tag": "nine", "proto": "9p", "source": "/srv/ninep"}]}}}"#,
    );
    fx.prepare_ok("vm1");
    assert!(fx.p("/srv/from-runner").is_dir());
    assert!(!fx.p("/srv/from-config").exists());
    assert!(is_marked(&fx.p("/srv/ninep")));
    // A VM only in the config (an imperative one not installed yet) is known too.
    fx.config(
        r#"{"vms": {"cfgonly": {"shares": [{"tag": "a", "proto": "9p", "source": "/srv/c"}]}}}"#,
    );
    fx.prepare_ok("cfgonly");
    assert!(is_marked(&fx.p("/srv/c")));
}

#[test]
fn a_second_run_changes_nothing_and_plans_nothing() {
    let fx = Fx::new();
    fx.runner(
        "vm1",
        &[
            ("a", b"/var/lib/microvm-workspaces/vm1"),
            ("b", b"/var/lib/microvm-workspaces/vm1/x/y"),
            ("c", b"rel"),
        ],
    );
    fx.prepare_ok("vm1");
    let mut first = fx.snapshot();
    fx.prepare_ok("vm1");
    let mut second = fx.snapshot();
    for s in [&mut first, &mut second] {
        s.retain(|p, _| !p.starts_with("run"));
    }
    assert_eq!(first, second);
    let plan = String::from_utf8(fx.run(PREPARE, &["--dry-run", "vm1"]).stdout).unwrap();
    assert_eq!(plan.trim(), "vm1: every share source exists; nothing to do");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let fx = Fx::new();
    fx.runner(
        "vm1",
        &[
            ("a", b"/var/lib/microvm-workspaces/vm1"),
            ("b", b"/var/lib/microvm-workspaces/vm1/x"),
        ],
    );
    let before = fx.snapshot();
    let out = fx.run(PREPARE, &["--dry-run", "vm1"]);
    assert_ok(&out);
    assert_eq!(before, fx.snapshot());
    let plan = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        plan.lines().collect::<Vec<_>>(),
        [
            "would create directory /var/lib/microvm-workspaces (root, 0755)",
            "would create placeholder /var/lib/microvm-workspaces/vm1 (uid 0, gid 0, 0555)",
            "would create placeholder /var/lib/microvm-workspaces/vm1/x (uid 0, gid 0, 0555)",
        ]
    );
}

#[test]
fn directories_in_a_users_tree_are_created_with_the_users_credentials() {
    let fx = Fx::new();
    fx.repo("/home/alice/proj", ALICE);
    fx.runner("vm1", &[("deep", b"/home/alice/proj/hosts/microvms/vm1")]);
    fx.prepare_ok("vm1");
    for p in [
        "/home/alice/proj/hosts",
        "/home/alice/proj/hosts/microvms",
        "/home/alice/proj/hosts/microvms/vm1",
    ] {
        assert_eq!(meta(&fx.p(p)), (ALICE, ALICE, 0o755), "{p}");
        assert!(!is_marked(&fx.p(p)));
    }
    assert_eq!(fx.record("vm1")["shares"][0]["kind"], "created-in-repo");
}

#[test]
fn a_read_only_user_directory_is_not_overridden_by_root() {
    let fx = Fx::new();
    fx.repo("/home/alice/proj", ALICE);
    fx.mkdir("/home/alice/proj/locked", ALICE, 0o555);
    fx.runner("vm1", &[("x", b"/home/alice/proj/locked/sub")]);
    // Created as alice, the mkdir must fail as it would for her; root would have succeeded.
    assert_one_line_error(&fx.prepare("vm1"), &["as uid 4242", "Permission denied"]);
    assert!(!fx.p("/home/alice/proj/locked/sub").exists());
}

#[test]
fn a_users_symlink_cannot_lead_root_into_etc() {
    for (how, target) in [
        ("absolute", "/etc"),
        ("relative", "../../../etc"),
        ("via parent", ".."),
    ] {
        let fx = Fx::new();
        fx.repo("/home/alice/proj", ALICE);
        fx.mkdir("/etc", 0, 0o755);
        fx.symlink_as(target, "/home/alice/proj/hosts", ALICE);
        let src = if how == "via parent" {
            "/home/alice/proj/hosts/../etc/evil"
        } else {
            "/home/alice/proj/hosts/evil"
        };
        fx.runner("vm1", &[("x", src.as_bytes())]);
        let before = fx.snapshot();
        let out = fx.prepare("vm1");
        // "via parent" is lexically normalized (".." of what the admin wrote) to
        // /home/alice/proj/etc/evil, a plain path in alice's tree: created as alice, not root.
        if how == "via parent" {
            assert_ok(&out);
            assert_eq!(meta(&fx.p("/home/alice/proj/etc/evil")).0, ALICE);
            assert!(!fx.p("/etc/evil").exists());
            continue;
        }
        assert_one_line_error(&out, &["unsafe path transition"]);
        assert!(
            !fx.p("/etc/evil").exists(),
            "{how}: root created something under /etc"
        );
        assert_eq!(before, fx.snapshot(), "{how}");
    }
}

#[test]
fn dangling_symlinks_are_not_created_through() {
    let fx = Fx::new();
    fx.symlink("/srv/nowhere", "/srv/dangling");
    fx.runner("vm1", &[("x", b"/srv/dangling")]);
    assert_one_line_error(
        &fx.prepare("vm1"),
        &["dangling symbolic link", "/srv/nowhere"],
    );
    assert!(!fx.p("/srv/nowhere").exists());
}

#[test]
fn symlink_loops_fail_cleanly() {
    let fx = Fx::new();
    fx.symlink("/srv/b", "/srv/a");
    fx.symlink("/srv/a", "/srv/b");
    fx.runner("vm1", &[("x", b"/srv/a/sub")]);
    assert_one_line_error(&fx.prepare("vm1"), &["too many levels of symbolic links"]);
}

#[test]
fn a_source_that_is_itself_a_symlink_is_left_alone_with_a_warning() {
    let fx = Fx::new();
    fx.mkdir("/srv/real", 0, 0o755);
    fx.symlink("/srv/real", "/srv/alias");
    fx.runner("vm1", &[("x", b"/srv/alias"), ("y", b"/srv/alias/sub")]);
    let out = fx.prepare("vm1");
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    // Only the share whose *last* component is the symlink: through a parent is fine.
    assert_eq!(
        err.matches("virtiofsd 1.14 and later refuse").count(),
        1,
        "{err}"
    );
    assert!(err.contains("\"x\""), "{err}");
    assert!(std::fs::symlink_metadata(fx.p("/srv/alias"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn absolute_symlinks_resolve_inside_the_root() {
    let fx = Fx::new();
    fx.mkdir("/srv/real", 0, 0o755);
    fx.symlink("/srv/real", "/srv/alias");
    fx.runner("vm1", &[("x", b"/srv/alias/sub")]);
    fx.prepare_ok("vm1");
    assert!(is_marked(&fx.p("/srv/real/sub")));
    assert_eq!(fx.record("vm1")["shares"][0]["resolved"], "/srv/real/sub");
}

#[test]
fn the_run_record_names_each_tag_its_resolution_and_kind() {
    let fx = Fx::new();
    fx.runner("vm1", &[("a", b"/srv/a")]);
    fx.mkdir("/srv/a", 0, 0o755);
    fx.prepare_ok("vm1");
    let rec = fx.record("vm1");
    let s = &rec["shares"][0];
    let m = std::fs::metadata(fx.p("/srv/a")).unwrap();
    assert_eq!(rec["vm"], "vm1");
    assert_eq!(s["tag"], "a");
    assert_eq!(s["source"], "/srv/a");
    assert_eq!(s["device"], m.dev());
    assert_eq!(s["inode"], m.ino());
    assert_eq!(s["kind"], "existing");
    // Readable by everyone: `microvm-link status` also runs unprivileged.
    assert_eq!(
        meta(&fx.p("/run/microvm-workspaces/vm1.json")),
        (0, 0, 0o644)
    );
    // A dry run writes no record.
    let fx = Fx::new();
    fx.runner("vm1", &[("a", b"/srv/a")]);
    assert_ok(&fx.run(PREPARE, &["--dry-run", "vm1"]));
    assert!(!fx.p("/run/microvm-workspaces/vm1.json").exists());
}

#[test]
fn eight_prepares_of_vms_sharing_sources_run_in_parallel_without_failing() {
    for round in 0..5 {
        let fx = Fx::new();
        for i in 0..8 {
            let vm = format!("vm{i}");
            let own = format!("/var/lib/microvm-workspaces/{vm}/hosts/microvms/{vm}");
            fx.runner(
                &vm,
                &[
                    ("nixfiles", b"/var/lib/microvm-workspaces/nixfiles"),
                    ("secrets", b"/var/lib/microvm-workspaces/nix-secrets"),
                    (
                        "shared",
                        b"/var/lib/microvm-workspaces/nixfiles/hosts/microvms/common",
                    ),
                    ("own", own.as_bytes()),
                ],
            );
        }
        let children: Vec<_> = (0..8)
            .map(|i| {
                Run::prepare(&fx, &format!("vm{i}"))
                    .command()
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for p in [
            "nixfiles",
            "nix-secrets",
            "nixfiles/hosts/microvms/common",
            "vm3/hosts/microvms/vm3",
        ] {
            assert!(is_marked(&fx.p(&format!("{WS}/{p}"))), "{p}");
        }
        // No temporary names left behind.
        let left = leftovers(&fx.p(WS));
        assert!(left.is_empty(), "{left:?}");
    }
}

// ---- links (record + bind mount), each in a private mount namespace ----

fn link_record(fx: &Fx, name: &str, target: &str, owner: u32) {
    fx.mkdir(&format!("{WS}/.links"), 0, 0o755);
    let rec = format!("{WS}/.links/{name}");
    fx.symlink_as(target, &rec, owner);
}

/// alice's nixfiles recorded as linked, and vm1 sharing the entry and a path below it.
fn nixfiles_linked_with_vm1(fx: &Fx) {
    fx.repo("/home/alice/nixfiles", ALICE);
    link_record(fx, "nixfiles", "/home/alice/nixfiles", ALICE);
    fx.runner(
        "vm1",
        &[
            ("nixfiles", b"/var/lib/microvm-workspaces/nixfiles"),
            (
                "host",
                b"/var/lib/microvm-workspaces/nixfiles/hosts/microvms/vm1",
            ),
        ],
    );
}

#[test]
fn a_recorded_link_is_mounted_and_sources_below_it_are_created_as_the_repo_owner() {
    in_mount_ns!(a_recorded_link_is_mounted_and_sources_below_it_are_created_as_the_repo_owner);
    let fx = Fx::new();
    nixfiles_linked_with_vm1(&fx);
    fx.write("/home/alice/nixfiles/marker", b"repo");
    fx.prepare_ok("vm1");
    let entry = fx.p("/var/lib/microvm-workspaces/nixfiles");
    assert!(
        is_mountpoint(&entry),
        "the repo must be bind-mounted on the entry"
    );
    assert_eq!(std::fs::read(entry.join("marker")).unwrap(), b"repo");
    // Created in the real repo, owned by its owner, not root.
    assert_eq!(
        meta(&fx.p("/home/alice/nixfiles/hosts/microvms/vm1")),
        (ALICE, ALICE, 0o755)
    );
    let rec = fx.record("vm1");
    assert_eq!(rec["shares"][1]["kind"], "created-in-repo");
    // Under the mount, the entry is a placeholder (what shows when the link goes away).
    nix::mount::umount2(&entry, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert!(is_marked(&entry));
    // And after a "reboot" (mount gone, record kept) the next prepare mounts it again.
    fx.prepare_ok("vm1");
    assert!(is_mountpoint(&entry));
    assert!(entry.join("marker").exists());
}

#[test]
fn a_linked_repo_moved_away_uncovers_the_placeholder_and_sources_below_it_are_made_there() {
    in_mount_ns!(
        a_linked_repo_moved_away_uncovers_the_placeholder_and_sources_below_it_are_made_there
    );
    let fx = Fx::new();
    nixfiles_linked_with_vm1(&fx);
    fx.prepare_ok("vm1");
    let entry = fx.p("/var/lib/microvm-workspaces/nixfiles");
    assert!(is_mountpoint(&entry));
    // Moved away while linked: the mount still shows it, sources below it included.
    std::fs::rename(fx.p("/home/alice/nixfiles"), fx.p("/home/alice/moved")).unwrap();
    let moved = fx.snapshot();
    let out = fx.prepare("vm1");
    assert_ok(&out);
    assert!(!is_mountpoint(&entry) && is_marked(&entry));
    // The source below the entry is there again, made on the placeholder, not found in (or
    // made in) the moved repo through the mount that went.
    let host = fx.p("/var/lib/microvm-workspaces/nixfiles/hosts/microvms/vm1");
    assert!(is_marked(&host), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fx.record("vm1")["shares"][1]["kind"], "placeholder");
    let mut now = fx.snapshot();
    now.retain(|p, _| p.starts_with("home"));
    let mut was = moved;
    was.retain(|p, _| p.starts_with("home"));
    assert_eq!(was, now, "the moved repo was changed");
}

#[test]
fn a_record_whose_repo_is_gone_leaves_the_placeholder_serving() {
    in_mount_ns!(a_record_whose_repo_is_gone_leaves_the_placeholder_serving);
    let fx = Fx::new();
    link_record(&fx, "vm1", "/home/alice/moved-away", ALICE);
    fx.runner("vm1", &[("ws", b"/var/lib/microvm-workspaces/vm1")]);
    let out = fx.prepare("vm1");
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is gone; the placeholder serves"));
    let entry = fx.p("/var/lib/microvm-workspaces/vm1");
    assert!(is_marked(&entry) && !is_mountpoint(&entry));
    assert_eq!(
        std::fs::read_link(fx.p(&format!("{WS}/.links/vm1")))
            .unwrap()
            .to_str(),
        Some("/home/alice/moved-away")
    );
}

#[test]
fn a_repo_deleted_while_mounted_is_unmounted() {
    in_mount_ns!(a_repo_deleted_while_mounted_is_unmounted);
    let fx = Fx::new();
    fx.repo("/home/alice/r", ALICE);
    link_record(&fx, "vm1", "/home/alice/r", ALICE);
    fx.runner("vm1", &[("ws", b"/var/lib/microvm-workspaces/vm1")]);
    fx.prepare_ok("vm1");
    let entry = fx.p("/var/lib/microvm-workspaces/vm1");
    assert!(is_mountpoint(&entry));
    std::fs::remove_dir(fx.p("/home/alice/r")).unwrap();
    fx.prepare_ok("vm1");
    assert!(
        !is_mountpoint(&entry),
        "a mount of a deleted directory must go"
    );
    assert!(is_marked(&entry));
    // Re-created at the same path: mounted again (a different directory than before).
    fx.repo("/home/alice/r", ALICE);
    fx.write("/home/alice/r/new", b"");
    fx.prepare_ok("vm1");
    assert!(entry.join("new").exists());
}

#[test]
fn legacy_symlinks_in_the_workspace_dir_are_migrated() {
    in_mount_ns!(legacy_symlinks_in_the_workspace_dir_are_migrated);
    let fx = Fx::new();
    fx.repo("/home/alice/r", ALICE);
    fx.write("/home/alice/r/marker", b"x");
    fx.mkdir(WS, 0, 0o755);
    fx.symlink("/home/alice/r", &format!("{WS}/vm1"));
    fx.symlink("/home/alice/gone", &format!("{WS}/vm2"));
    fx.runner("vm1", &[("ws", b"/var/lib/microvm-workspaces/vm1")]);
    fx.runner("vm2", &[("ws", b"/var/lib/microvm-workspaces/vm2")]);
    fx.prepare_ok("vm1");
    fx.prepare_ok("vm2");
    for (vm, target) in [("vm1", "/home/alice/r"), ("vm2", "/home/alice/gone")] {
        let entry = fx.p(&format!("{WS}/{vm}"));
        let m = std::fs::symlink_metadata(&entry).unwrap();
        assert!(m.is_dir(), "{vm}: the entry must now be a real directory");
        assert_eq!(
            std::fs::read_link(fx.p(&format!("{WS}/.links/{vm}")))
                .unwrap()
                .to_str(),
            Some(target)
        );
    }
    assert!(
        fx.p(&format!("{WS}/vm1/marker")).exists(),
        "vm1's repo must be mounted"
    );
    assert!(is_mountpoint(&fx.p(&format!("{WS}/vm1"))));
    assert!(!is_mountpoint(&fx.p(&format!("{WS}/vm2"))));
    assert!(is_marked(&fx.p(&format!("{WS}/vm2"))));
}

#[test]
fn a_repo_not_owned_by_the_linker_is_not_mounted() {
    in_mount_ns!(a_repo_not_owned_by_the_linker_is_not_mounted);
    let fx = Fx::new();
    fx.repo("/home/bob/secret", BOB);
    link_record(&fx, "vm1", "/home/bob/secret", ALICE);
    fx.runner("vm1", &[("ws", b"/var/lib/microvm-workspaces/vm1")]);
    // Not a repo of the link's maker any more: as good as gone (issue 18). The placeholder
    // serves and the start goes on, with a warning naming both.
    let out = fx.prepare("vm1");
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("owned by uid 4343") && err.contains("made by uid 4242"),
        "{err}"
    );
    assert!(!is_mountpoint(&fx.p(&format!("{WS}/vm1"))));
    assert!(is_marked(&fx.p(&format!("{WS}/vm1"))));
}

#[test]
fn a_users_symlink_in_a_sticky_root_directory_is_judged_by_its_owner() {
    // /tmp is root's, but the link in it is alice's: the step after it is judged from alice,
    // as systemd's chase() does, so it cannot lead root into /etc (absolute or relative).
    for (target, src) in [
        ("/etc/sudoers.d", "/tmp/scratch/data"),
        ("../etc", "/tmp/scratch/evil"),
    ] {
        let fx = Fx::new();
        fx.mkdir("/tmp", 0, 0o1777);
        fx.mkdir("/etc/sudoers.d", 0, 0o755);
        fx.symlink_as(target, "/tmp/scratch", ALICE);
        fx.runner("vm1", &[("x", src.as_bytes())]);
        let before = fx.snapshot();
        assert_one_line_error(
            &fx.prepare("vm1"),
            &["unsafe path transition", "/tmp/scratch"],
        );
        assert_eq!(before, fx.snapshot(), "{target}");
        // The control: the same link owned by root is followed.
        std::os::unix::fs::lchown(fx.p("/tmp/scratch"), Some(0), Some(0)).unwrap();
        fx.prepare_ok("vm1");
    }
}

#[test]
fn a_runner_not_owned_by_root_is_not_believed() {
    // Whoever owns <stateDir>/<vm> can point `current` at a runner of their own making, whose
    // sources would be created as root: /etc/nologin would lock every user out.
    let fx = Fx::new();
    fx.runner("vm1", &[("x", b"/etc/nologin")]);
    let store = fx.p("/nix/store/0000-microvm-vm1");
    for d in ["", "/share", "/share/microvm", "/share/microvm/virtiofs"] {
        std::os::unix::fs::chown(format!("{}{d}", store.display()), Some(ALICE), Some(ALICE))
            .unwrap();
    }
    let before = fx.snapshot();
    assert_one_line_error(&fx.prepare("vm1"), &["owned by uid 4242, not root"]);
    assert_eq!(before, fx.snapshot());
}
