//! Reliability and security suite (issue 6): tries to break prepare and microvm-link. One test
//! binary, one module per theme:
//!
//! * `crash`: runs killed at every step (a failpoint per change) and after random delays;
//! * `race`: prepares and links racing on VMs that share sources;
//! * `hostile`: bounded property tests of the config and runner parsers (name derivation's
//!   are the library's, src/tests/names.rs, since they need no root);
//! * `privilege`: attacks by an unprivileged user, and on the sudo boundary (issue 9);
//! * `full_disk`: a full or read-only file system under the workspace dir.
//!
//! Every test runs as root against a temporary root, and checks for root first
//! (`common::require_root`, through `Fx::new`, `rig`, `in_mount_ns!` or directly): without
//! root it fails saying so, it never skips. Those that mount run in a private mount
//! namespace (`in_mount_ns!`, which re-runs `module::test` by its full name). Nothing here
//! asserts on timing. Counts (kills, races, cases, attacks) are printed with `--nocapture`.
//! What the modules share (the workspace dir, the two-checkout fixture, what must hold after
//! any run) is here.

#![forbid(unsafe_code)]

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod crash;
mod full_disk;
mod hostile;
// The seeded runner and hostile inputs, shared with the library's own tests.
#[path = "../../src/tests/hostile_input.rs"]
mod hostile_input;
mod privilege;
mod race;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::api::one_line;
use common::*;

const WS: &str = "/var/lib/microvm-workspaces";

// ---- what must hold ----

fn record(fx: &Fx, name: &str) -> Option<PathBuf> {
    std::fs::read_link(fx.p(&format!("{WS}/.links/{name}"))).ok()
}

/// Record and mount agree: with a record, the recorded repo is mounted on the entry exactly
/// once (or, if the repo is gone, nothing is and the placeholder serves); without one,
/// nothing is mounted there.
fn assert_agree(fx: &Fx, name: &str, ctx: &str) {
    let entry = fx.p(&format!("{WS}/{name}"));
    let m = std::fs::symlink_metadata(&entry)
        .unwrap_or_else(|e| panic!("{ctx}: {name}: the entry is gone: {e}"));
    assert!(m.is_dir(), "{ctx}: {name} is not a directory");
    let n = mount_count(&entry);
    match record(fx, name) {
        Some(t) => match std::fs::metadata(fx.p(t.to_str().unwrap())) {
            Ok(repo) => {
                assert_eq!(n, 1, "{ctx}: {name}: {n} mounts for record {t:?}");
                let shown = std::fs::metadata(&entry).unwrap();
                assert_eq!(
                    (shown.dev(), shown.ino()),
                    (repo.dev(), repo.ino()),
                    "{ctx}: {name} does not show its recorded repo {t:?}"
                );
            }
            Err(_) => assert!(n == 0 && is_marked(&entry), "{ctx}: {name}: repo gone"),
        },
        None => assert_eq!(n, 0, "{ctx}: {name}: mounted without a record"),
    }
}

// ---- two checkouts of vm1 ----

const A: &str = "/home/alice/a/vm1";
const A_SIDE: &str = "/home/alice/a/side";
const B: &str = "/home/alice/b/vm1";
/// A worktree of B's git dir: its `.git` a file (docs/security.md#git-file).
const W: &str = "/home/alice/w/vm1";

/// vm1 (its entry and a companion `side`, taken from `../side` of its repo) and vm2, whose
/// source lies inside vm1's entry; two checkouts of vm1, only the first with a `side`.
fn link_base() -> Rig {
    let fx = rig();
    fx.config(r#"{"companions": {"vm1": {"side": "../side"}}}"#);
    fx.runner(
        "vm1",
        &[
            ("ws", b"/var/lib/microvm-workspaces/vm1"),
            ("side", b"/var/lib/microvm-workspaces/side"),
        ],
    );
    fx.runner(
        "vm2",
        &[("host", b"/var/lib/microvm-workspaces/vm1/hosts/vm2")],
    );
    for r in [A, A_SIDE, B] {
        fx.repo(r, ALICE);
        fx.write(&format!("{r}/marker"), r.as_bytes());
    }
    fx.mkdir(&format!("{A}/.git"), ALICE, 0o755);
    // B's .git is a git dir (HEAD, a branch, objects): linking B makes the entry's private
    // git dir, so every step of that is crashed at too.
    for d in ["", "refs", "refs/heads", "objects"] {
        fx.mkdir(&format!("{B}/.git/{d}"), ALICE, 0o755);
    }
    fx.write(&format!("{B}/.git/HEAD"), b"ref: refs/heads/main\n");
    fx.write(
        &format!("{B}/.git/refs/heads/main"),
        format!("{}\n", "a".repeat(40)).as_bytes(),
    );
    for f in ["HEAD", "refs/heads/main"] {
        let p = fx.p(&format!("{B}/.git/{f}"));
        std::os::unix::fs::chown(p, Some(ALICE), Some(ALICE)).unwrap();
    }
    // W, a worktree of B's git dir: linking it makes the room in it and a scaffold.
    fx.repo(W, ALICE);
    fx.write(&format!("{W}/marker"), W.as_bytes());
    for d in ["worktrees", "worktrees/w"] {
        fx.mkdir(&format!("{B}/.git/{d}"), ALICE, 0o755);
    }
    for (f, text) in [
        (
            format!("{B}/.git/worktrees/w/HEAD"),
            "ref: refs/heads/main\n",
        ),
        (format!("{B}/.git/worktrees/w/commondir"), "../..\n"),
        (
            format!("{W}/.git"),
            "gitdir: ../../b/vm1/.git/worktrees/w\n",
        ),
    ] {
        let p = fx.write(&f, text.as_bytes());
        std::os::unix::fs::chown(p, Some(ALICE), Some(ALICE)).unwrap();
    }
    fx
}

fn linked_to(repo: &str) -> Rig {
    let fx = link_base();
    Run::link(&fx)
        .user(ALICE)
        .cwd(repo)
        .args(["vm1", "--no-restart"])
        .ok();
    fx
}

fn lchown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
}

fn precious_once(fx: &Fx, ctx: &str) -> PathBuf {
    let found = files_named(&fx.p(WS), "precious");
    assert_eq!(found.len(), 1, "{ctx}: the user's file: {found:?}");
    assert_eq!(found[0].1, b"do not lose me", "{ctx}");
    let deep = files_named(&fx.p(WS), "deeper");
    assert_eq!(deep.len(), 1, "{ctx}: the user's nested file: {deep:?}");
    found[0].0.clone()
}

fn displaced_and_kept(fx: &Fx, ctx: &str) {
    let at = precious_once(fx, ctx);
    assert!(
        at.starts_with(fx.p(&format!("{WS}/.displaced"))),
        "{ctx}: the user's directory is at {}, not in .displaced",
        at.display()
    );
}

fn user_symlink(fx: &Fx, target: &str, inside: &str, uid: u32) {
    fx.symlink(target, inside);
    lchown(&fx.p(inside), uid);
}
