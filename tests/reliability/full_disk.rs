//! A full or read-only file system under the workspace dir: one clear line, nothing
//! half-made, and the same command goes through once there is room again.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::*;
use crate::*;

/// A small tmpfs on the workspace dir: 64 KiB, and few inodes (directories and symlinks on
/// tmpfs cost an inode, not a block).
fn small_fs(fx: &Fx) -> PathBuf {
    let ws = fx.mkdir(WS, 0, 0o755);
    nix::mount::mount(
        Some("tmpfs"),
        &ws,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k,nr_inodes=64,mode=0755"),
    )
    .unwrap();
    ws
}

fn free_inodes(p: &Path) -> u64 {
    nix::sys::statvfs::statvfs(p).unwrap().files_free() as u64
}

/// Fills the file system at `ws` until only `free` inodes are left.
fn fill(ws: &Path, free: u64) {
    let dir = ws.join(".fill");
    let _ = std::fs::create_dir(&dir);
    let mut i = 0;
    while free_inodes(ws) > free {
        std::fs::write(dir.join(i.to_string()), b"").unwrap();
        i += 1;
    }
}

fn unfill(ws: &Path) {
    std::fs::remove_dir_all(ws.join(".fill")).unwrap();
}

/// After a failed run: one clear line, nothing half-made, record and mount agreeing.
fn failed_cleanly(fx: &Fx, out: &Output, why: &str, ctx: &str) {
    // The error is one line; before it may only come the notice that a user's directory
    // was moved aside (a completed step the user must hear about even when a later fails).
    let err = stderr(out);
    let mut lines: Vec<&str> = err.lines().collect();
    let last = lines.pop().unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "{ctx}: {err}");
    assert!(last.contains(why), "{ctx}: {err}");
    assert!(
        lines.iter().all(|l| l.contains("WARN moved the directory")),
        "{ctx}: {err}"
    );
    let left = leftovers(fx.root());
    assert!(left.is_empty(), "{ctx}: leftovers {left:?}");
    for name in ["vm1", "side"] {
        if fx.p(&format!("{WS}/{name}")).exists() {
            assert_agree(fx, name, ctx);
            let e = fx.p(&format!("{WS}/{name}"));
            // Unmounted, it is our placeholder, or the user's directory still untouched.
            if mount_count(&e) == 0 && !is_marked(&e) {
                assert!(
                    e.join("precious").exists(),
                    "{ctx}: {name} is a half-made placeholder"
                );
            }
        }
    }
}

#[test]
fn a_full_workspace_file_system_fails_in_one_line_and_leaves_no_partial_state() {
    in_mount_ns!(a_full_workspace_file_system_fails_in_one_line_and_leaves_no_partial_state);
    let (mut failed, mut passed) = (0, 0);
    // Each command with 0, 1, 2, ... inodes to spare, until it gets through.
    type Case = (&'static str, fn(&Fx), fn(&Fx) -> Run);
    let cases: [Case; 3] = [
        ("first prepare", |_| {}, |fx| Run::prepare(fx, "vm2")),
        (
            "relink",
            |fx| {
                Run::link(fx)
                    .user(ALICE)
                    .cwd(A)
                    .args(["vm1", "--no-restart"])
                    .ok();
            },
            |fx| {
                Run::link(fx)
                    .user(ALICE)
                    .cwd(B)
                    .args(["vm1", "--no-restart"])
            },
        ),
        (
            "displacing a directory",
            |fx| {
                fx.mkdir(&format!("{WS}/vm1"), ALICE, 0o755);
                fx.write(&format!("{WS}/vm1/precious"), b"do not lose me");
                fx.write(&format!("{WS}/vm1/deeper"), b"x");
            },
            |fx| {
                Run::link(fx)
                    .user(ALICE)
                    .cwd(A)
                    .args(["vm1", "--no-restart"])
            },
        ),
    ];
    for (name, setup, cmd) in cases {
        for free in 0.. {
            let fx = link_base();
            let ws = small_fs(&fx);
            setup(&fx);
            fill(&ws, free);
            let ctx = format!("{name} with {free} inodes free");
            let out = cmd(&fx).output();
            if name == "displacing a directory" {
                precious_once(&fx, &ctx);
            }
            if out.status.success() {
                passed += 1;
                assert!(leftovers(fx.root()).is_empty(), "{ctx}");
                break;
            }
            failed += 1;
            failed_cleanly(&fx, &out, "No space left on device", &ctx);
            // With room again, the same command goes through.
            unfill(&ws);
            cmd(&fx).ok();
            assert!(leftovers(fx.root()).is_empty(), "{ctx}, then with room");
            assert_agree(&fx, "vm1", &ctx);
            assert!(free < 40, "{name} never gets through");
        }
    }
    assert!(
        failed >= 3 && passed == 3,
        "failed {failed}, passed {passed}"
    );
    eprintln!("full file system: {failed} runs failed cleanly for want of inodes");
}

#[test]
fn a_read_only_workspace_file_system_fails_in_one_line_and_changes_nothing() {
    in_mount_ns!(a_read_only_workspace_file_system_fails_in_one_line_and_changes_nothing);
    let fx = link_base();
    fx.runner("vm3", &[("new", b"/var/lib/microvm-workspaces/vm3/sub")]);
    let ws = small_fs(&fx);
    Run::link(&fx)
        .user(ALICE)
        .cwd(A)
        .args(["vm1", "--no-restart"])
        .ok();
    nix::mount::mount(
        None::<&str>,
        &ws,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();
    let before = snapshot(&ws);
    for (what, c) in [
        (
            "relink",
            Run::link(&fx)
                .user(ALICE)
                .cwd(B)
                .args(["vm1", "--no-restart"]),
        ),
        (
            "unlink",
            Run::link(&fx)
                .user(ALICE)
                .cwd("/")
                .args(["unlink", "vm1", "--no-restart"]),
        ),
        ("prepare of a missing source", Run::prepare(&fx, "vm3")),
    ] {
        let out = c.output();
        failed_cleanly(&fx, &out, "Read-only file system", what);
        assert_eq!(before, snapshot(&ws), "{what} changed the workspace dir");
        assert_eq!(record(&fx, "vm1"), Some(PathBuf::from(A)), "{what}");
    }
    // Starting a VM whose sources all exist needs no write there.
    Run::prepare(&fx, "vm1").ok();
    assert_agree(&fx, "vm1", "prepare on a read-only workspace dir");
    // Writable again: everything goes through.
    nix::mount::mount(
        None::<&str>,
        &ws,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT,
        None::<&str>,
    )
    .unwrap();
    Run::link(&fx)
        .user(ALICE)
        .cwd(B)
        .args(["vm1", "--no-restart"])
        .ok();
    Run::prepare(&fx, "vm3").ok();
    assert_agree(&fx, "vm1", "writable again");
}
