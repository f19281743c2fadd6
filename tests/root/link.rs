//! microvm-link against a temporary root with --no-restart (re-rooted runs never restart), each
//! test that mounts in its own private mount namespace. The restart path is proven for real
//! by the end-to-end suite (tests/e2e).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::*;

const WS: &str = "/var/lib/microvm-workspaces";

fn status_json(fx: &Fx) -> serde_json::Value {
    let out = fx.run(LINK, &["status", "--json"]);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn vm_status<'a>(st: &'a serde_json::Value, vm: &str) -> &'a serde_json::Value {
    st["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vm"] == vm)
        .unwrap_or_else(|| panic!("{vm} not in {st}"))
}

/// The record target of entry `name`, and whether the entry shows that repo right now.
fn agree(fx: &Fx, name: &str) -> (Option<PathBuf>, bool) {
    let rec = std::fs::read_link(fx.p(&format!("{WS}/.links/{name}"))).ok();
    let entry = std::fs::metadata(fx.p(&format!("{WS}/{name}"))).unwrap();
    let shows = match &rec {
        Some(t) => std::fs::metadata(fx.p(t.to_str().unwrap()))
            .map(|m| (m.dev(), m.ino()) == (entry.dev(), entry.ino()))
            .unwrap_or(false),
        None => is_marked(&fx.p(&format!("{WS}/{name}"))),
    };
    (rec, shows)
}

use std::os::unix::fs::MetadataExt;

fn repo_with_marker(fx: &Fx, inside: &str, uid: u32) {
    fx.repo(inside, uid);
    fx.mkdir(&format!("{inside}/.git"), uid, 0o755);
    fx.write(&format!("{inside}/marker"), inside.as_bytes());
}

fn vm1_fixture() -> Fx {
    let fx = Fx::new();
    fx.runner("vm1", &[("workspace", b"/var/lib/microvm-workspaces/vm1")]);
    fx.runner(
        "vm2",
        &[
            ("vm1ro", b"/var/lib/microvm-workspaces/vm1"),
            ("own", b"/var/lib/microvm-workspaces/vm2"),
        ],
    );
    fx.runner("vm3", &[("other", b"/var/lib/microvm-workspaces/vm3")]);
    fx
}

#[test]
fn linking_from_inside_a_repo_derives_the_vm_and_mounts_it() {
    in_mount_ns!(linking_from_inside_a_repo_derives_the_vm_and_mounts_it);
    let fx = vm1_fixture();
    repo_with_marker(&fx, "/home/alice/vm1", ALICE);
    fx.mkdir("/home/alice/vm1/src/deep", ALICE, 0o755);
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/vm1/src/deep")
        .args(["--no-restart"])
        .ok_stdout();
    assert!(
        out.contains("linked /var/lib/microvm-workspaces/vm1 -> /home/alice/vm1"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(fx.p(&format!("{WS}/vm1/marker"))).unwrap(),
        b"/home/alice/vm1"
    );
    let rec = fx.p(&format!("{WS}/.links/vm1"));
    assert_eq!(
        std::fs::read_link(&rec).unwrap(),
        Path::new("/home/alice/vm1")
    );
    assert_eq!(
        std::fs::symlink_metadata(&rec).unwrap().uid(),
        ALICE,
        "the record says who linked"
    );
    assert!(is_mountpoint(&fx.p(&format!("{WS}/vm1"))));
}

#[test]
fn an_unknown_vm_is_an_error_listing_the_known_ones() {
    let fx = vm1_fixture();
    repo_with_marker(&fx, "/home/alice/webapp", ALICE);
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/webapp")
        .args(["--no-restart"])
        .output();
    assert_one_line_error(&out, &["unknown VM \"webapp\"", "known VMs: vm1, vm2, vm3"]);
    assert!(
        !fx.p(WS).exists(),
        "nothing may be created for an unknown VM"
    );
}

#[test]
fn a_repo_owned_by_another_user_is_refused() {
    let fx = vm1_fixture();
    repo_with_marker(&fx, "/home/bob/vm1", BOB);
    let before = fx.snapshot();
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/bob/vm1")
        .args(["--no-restart"])
        .output();
    assert_one_line_error(&out, &["owned by uid 4343", "not by you (uid 4242)"]);
    assert_eq!(before, fx.snapshot());
    // Root may link anything.
    let out = Run::link(&fx)
        .user(0)
        .cwd("/home/bob/vm1")
        .args(["--no-restart", "--dry-run"])
        .output();
    assert_ok(&out);
}

#[test]
fn relinking_never_makes_the_path_vanish_and_record_and_mount_agree() {
    in_mount_ns!(relinking_never_makes_the_path_vanish_and_record_and_mount_agree);
    let fx = vm1_fixture();
    repo_with_marker(&fx, "/home/alice/a", ALICE);
    repo_with_marker(&fx, "/home/alice/b", ALICE);
    fx.prepare_ok("vm1"); // the placeholder
    let entry = fx.p(&format!("{WS}/vm1"));
    let stop = Arc::new(AtomicBool::new(false));
    let looks = Arc::new(AtomicUsize::new(0));
    let observer = {
        let (stop, looks, entry) = (stop.clone(), looks.clone(), entry.clone());
        std::thread::spawn(move || {
            let mut vanished = 0;
            while !stop.load(Ordering::Relaxed) {
                match std::fs::symlink_metadata(&entry) {
                    Ok(m) if m.is_dir() => {}
                    _ => vanished += 1,
                }
                looks.fetch_add(1, Ordering::Relaxed);
            }
            vanished
        })
    };
    for round in 0..10 {
        Run::link(&fx)
            .user(ALICE)
            .cwd("/home/alice/a")
            .args(["vm1", "--no-restart"])
            .ok_stdout();
        assert_eq!(
            agree(&fx, "vm1"),
            (Some("/home/alice/a".into()), true),
            "round {round}"
        );
        Run::link(&fx)
            .user(ALICE)
            .cwd("/home/alice/b")
            .args(["vm1", "--no-restart"])
            .ok_stdout();
        assert_eq!(
            agree(&fx, "vm1"),
            (Some("/home/alice/b".into()), true),
            "round {round}"
        );
        Run::link(&fx)
            .user(ALICE)
            .cwd("/")
            .args(["unlink", "vm1", "--no-restart"])
            .ok_stdout();
        assert_eq!(
            agree(&fx, "vm1"),
            (None, true),
            "round {round}: the placeholder again"
        );
        assert!(!is_mountpoint(&entry));
    }
    stop.store(true, Ordering::Relaxed);
    let vanished = observer.join().unwrap();
    let n = looks.load(Ordering::Relaxed);
    assert!(n > 1000, "the observer looked only {n} times");
    assert_eq!(
        vanished, 0,
        "{WS}/vm1 was not a directory {vanished} times out of {n}"
    );
}

#[test]
fn a_users_directory_in_the_way_is_moved_aside_not_deleted() {
    in_mount_ns!(a_users_directory_in_the_way_is_moved_aside_not_deleted);
    let fx = vm1_fixture();
    repo_with_marker(&fx, "/home/alice/vm1", ALICE);
    fx.mkdir(WS, 0, 0o755);
    fx.mkdir(&format!("{WS}/vm1"), ALICE, 0o755);
    fx.write(&format!("{WS}/vm1/precious"), b"do not lose me");
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/vm1")
        .args(["--no-restart"])
        .ok_stdout();
    assert!(out.contains("moved your directory /var/lib/microvm-workspaces/vm1 aside to /var/lib/microvm-workspaces/.displaced/vm1."), "{out}");
    let kept: Vec<_> = std::fs::read_dir(fx.p(&format!("{WS}/.displaced")))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        std::fs::read(kept[0].path().join("precious")).unwrap(),
        b"do not lose me"
    );
    assert_eq!(agree(&fx, "vm1"), (Some("/home/alice/vm1".into()), true));
}

#[test]
fn companions_are_linked_when_present_and_placeholders_when_not() {
    in_mount_ns!(companions_are_linked_when_present_and_placeholders_when_not);
    let fx = Fx::new();
    fx.config(r#"{"companions": {"nixfiles": {"nix-secrets": "../nix-secrets"}}}"#);
    fx.runner(
        "nixfiles",
        &[
            ("nixfiles", b"/var/lib/microvm-workspaces/nixfiles"),
            ("secrets", b"/var/lib/microvm-workspaces/nix-secrets"),
        ],
    );
    repo_with_marker(&fx, "/home/alice/nixfiles", ALICE);
    repo_with_marker(&fx, "/home/alice/nix-secrets", ALICE);
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/nixfiles")
        .args(["--no-restart"])
        .ok_stdout();
    assert!(
        out.contains("linked /var/lib/microvm-workspaces/nix-secrets -> /home/alice/nix-secrets"),
        "{out}"
    );
    assert_eq!(
        agree(&fx, "nix-secrets"),
        (Some("/home/alice/nix-secrets".into()), true)
    );
    // A second checkout without the sibling: the companion becomes a placeholder again.
    repo_with_marker(&fx, "/home/alice/other/nixfiles", ALICE);
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/other/nixfiles")
        .args(["--no-restart"])
        .ok_stdout();
    assert!(
        out.contains("unlinked /var/lib/microvm-workspaces/nix-secrets"),
        "{out}"
    );
    assert_eq!(agree(&fx, "nix-secrets"), (None, true));
    assert!(!is_mountpoint(&fx.p(&format!("{WS}/nix-secrets"))));
    // A sibling owned by someone else is not linked for alice.
    repo_with_marker(&fx, "/home/alice/third/nixfiles", ALICE);
    repo_with_marker(&fx, "/home/alice/third/nix-secrets", BOB);
    Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/third/nixfiles")
        .args(["--no-restart"])
        .ok_stdout();
    assert_eq!(agree(&fx, "nix-secrets"), (None, true));
}

#[test]
fn nested_sources_of_every_vm_appear_in_the_real_repo_owned_by_its_owner() {
    in_mount_ns!(nested_sources_of_every_vm_appear_in_the_real_repo_owned_by_its_owner);
    let fx = Fx::new();
    fx.nixfiles_with_hosts(&["web", "db"]);
    fx.prepare_ok("web"); // placeholders for now
    repo_with_marker(&fx, "/home/alice/nixfiles", ALICE);
    // What each VM gets ensured, as the dry run says it and as the act does it.
    let ensured = |out: &str, prefix: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
            .collect()
    };
    let plan = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/nixfiles")
        .args(["--no-restart", "--dry-run"])
        .ok_stdout();
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/nixfiles")
        .args(["--no-restart"])
        .ok_stdout();
    let (would, did) = (ensured(&plan, "would, for "), ensured(&out, "for "));
    assert!(did.len() >= 3, "{out}");
    assert_eq!(would, did, "the dry run:\n{plan}\nthe act:\n{out}");
    for host in ["web", "db"] {
        let p = fx.p(&format!("/home/alice/nixfiles/hosts/microvms/{host}"));
        assert_eq!(meta(&p), (ALICE, ALICE, 0o755), "{host}");
    }
    assert_eq!(
        meta(&fx.p("/home/alice/nixfiles/hosts")),
        (ALICE, ALICE, 0o755)
    );
    // Other VMs' runtime records are left alone: web's still describes its start.
    assert_eq!(fx.record("web")["shares"][0]["kind"], "placeholder");
    assert!(!fx.p("/run/microvm-workspaces/db.json").exists());
}

#[test]
fn status_marks_exactly_the_vm_and_tag_that_went_stale() {
    in_mount_ns!(status_marks_exactly_the_vm_and_tag_that_went_stale);
    let fx = vm1_fixture();
    for vm in ["vm1", "vm2", "vm3"] {
        fx.prepare_ok(vm);
    }
    let st = status_json(&fx);
    assert!(
        st["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["stale"] == false),
        "{st}"
    );
    repo_with_marker(&fx, "/home/alice/vm1", ALICE);
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/vm1")
        .args(["--no-restart", "--json"])
        .ok_stdout();
    let res: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(res["stale"][0]["vm"], "vm2", "{res}");
    assert_eq!(res["stale"][0]["tags"], serde_json::json!(["vm1ro"]));
    assert_eq!(res["stale"].as_array().unwrap().len(), 1);

    let st = status_json(&fx);
    let tags = |vm: &str| -> Vec<(String, bool)> {
        vm_status(&st, vm)["shares"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["tag"].as_str().unwrap().to_string(),
                    s["stale"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        tags("vm2"),
        [("own".to_string(), false), ("vm1ro".to_string(), true)]
    );
    assert_eq!(tags("vm3"), [("other".to_string(), false)]);
    // vm2 mounts vm1's workspace and its own; vm3 only its own: both have one. A VM
    // sharing only others' entries has none of its own, which is not a fault.
    assert_eq!(vm_status(&st, "vm3")["workspace"]["state"], "placeholder");
    assert_eq!(
        tags("vm1"),
        [("workspace".to_string(), true)],
        "vm1 itself was not restarted"
    );
    assert_eq!(
        vm_status(&st, "vm1")["workspace"],
        serde_json::json!({"state": "linked", "target": "/home/alice/vm1"})
    );
    // A start (prepare run by systemd) clears it.
    fx.prepare_ok("vm2");
    assert_eq!(vm_status(&status_json(&fx), "vm2")["stale"], false);
    // The table says the same in words.
    let table = String::from_utf8(fx.run(LINK, &["status"]).stdout).unwrap();
    let vm1_line = table.lines().find(|l| l.starts_with("vm1 ")).unwrap();
    assert!(
        vm1_line.contains("linked -> /home/alice/vm1")
            && vm1_line.contains("STALE: started on the placeholder;"),
        "{table}"
    );
}

#[test]
fn status_says_none_for_a_vm_without_a_workspace_of_its_own() {
    let fx = Fx::new();
    fx.runner("vm1", &[("workspace", b"/var/lib/microvm-workspaces/vm1")]);
    fx.runner("viewer", &[("ro", b"/var/lib/microvm-workspaces/vm1")]);
    let st = status_json(&fx);
    assert_eq!(vm_status(&st, "viewer")["workspace"]["state"], "none");
    assert_eq!(
        vm_status(&st, "vm1")["workspace"]["state"],
        "missing",
        "vm1's own entry is missing"
    );
}

#[test]
fn status_shows_a_dangling_link_with_its_remembered_target() {
    in_mount_ns!(status_shows_a_dangling_link_with_its_remembered_target);
    let fx = vm1_fixture();
    repo_with_marker(&fx, "/home/alice/vm1", ALICE);
    Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/vm1")
        .args(["--no-restart"])
        .ok_stdout();
    // Moved away (a linked repo's .git, a mount point in the guest's view, cannot be removed
    // while the link stands: docs/security.md#not-covered).
    std::fs::rename(fx.p("/home/alice/vm1"), fx.p("/home/alice/vm1.old")).unwrap();
    fx.prepare_ok("vm1");
    let st = status_json(&fx);
    assert_eq!(
        vm_status(&st, "vm1")["workspace"],
        serde_json::json!({"state": "dangling", "target": "/home/alice/vm1"})
    );
}

#[test]
fn dry_run_changes_nothing() {
    in_mount_ns!(dry_run_changes_nothing);
    let fx = Fx::new();
    fx.config(r#"{"companions": {"vm1": {"side": "../side"}}}"#);
    fx.runner(
        "vm1",
        &[
            ("w", b"/var/lib/microvm-workspaces/vm1"),
            ("n", b"/var/lib/microvm-workspaces/vm1/a/b"),
        ],
    );
    repo_with_marker(&fx, "/home/alice/vm1", ALICE);
    fx.repo("/home/alice/side", ALICE);
    fx.mkdir(WS, 0, 0o755);
    fx.mkdir(&format!("{WS}/vm1"), ALICE, 0o755); // would be displaced
    let before = fx.snapshot();
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/vm1")
        .args(["--dry-run"])
        .ok_stdout();
    assert_eq!(before, fx.snapshot(), "dry run changed the tree");
    assert!(
        out.contains("would link /var/lib/microvm-workspaces/vm1 -> /home/alice/vm1"),
        "{out}"
    );
    assert!(
        out.contains("would link /var/lib/microvm-workspaces/side -> /home/alice/side"),
        "{out}"
    );
    assert!(!is_mountpoint(&fx.p(&format!("{WS}/vm1"))));
}

#[test]
fn two_links_racing_on_one_vm_end_consistent() {
    in_mount_ns!(two_links_racing_on_one_vm_end_consistent);
    let fx = vm1_fixture();
    repo_with_marker(&fx, "/home/alice/a", ALICE);
    repo_with_marker(&fx, "/home/alice/b", ALICE);
    for round in 0..15 {
        let spawn = |repo: &str| {
            Run::link(&fx)
                .user(ALICE)
                .cwd(repo)
                .args(["vm1", "--no-restart"])
                .output()
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| spawn("/home/alice/a"));
            let b = s.spawn(|| spawn("/home/alice/b"));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_ok(&a);
        assert_ok(&b);
        let (rec, shows) = agree(&fx, "vm1");
        assert!(shows, "round {round}: record {rec:?} and mount disagree");
        assert!(rec.is_some());
        // Exactly one mount on the entry: relinks replace, never stack.
        let n = mount_count(&fx.p(&format!("{WS}/vm1")));
        assert_eq!(n, 1, "round {round}: {n} mounts stacked on the entry");
    }
}

#[test]
fn a_host_migrating_from_the_shell_layout_keeps_its_links() {
    in_mount_ns!(a_host_migrating_from_the_shell_layout_keeps_its_links);
    let fx = vm1_fixture();
    repo_with_marker(&fx, "/home/alice/old-vm1", ALICE);
    repo_with_marker(&fx, "/home/alice/vm3", ALICE);
    fx.mkdir(WS, 0, 0o755);
    fx.symlink("/home/alice/old-vm1", &format!("{WS}/vm1")); // what `ln -sfn` left
                                                             // Status reads the old layout as it is.
    assert_eq!(
        vm_status(&status_json(&fx), "vm1")["workspace"]["state"],
        "legacy-symlink"
    );
    // Linking another VM leaves it alone; the next start of vm1 migrates it.
    Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/vm3")
        .args(["--no-restart"])
        .ok_stdout();
    assert!(std::fs::symlink_metadata(fx.p(&format!("{WS}/vm1")))
        .unwrap()
        .file_type()
        .is_symlink());
    fx.prepare_ok("vm1");
    assert_eq!(
        agree(&fx, "vm1"),
        (Some("/home/alice/old-vm1".into()), true)
    );
    assert_eq!(
        vm_status(&status_json(&fx), "vm1")["workspace"],
        serde_json::json!({"state": "linked", "target": "/home/alice/old-vm1"})
    );
    // And relinking an unmigrated one from its repo works too.
    fx.symlink("/home/alice/old-vm1", &format!("{WS}/vm2"));
    repo_with_marker(&fx, "/home/alice/vm2", ALICE);
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/vm2")
        .args(["--no-restart"])
        .ok_stdout();
    assert!(out.contains("replaced the legacy symlink"), "{out}");
    assert_eq!(agree(&fx, "vm2"), (Some("/home/alice/vm2".into()), true));
}

#[test]
fn relink_checks_the_owner_of_the_very_directory_it_mounts() {
    // microvm-link checks the repo's owner first; a user can swap the path before relink looks
    // again. relink must refuse on its own look, which is what it mounts (by descriptor).
    use crate::common::api::{relink, Caller, Change, Config, Root, Tree};
    let fx = vm1_fixture();
    fx.repo("/home/bob/secret", BOB);
    let root = Root::from_args(Some(fx.root())).unwrap();
    let tree = Tree::open(&root).unwrap();
    let cfg = Config::load(&tree).unwrap();
    let change = Change {
        name: "vm1".parse().unwrap(),
        target: Some("/home/bob/secret".into()),
    };
    let err = format!(
        "{:#}",
        relink(&tree, &cfg, &[change], Caller::User(ALICE), false).unwrap_err()
    );
    assert!(
        err.contains("owned by uid 4343, not by the linking user (uid 4242)"),
        "{err}"
    );
    assert!(
        !fx.p(&format!("{WS}/.links/vm1")).exists(),
        "nothing may be recorded"
    );
}

#[test]
fn placeholders_owned_by_a_configured_user_are_still_placeholders() {
    in_mount_ns!(placeholders_owned_by_a_configured_user_are_still_placeholders);
    let fx = vm1_fixture();
    fx.config(r#"{"placeholder": {"user": "65534", "group": "65534", "mode": "0555"}}"#);
    fx.prepare_ok("vm1");
    assert_eq!(meta(&fx.p(&format!("{WS}/vm1"))), (65534, 65534, 0o555));
    repo_with_marker(&fx, "/home/alice/vm1", ALICE);
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/vm1")
        .args(["--no-restart"])
        .ok_stdout();
    assert!(
        !out.contains("moved your directory"),
        "a placeholder was displaced: {out}"
    );
    assert!(!fx.p(&format!("{WS}/.displaced")).exists());
    assert_eq!(agree(&fx, "vm1"), (Some("/home/alice/vm1".into()), true));
}

#[test]
fn unlinking_what_is_not_linked_touches_nothing() {
    in_mount_ns!(unlinking_what_is_not_linked_touches_nothing);
    let fx = vm1_fixture();
    fx.mkdir(WS, 0, 0o755);
    fx.mkdir(&format!("{WS}/vm1"), ALICE, 0o755);
    fx.write(&format!("{WS}/vm1/notes.txt"), b"mine");
    let before = fx.snapshot();
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/")
        .args(["unlink", "vm1", "--no-restart"])
        .ok_stdout();
    assert!(out.contains("is not linked; left as it is"), "{out}");
    let mut after = fx.snapshot();
    after.retain(|p, _| !p.ends_with(".lock") && !p.ends_with(".links"));
    assert_eq!(before, after, "unlink moved or changed something");
}

#[test]
fn a_broken_runtime_record_does_not_take_status_down() {
    let fx = vm1_fixture();
    fx.prepare_ok("vm1");
    fx.write("/run/microvm-workspaces/vm2.json", br#"{"vm":"vm2"}"#);
    let out = fx.run(LINK, &["status", "--json"]);
    assert_ok(&out);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        vm_status(&st, "vm2")["shares"][0]["atStart"],
        serde_json::Value::Null
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("preparedAt"),
        "the bad record is named"
    );
}

#[test]
fn sources_with_odd_characters_are_not_stale_by_accident() {
    // Recorded paths are read back for staleness: they must be stored as they are, not as
    // they are displayed (a tab shows as \t).
    let fx = Fx::new();
    fx.runner(
        "vm1",
        &[("t", b"/srv/tab\there"), ("e", "/srv/é".as_bytes())],
    );
    fx.prepare_ok("vm1");
    let st = status_json(&fx);
    for s in vm_status(&st, "vm1")["shares"].as_array().unwrap() {
        assert_eq!(s["stale"], false, "{s}");
        assert_ne!(s["now"], serde_json::Value::Null, "{s}");
    }
}

#[test]
fn status_as_a_normal_user_still_recognizes_placeholders() {
    // trusted.* is invisible without CAP_SYS_ADMIN; status falls back to the mode.
    let fx = vm1_fixture();
    fx.prepare_ok("vm1");
    std::fs::set_permissions(
        fx.root(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Run::link(&fx)
        .drop_to(ALICE)
        .args(["status", "--json"])
        .output();
    assert_ok(&out);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(vm_status(&st, "vm1")["workspace"]["state"], "placeholder");
}

fn link(fx: &Fx, cwd: &str, uid: u32, args: &[&str]) -> std::process::Output {
    Run::link(fx).user(uid).cwd(cwd).args(args).output()
}

fn link_ok(fx: &Fx, cwd: &str, uid: u32, args: &[&str]) -> String {
    Run::link(fx).user(uid).cwd(cwd).args(args).ok_stdout()
}

#[test]
fn the_exit_status_comes_from_the_restart_outcome_not_from_a_sentence() {
    // A VM named `ci-failed`: the old exit status looked for "failed" in the restart line
    // ("not restarting ci-failed: re-rooted at ...") and exited 1 after a success.
    in_mount_ns!(the_exit_status_comes_from_the_restart_outcome_not_from_a_sentence);
    let fx = Fx::new();
    fx.runner(
        "ci-failed",
        &[("ws", b"/var/lib/microvm-workspaces/ci-failed")],
    );
    repo_with_marker(&fx, "/home/alice/ci-failed", ALICE);
    let out = link(&fx, "/home/alice/ci-failed", ALICE, &[]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("not restarting ci-failed: re-rooted"),
        "{text}"
    );
    let json = link(&fx, "/home/alice/ci-failed", ALICE, &["--json"]);
    assert_ok(&json);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["restart"]["result"], "skipped", "{v}");
}

#[test]
fn unlink_reports_the_running_vms_it_leaves_stale() {
    in_mount_ns!(unlink_reports_the_running_vms_it_leaves_stale);
    let fx = vm1_fixture();
    repo_with_marker(&fx, "/home/alice/vm1", ALICE);
    link_ok(&fx, "/home/alice/vm1", ALICE, &["--no-restart"]);
    fx.prepare_ok("vm2"); // vm2 starts on alice's repo
    let out = link_ok(&fx, "/", ALICE, &["unlink", "vm1", "--no-restart"]);
    assert!(out.contains("unlinked"), "{out}");
    assert!(
        out.contains("stale: vm2 still sees the old directory for vm1ro"),
        "{out}"
    );
    let out = link(
        &fx,
        "/",
        ALICE,
        &["unlink", "vm1", "--no-restart", "--json"],
    );
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stale"][0]["vm"], "vm2", "{v}");
}
