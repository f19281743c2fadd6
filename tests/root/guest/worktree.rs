//! Issue 20, items 1 and 2: a repo whose `.git` is a file (a linked worktree, a submodule
//! checkout) works in the guest in every git mode, with nothing added to the guest's
//! configuration and no host path in the guest (docs/security.md#git-file); and the VM for a
//! worktree is the one named after it, else after its main repo.
//!
//! A module of tests/root/guest.rs (its helpers: `fixture`, `link`, `git_as`, `one_vm`), in a
//! file of its own so that it moves as one piece.

use super::*;
use std::ffi::OsStr;
use std::path::PathBuf;

/// alice's main repo `/home/alice/proj` (one commit on `main`, a file only its checkout has,
/// a secret in its config) and its worktree `/home/alice/proj-wt` on branch `feat`. The
/// worktree's `.git` names its git dir relatively, as `git worktree add --relative-paths`
/// would: the tests' paths are inside a re-rooted tree, where an absolute host path written
/// by git means nothing.
fn worktree(fx: &Fx) -> (PathBuf, PathBuf) {
    let main = fx.repo("/home/alice/proj", ALICE);
    for cmd in [
        "init -q -b main",
        "add -A",
        "commit -q --allow-empty -m host-commit",
        "config remote.origin.url https://token@example.com/secret",
        "worktree add -q ../proj-wt -b feat",
    ] {
        assert_ok(&git_as(ALICE, ALICE, &main, cmd));
    }
    write_as(
        ALICE,
        ALICE,
        &main.join("main-only"),
        "of the main checkout",
    )
    .unwrap();
    let wt = fx.p("/home/alice/proj-wt");
    write_as(ALICE, ALICE, &wt.join("file"), "in the worktree").unwrap();
    assert_ok(&git_as(ALICE, ALICE, &wt, "add file"));
    assert_ok(&git_as(ALICE, ALICE, &wt, "commit -q -m wt-commit"));
    write_as(
        ALICE,
        ALICE,
        &wt.join(".git"),
        "gitdir: ../proj/.git/worktrees/proj-wt\n",
    )
    .unwrap();
    assert_ok(&git_as(ALICE, ALICE, &wt, "status --porcelain"));
    (main, wt)
}

/// `git worktree list --porcelain` in the main repo: the worktree there, nothing prunable.
fn host_worktrees_valid(main: &Path, wt: &Path) {
    let out = git_as(ALICE, ALICE, main, "worktree list --porcelain");
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("worktree {}", wt.display())),
        "{text}"
    );
    assert!(!text.contains("prunable"), "{text}");
}

/// `/home` a shared mount, as under systemd: a view that joined its peer group would show
/// up at the repo's own path.
fn shared_home(fx: &Fx) {
    let home = fx.p("/home");
    for args in [
        vec!["--bind".into(), home.clone(), home.clone()],
        vec!["--make-shared".into(), home],
    ] {
        assert!(std::process::Command::new("mount")
            .args(&args)
            .status()
            .unwrap()
            .success());
    }
}

/// Nothing mounted below `/home` (its own shared bind aside): no view reached a repo's path.
fn nothing_mounted_in_home(fx: &Fx) {
    let home = fx.p("/home");
    let under: Vec<_> = mounts_under(&home)
        .into_iter()
        .filter(|p| *p != home)
        .collect();
    assert!(under.is_empty(), "{under:?}");
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Nothing under `view` is a file of the main checkout's or its config's secret.
fn nothing_of_the_main_checkout(view: &Path) {
    for (p, m) in walk(view) {
        assert!(
            p.file_name() != Some(OsStr::new("main-only")),
            "{} in the guest's view",
            p.display()
        );
        if m.is_file() && p.file_name() == Some(OsStr::new("config")) {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            assert!(!text.contains("secret"), "{}: {text}", p.display());
        }
    }
}

#[test]
fn a_worktree_works_in_the_guest_in_every_git_mode() {
    in_mount_ns!(a_worktree_works_in_the_guest_in_every_git_mode);
    let fx = fixture("");
    let (main, wt) = worktree(&fx);
    shared_home(&fx);
    let out = link(&fx, "/home/alice/proj-wt", ALICE, &["vm1", "--no-restart"]);
    assert_ok(&out);
    let entry = fx.p(WS).join("vm1");

    // private (the default): the guest's git works from the worktree's HEAD and index and
    // the common dir's refs, in a git dir of its own; its .git file names a path in the share.
    assert_eq!(
        std::fs::read_to_string(entry.join(".git")).unwrap(),
        "gitdir: .microvm-git/.git/c/.git\n"
    );
    let out = git_as(GUEST_UID, ALICE, &entry, "status --porcelain");
    assert_ok(&out);
    assert_eq!(stdout(&out), "", "status in the guest");
    let out = git_as(GUEST_UID, ALICE, &entry, "log --format=%s");
    assert_eq!(stdout(&out), "wt-commit\nhost-commit");
    let out = git_as(GUEST_UID, ALICE, &entry, "branch --show-current");
    assert_eq!(stdout(&out), "feat");
    write_as(
        GUEST_UID,
        ALICE,
        &entry.join("file"),
        "changed in the guest",
    )
    .unwrap();
    for cmd in [
        "commit -q -am guest-commit",
        "switch -q -c topic",
        "commit -q --allow-empty -m topic-commit",
    ] {
        assert_ok(&git_as(GUEST_UID, ALICE, &entry, cmd));
    }
    // `git clean -ffdx` in the guest empties nothing of its git dir (it cannot list it).
    let _ = git_as(GUEST_UID, ALICE, &entry, "clean -ffdxq");
    let out = git_as(GUEST_UID, ALICE, &entry, "log -1 --format=%s");
    assert_eq!(stdout(&out), "topic-commit", "{out:?}");
    // Nothing of the main repo but objects: not its checkout, not its config.
    nothing_of_the_main_checkout(&entry);
    let out = git_as(GUEST_UID, ALICE, &entry, "config remote.origin.url");
    assert!(!out.status.success(), "{out:?}");
    // The host: its branch did not move, its worktree is valid, the room shows in no
    // status, nothing is mounted under the repos' paths, and git works there while linked.
    assert_eq!(
        stdout(&git_as(ALICE, ALICE, &main, "log -1 --format=%s feat")),
        "wt-commit"
    );
    host_worktrees_valid(&main, &wt);
    assert!(wt.join(".microvm-git").is_dir());
    // (The guest's edit of `file` is the worktree's: shared files are shared.)
    assert_eq!(
        stdout(&git_as(
            ALICE,
            ALICE,
            &wt,
            "status --porcelain --ignored -uall"
        )),
        "M file"
    );
    nothing_mounted_in_home(&fx);
    assert_ok(&git_as(
        ALICE,
        ALICE,
        &main,
        "config user.name alice-on-host",
    ));
    assert_ok(&git_as(
        ALICE,
        ALICE,
        &wt,
        "commit -q --allow-empty -m host-two",
    ));
    // fetch (as alice, in the worktree): the guest's branches land in the main repo.
    let out = Run::link(&fx)
        .drop_to(ALICE)
        .cwd("/home/alice/proj-wt")
        .arg("fetch")
        .output();
    assert_ok(&out);
    assert!(
        stdout(&out).contains("vm1: 3 branches new or moved (feat, main, topic)"),
        "{out:?}"
    );
    assert_eq!(
        stdout(&git_as(ALICE, ALICE, &main, "log --format=%s vm1/topic")),
        "topic-commit\nguest-commit\nwt-commit\nhost-commit"
    );

    // readonly: the worktree's git metadata, read-only.
    one_vm(&fx, r#""git": "readonly", "#, "virtiofs");
    fx.prepare_ok("vm1");
    let out = git_as(GUEST_UID, ALICE, &entry, "status --porcelain");
    assert_ok(&out);
    assert_eq!(stdout(&out), "M file");
    assert_eq!(
        stdout(&git_as(GUEST_UID, ALICE, &entry, "log -1 --format=%s")),
        "host-two"
    );
    let out = git_as(GUEST_UID, ALICE, &entry, "commit -q --allow-empty -m nope");
    assert!(!out.status.success(), "a commit through the read-only view");
    let out = sh_as(
        GUEST_UID,
        ALICE,
        &format!(
            "echo x >> '{}/.git'; mv '{0}/.git' '{0}/.git-old'",
            entry.display()
        ),
    );
    assert!(!out.status.success(), "the guest changed the .git file");
    assert_eq!(
        std::fs::read_to_string(wt.join(".git")).unwrap(),
        "gitdir: ../proj/.git/worktrees/proj-wt\n"
    );
    nothing_of_the_main_checkout_but_its_git_dir(&entry);

    // shared: the common dir itself, writable; a commit is the host's at once.
    one_vm(&fx, r#""git": "shared", "#, "virtiofs");
    fx.prepare_ok("vm1");
    for cmd in ["commit -q -am shared-commit", "switch -q -c shared-topic"] {
        assert_ok(&git_as(GUEST_UID, ALICE, &entry, cmd));
    }
    assert_eq!(
        stdout(&git_as(ALICE, ALICE, &main, "log -1 --format=%s feat")),
        "shared-commit"
    );
    assert_eq!(
        stdout(&git_as(ALICE, ALICE, &wt, "branch --show-current")),
        "shared-topic"
    );
    host_worktrees_valid(&main, &wt);
    // git clean in the guest, even its root's `-fdx`, leaves the main repo's git dir alone.
    let _ = git_as(GUEST_UID, ALICE, &entry, "clean -ffdxq");
    let _ = sh_as(
        0,
        0,
        &format!(
            "cd '{}' && git -c safe.directory='*' clean -fdxq",
            entry.display()
        ),
    );
    assert_ok(&git_as(ALICE, ALICE, &main, "fsck --no-progress"));
    assert_eq!(
        stdout(&git_as(ALICE, ALICE, &main, "log -1 --format=%s feat")),
        "shared-commit"
    );
    nothing_mounted_in_home(&fx);
}

/// In readonly and shared, the guest sees the common dir itself (config and hooks included,
/// as a plain repo's `.git` in those modes), never the main checkout's files.
fn nothing_of_the_main_checkout_but_its_git_dir(view: &Path) {
    for (p, _) in walk(view) {
        assert!(
            p.file_name() != Some(OsStr::new("main-only")),
            "{} in the guest's view",
            p.display()
        );
    }
}

/// alice's superproject `/home/alice/super` with her repo `/home/alice/lib` as the submodule
/// `libs/sub`: its `.git` file names `../../.git/modules/libs/sub`, whose config's
/// `core.worktree` climbs back (`../../../../libs/sub`).
fn submodule(fx: &Fx) -> PathBuf {
    let lib = fx.repo("/home/alice/lib", ALICE);
    assert_ok(&git_as(
        ALICE,
        ALICE,
        &lib,
        "init -q -b main && echo l > l && git add l && git commit -q -m lib-commit",
    ));
    let sup = fx.repo("/home/alice/super", ALICE);
    assert_ok(&git_as(
        ALICE,
        ALICE,
        &sup,
        "init -q -b main && git -c protocol.file.allow=always submodule add -q ../lib libs/sub && git commit -q -m with-sub",
    ));
    let sub = sup.join("libs/sub");
    assert_eq!(
        std::fs::read_to_string(sub.join(".git")).unwrap(),
        "gitdir: ../../.git/modules/libs/sub\n"
    );
    sub
}

#[test]
fn a_submodule_checkout_works_in_the_guest_in_every_git_mode() {
    in_mount_ns!(a_submodule_checkout_works_in_the_guest_in_every_git_mode);
    let fx = fixture("");
    let sub = submodule(&fx);
    assert_ok(&link(
        &fx,
        "/home/alice/super/libs/sub",
        ALICE,
        &["vm1", "--no-restart"],
    ));
    let entry = fx.p(WS).join("vm1");
    // private
    assert_eq!(
        stdout(&git_as(GUEST_UID, ALICE, &entry, "status --porcelain")),
        ""
    );
    assert_ok(&git_as(
        GUEST_UID,
        ALICE,
        &entry,
        "commit -q --allow-empty -m private-commit",
    ));
    // readonly: the submodule's own git dir, read-only; its core.worktree climbs to the view.
    one_vm(&fx, r#""git": "readonly", "#, "virtiofs");
    fx.prepare_ok("vm1");
    let out = git_as(GUEST_UID, ALICE, &entry, "rev-parse --show-toplevel");
    assert_eq!(stdout(&out), entry.display().to_string(), "{out:?}");
    assert_eq!(
        stdout(&git_as(GUEST_UID, ALICE, &entry, "log -1 --format=%s")),
        "lib-commit"
    );
    let out = git_as(GUEST_UID, ALICE, &entry, "commit -q --allow-empty -m nope");
    assert!(!out.status.success(), "a commit through the read-only view");
    // shared: a commit is the submodule's on the host at once.
    one_vm(&fx, r#""git": "shared", "#, "virtiofs");
    fx.prepare_ok("vm1");
    assert_ok(&git_as(
        GUEST_UID,
        ALICE,
        &entry,
        "commit -q --allow-empty -m shared-commit",
    ));
    assert_eq!(
        stdout(&git_as(ALICE, ALICE, &sub, "log -1 --format=%s")),
        "shared-commit"
    );
    assert_ok(&git_as(ALICE, ALICE, &fx.p("/home/alice/super"), "status"));
    nothing_mounted_in_home(&fx);
}

#[test]
fn a_git_file_root_may_not_follow_is_refused_in_one_line() {
    in_mount_ns!(a_git_file_root_may_not_follow_is_refused_in_one_line);
    let fx = fixture("");
    let (_main, wt) = worktree(&fx);
    let set = |text: &str| {
        std::fs::write(wt.join(".git"), text).unwrap();
        std::os::unix::fs::chown(wt.join(".git"), Some(ALICE), Some(ALICE)).unwrap();
    };
    let refused = |needles: &[&str]| {
        let out = link(&fx, "/home/alice/proj-wt", ALICE, &["vm1", "--no-restart"]);
        assert_one_line_error(&out, needles);
        assert!(!fx.p(WS).join(".links/vm1").exists(), "a record was made");
    };
    // A git dir of someone else's (bob's repo), directly or through alice's symlink.
    // (Walking into bob's from root's /home is allowed; what is reached is refused.)
    set("gitdir: ../../bob/repo/.git\n");
    refused(&[
        "repo /home/alice/proj-wt",
        "/home/bob/repo/.git is owned by uid 4343, not by the repo's owner (uid 4242)",
    ]);
    // Through a symlink of bob's in alice's home.
    fx.symlink_as("proj/.git", "/home/alice/bobs-link", BOB);
    set("gitdir: ../bobs-link/worktrees/proj-wt\n");
    refused(&["repo /home/alice/proj-wt", "unsafe path transition"]);
    // Into the workspace dir.
    fx.mkdir(&format!("{WS}/.git-private"), 0, 0o711);
    set(&format!("gitdir: {WS}/.git-private\n"));
    refused(&["is inside the workspace dir"]);
    // A commondir that leads to bob's.
    set("gitdir: ../proj/.git/worktrees/proj-wt\n");
    let commondir = fx.p("/home/alice/proj/.git/worktrees/proj-wt/commondir");
    std::fs::write(&commondir, "../../../../../bob/repo/.git\n").unwrap();
    std::os::unix::fs::chown(&commondir, Some(ALICE), Some(ALICE)).unwrap();
    refused(&["the common dir", "owned by uid 4343"]);
    // A commondir of root's (left by `sudo git`): not read.
    std::fs::write(&commondir, "../..\n").unwrap();
    std::os::unix::fs::chown(&commondir, Some(0), Some(0)).unwrap();
    refused(&["commondir is owned by uid 0, not 4242"]);
    std::os::unix::fs::chown(&commondir, Some(ALICE), Some(ALICE)).unwrap();
    // Not a git file at all.
    set("not a git file\n");
    refused(&["/home/alice/proj-wt/.git is not a git file"]);
    set("gitdir: ../proj/.git/worktrees/proj-wt\n");
    assert_ok(&link(
        &fx,
        "/home/alice/proj-wt",
        ALICE,
        &["vm1", "--no-restart"],
    ));
}

/// `pool1`'s only share is its live root: its guest sees the worktree through
/// `.live/pool1/current`, with the git dir beside it, and nothing is made in the worktree.
#[test]
fn a_live_view_keeps_its_git_dir_beside_current_and_nothing_in_the_worktree() {
    in_mount_ns!(a_live_view_keeps_its_git_dir_beside_current_and_nothing_in_the_worktree);
    let fx = fixture("");
    fx.config(&format!(
        r#"{{"vms": {{"pool1": {{"shares": [{{"tag": "ws", "proto": "virtiofs", "source": "{WS}/.live/pool1"}}]}}}}}}"#
    ));
    let (main, wt) = worktree(&fx);
    shared_home(&fx);
    fx.prepare_ok("pool1");
    let live = fx.p(WS).join(".live/pool1");
    assert_ok(&link(
        &fx,
        "/home/alice/proj-wt",
        ALICE,
        &["pool1", "--no-restart"],
    ));
    let current = live.join("current");
    assert_eq!(
        std::fs::read_to_string(current.join(".git")).unwrap(),
        "gitdir: ../.microvm-git/.git/c/.git\n"
    );
    assert!(is_mountpoint(&live.join(".microvm-git")));
    assert!(!wt.join(".microvm-git").exists(), "a room in the worktree");
    assert_eq!(
        stdout(&git_as(GUEST_UID, ALICE, &current, "log -1 --format=%s")),
        "wt-commit"
    );
    assert_ok(&git_as(
        GUEST_UID,
        ALICE,
        &current,
        "commit -q --allow-empty -m live-commit",
    ));
    host_worktrees_valid(&main, &wt);
    // A start changes nothing that is as it should be.
    let before = mount_points();
    fx.prepare_ok("pool1");
    assert_eq!(mount_points(), before);
    // Relinked to a repo with a git dir of its own: the old git dir beside `current` goes.
    let plain = fx.repo("/home/alice/plain", ALICE);
    assert_ok(&git_as(ALICE, ALICE, &plain, "init -q -b main"));
    assert_ok(&link(
        &fx,
        "/home/alice/plain",
        ALICE,
        &["pool1", "--no-restart"],
    ));
    assert!(!is_mountpoint(&live.join(".microvm-git")));
    assert!(current.join(".git/HEAD").exists());
    // Back to the worktree, then unlinked: nothing left mounted in the live root.
    assert_ok(&link(
        &fx,
        "/home/alice/proj-wt",
        ALICE,
        &["pool1", "--no-restart"],
    ));
    assert!(is_mountpoint(&live.join(".microvm-git")));
    assert_ok(&link(&fx, "/", ALICE, &["unlink", "pool1", "--no-restart"]));
    assert!(mounts_under(&live).is_empty(), "{:?}", mounts_under(&live));
    nothing_mounted_in_home(&fx);
}

#[test]
fn the_vm_for_a_worktree_is_named_after_it_else_after_its_main_repo() {
    in_mount_ns!(the_vm_for_a_worktree_is_named_after_it_else_after_its_main_repo);
    let fx = fixture("");
    let vms = |names: &[&str]| {
        let vms: Vec<String> = names
            .iter()
            .map(|n| {
                format!(
                    r#""{n}": {{"shares": [{{"tag": "w", "proto": "virtiofs", "source": "{WS}/{n}"}}]}}"#
                )
            })
            .collect();
        fx.config(&format!(r#"{{"vms": {{{}}}}}"#, vms.join(", ")));
    };
    worktree(&fx);
    let linked_into = |out: &Output| {
        assert_ok(out);
        stdout(out)
            .lines()
            .find_map(|l| l.strip_prefix("would link "))
            .unwrap_or_default()
            .to_string()
    };
    let dry = || link(&fx, "/home/alice/proj-wt/sub", ALICE, &["--dry-run"]);
    std::fs::create_dir_all(fx.p("/home/alice/proj-wt/sub")).unwrap();
    vms(&["proj-wt", "proj"]);
    assert!(linked_into(&dry()).starts_with(&format!("{WS}/proj-wt -> ")));
    vms(&["proj"]);
    assert!(linked_into(&dry()).starts_with(&format!("{WS}/proj -> ")));
    // The named VM wins.
    vms(&["proj", "other"]);
    let out = link(&fx, "/home/alice/proj-wt", ALICE, &["other", "--dry-run"]);
    assert!(linked_into(&out).starts_with(&format!("{WS}/other -> ")));
    vms(&["other"]);
    assert_one_line_error(
        &dry(),
        &[
            "no VM for /home/alice/proj-wt",
            "neither proj-wt (after its directory) nor proj (after its main repo /home/alice/proj)",
            "known VMs: other",
        ],
    );
}
