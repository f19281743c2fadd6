//! Issue 20, items 1 and 2: a repo whose `.git` is a file (a linked worktree, a submodule
//! checkout) works in the guest in every git mode, with nothing added to the guest's
//! configuration and no host path in the guest (docs/security.md#git-file); and the VM for a
//! worktree is the one named after it, else after its main repo.
//!
//! A module of tests/root/guest.rs (its helpers: `fixture`, `link`, `git_as`, `one_vm`), in a
//! file of its own so that it moves as one piece.

use super::*;
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
