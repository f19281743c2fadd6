//! Live links (docs/design.md#live-links): a share whose source is a live root
//! `<workspaceDir>/.live/<name>[/<path>]` sees every link change of entry `<name>` through
//! `<live root>/current`, with no restart. Re-rooted trees, private mount namespaces; the
//! running guest's view is proven by the end-to-end suite.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;

use crate::common::*;

const WS: &str = "/var/lib/microvm-workspaces";
const LIVE: &str = "/var/lib/microvm-workspaces/.live";

fn link(fx: &Fx, cwd: &str, uid: u32, args: &[&str]) -> Output {
    Run::link(fx).user(uid).cwd(cwd).args(args).output()
}

/// testvm: a read-only live share of all of nixfiles and a writable one of its own host
/// directory in it; web: a pinned share of nixfiles (the pre-live layout).
fn fixture() -> Fx {
    let fx = Fx::new();
    fx.runner(
        "testvm",
        &[
            ("nixfiles", b"/var/lib/microvm-workspaces/.live/nixfiles"),
            (
                "host",
                b"/var/lib/microvm-workspaces/.live/nixfiles/hosts/microvms/testvm",
            ),
        ],
    );
    fx.runner(
        "web",
        &[("nixfiles", b"/var/lib/microvm-workspaces/nixfiles")],
    );
    fx.runner(
        "nixfiles",
        &[("ws", b"/var/lib/microvm-workspaces/nixfiles")],
    );
    for (repo, marker) in [
        ("/home/alice/nixfiles", "A"),
        ("/home/alice/nixfiles2", "B"),
    ] {
        fx.mkdir("/home/alice", ALICE, 0o755);
        fx.repo(repo, ALICE);
        fx.mkdir(&format!("{repo}/.git"), ALICE, 0o755);
        fx.write(&format!("{repo}/marker"), marker.as_bytes());
        std::os::unix::fs::chown(fx.p(&format!("{repo}/marker")), Some(ALICE), Some(ALICE))
            .unwrap();
    }
    fx
}

fn marker(p: &Path) -> Option<String> {
    std::fs::read_to_string(p.join("marker")).ok()
}

fn status(fx: &Fx) -> serde_json::Value {
    let out = link(fx, "/", 0, &["status", "--json"]);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn share<'a>(st: &'a serde_json::Value, vm: &str, tag: &str) -> &'a serde_json::Value {
    st["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vm"] == vm)
        .and_then(|v| {
            v["shares"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["tag"] == tag)
        })
        .unwrap_or_else(|| panic!("{vm}/{tag} not in {st}"))
}

#[test]
fn a_live_share_follows_link_relink_and_unlink_without_going_stale() {
    in_mount_ns!(a_live_share_follows_link_relink_and_unlink_without_going_stale);
    let fx = fixture();
    // testvm starts while nixfiles is not linked: both live roots show a placeholder.
    fx.prepare_ok("testvm");
    let root = fx.p(LIVE).join("nixfiles");
    let host = root.join("hosts/microvms/testvm");
    for r in [&root, &host] {
        assert_eq!(meta(r), (0, 0, 0o755), "{}", r.display());
        assert!(
            !is_marked(r),
            "a live root is a real directory, not a placeholder"
        );
        assert_eq!(meta(&r.join("current")), (0, 0, 0o555));
        assert!(is_marked(&r.join("current")));
        assert!(!is_mountpoint(&r.join("current")));
    }
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let (root_ino, host_ino) = (ino(&root), ino(&host));
    assert_eq!(fx.record("testvm")["shares"][0]["kind"], "live");

    // alice links nixfiles: the live views show her repo at once, the host directory made
    // in it as alice.
    assert_ok(&link(&fx, "/home/alice/nixfiles", ALICE, &["--no-restart"]));
    assert_eq!(marker(&root.join("current")).as_deref(), Some("A"));
    let made = fx.p("/home/alice/nixfiles/hosts/microvms/testvm");
    assert_eq!(meta(&made).0, ALICE);
    // Through the idmapped view the guest user writes as alice, the guest's root as nobody.
    write_as(GUEST_UID, ALICE, &host.join("current/written"), "x").unwrap();
    std::fs::write(host.join("current/by-root"), b"x").unwrap();
    assert_eq!(
        meta(&made.join("by-root")).0,
        65534,
        "root through a link is nobody"
    );
    assert_eq!(meta(&made.join("written")).0, ALICE);
    assert!(
        made.join("written").exists(),
        "the host view is not the repo's directory"
    );
    // The share roots virtiofsd would hold never changed.
    assert_eq!((ino(&root), ino(&host)), (root_ino, host_ino));
    let st = status(&fx);
    for tag in ["nixfiles", "host"] {
        assert_eq!(share(&st, "testvm", tag)["live"], true);
        assert_eq!(share(&st, "testvm", tag)["stale"], false);
    }

    // Relink to a second checkout, then unlink: the views follow.
    assert_ok(&link(
        &fx,
        "/home/alice/nixfiles2",
        ALICE,
        &["nixfiles", "--no-restart"],
    ));
    assert_eq!(marker(&root.join("current")).as_deref(), Some("B"));
    assert_eq!(mount_count(&root.join("current")), 1, "mounts stacked");
    assert!(fx.p("/home/alice/nixfiles2/hosts/microvms/testvm").is_dir());
    assert_ok(&link(
        &fx,
        "/",
        ALICE,
        &["unlink", "nixfiles", "--no-restart"],
    ));
    for r in [&root, &host] {
        assert!(!is_mountpoint(&r.join("current")));
        assert!(is_marked(&r.join("current")));
    }
    let st = status(&fx);
    assert_eq!(share(&st, "testvm", "nixfiles")["stale"], false);
}

#[test]
fn a_pinned_share_beside_a_live_one_is_still_stale() {
    in_mount_ns!(a_pinned_share_beside_a_live_one_is_still_stale);
    let fx = fixture();
    fx.prepare_ok("testvm");
    fx.prepare_ok("web");
    let out = link(&fx, "/home/alice/nixfiles", ALICE, &["--no-restart"]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stale: web still sees the old directory for nixfiles"),
        "{text}"
    );
    assert!(!text.contains("stale: testvm"), "{text}");
    let st = status(&fx);
    assert_eq!(share(&st, "web", "nixfiles")["stale"], true);
    assert_eq!(share(&st, "web", "nixfiles")["live"], false);
    assert_eq!(share(&st, "testvm", "nixfiles")["stale"], false);
}

#[test]
fn after_a_reboot_or_a_deleted_repo_current_follows_the_entry() {
    in_mount_ns!(after_a_reboot_or_a_deleted_repo_current_follows_the_entry);
    let fx = fixture();
    fx.prepare_ok("testvm");
    assert_ok(&link(&fx, "/home/alice/nixfiles", ALICE, &["--no-restart"]));
    let current = fx.p(LIVE).join("nixfiles/current");
    // A reboot: every mount gone, the records stay. The next start mounts again.
    for m in [
        fx.p(&format!("{WS}/nixfiles")),
        current.clone(),
        fx.p(LIVE).join("nixfiles/hosts/microvms/testvm/current"),
    ] {
        nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    assert_eq!(marker(&current), None);
    fx.prepare_ok("testvm");
    assert_eq!(marker(&current).as_deref(), Some("A"));
    // The repo gone from its path while linked (moved away: its .git, a mount point in the
    // guest's view, cannot be removed while linked, docs/security.md#not-covered): the next start
    // unmounts it, the placeholder serves.
    std::fs::rename(fx.p("/home/alice/nixfiles"), fx.p("/home/alice/gone")).unwrap();
    fx.prepare_ok("testvm");
    assert!(!is_mountpoint(&current));
    assert!(is_marked(&current));
}

#[test]
fn bad_live_sources_and_tricks_are_refused_in_one_line() {
    in_mount_ns!(bad_live_sources_and_tricks_are_refused_in_one_line);
    // `current` or `.microvm-git` in the path, and an entry name that is not one.
    for (source, why) in [
        (
            &b"/var/lib/microvm-workspaces/.live/nixfiles/current"[..],
            "named current",
        ),
        (
            b"/var/lib/microvm-workspaces/.live/nixfiles/a/current/b",
            "named current",
        ),
        // The room beside a live root's `current` (docs/security.md#git-file).
        (
            b"/var/lib/microvm-workspaces/.live/nixfiles/.microvm-git/x",
            "named .microvm-git",
        ),
        (
            b"/var/lib/microvm-workspaces/.live/bad\x1bname",
            "control character",
        ),
    ] {
        let fx = Fx::new();
        fx.runner("vm", &[("s", source)]);
        let before = fx.snapshot();
        assert_one_line_error(&fx.prepare("vm"), &[why]);
        assert_eq!(before, fx.snapshot(), "{}", String::from_utf8_lossy(source));
    }
    // A file placed at .live/<name>/current by hand: refused, kept.
    let fx = fixture();
    fx.mkdir(LIVE, 0, 0o755);
    fx.mkdir(&format!("{LIVE}/nixfiles"), 0, 0o755);
    fx.write(&format!("{LIVE}/nixfiles/current"), b"mine");
    assert_one_line_error(&fx.prepare("testvm"), &["current is not a directory"]);
    assert_eq!(
        std::fs::read(fx.p(&format!("{LIVE}/nixfiles/current"))).unwrap(),
        b"mine"
    );
    // A user's symlink in the repo pointing out of it, below current: refused, nothing made
    // outside the repo.
    for target in ["/etc", "../../bob", "/home/alice/elsewhere"] {
        let fx = fixture();
        fx.mkdir("/home/alice/elsewhere", ALICE, 0o755);
        fx.mkdir("/home/bob", BOB, 0o755);
        fx.prepare_ok("testvm");
        fx.symlink_as(target, "/home/alice/nixfiles/hosts", ALICE);
        let before = fx.snapshot();
        let out = link(&fx, "/home/alice/nixfiles", ALICE, &["--no-restart"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
        assert_eq!(before, fx.snapshot(), "{target}: something changed");
        for p in [
            "/etc/microvms",
            "/home/bob/microvms",
            "/home/alice/elsewhere/microvms",
        ] {
            assert!(!fx.p(p).exists(), "{target}: {p} was made");
        }
    }
}

/// A live root that cannot follow its entry (here: its path missing in a repo its owner made
/// read-only; a guest can do the same) is left as it is with a warning: the link stands, and
/// the start of a VM with a pinned share through the entry goes on. Only the VM whose own
/// share it is fails to start.
#[test]
fn a_live_root_that_cannot_follow_fails_no_link_and_no_other_start() {
    in_mount_ns!(a_live_root_that_cannot_follow_fails_no_link_and_no_other_start);
    let fx = Fx::new();
    fx.runner("proj", &[("ws", b"/var/lib/microvm-workspaces/proj")]);
    fx.runner(
        "vmb",
        &[("sub", b"/var/lib/microvm-workspaces/.live/proj/sub")],
    );
    fx.prepare_ok("proj");
    fx.prepare_ok("vmb");
    fx.repo("/home/alice/proj", ALICE);
    std::fs::set_permissions(
        fx.p("/home/alice/proj"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/proj")
        .args(["--no-restart"])
        .output();
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("left as it is"), "{err}");
    assert!(is_mountpoint(&fx.p("/var/lib/microvm-workspaces/proj")));
    assert_ok(&fx.prepare("proj"));
    // vmb's own share is strict: its start says why.
    assert_one_line_error(&fx.prepare("vmb"), &["/home/alice/proj/sub"]);
}
