//! The sudo boundary: microvm-link runs as root for anyone the sudo rule allows, with any
//! arguments. One test per attack found against it (issue 9); each made root act on other
//! people's files, detach mounts, or quote root-only files before the fix. Each runs the real
//! binary as root, as sudo would (`SUDO_UID`), or as root acting for a user (`--user`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const WS: &str = "/var/lib/microvm-workspaces";

/// microvm-link as sudo runs it for `uid`: real root, `SUDO_UID`, the environment the caller
/// chose (`env`), in `cwd` (a real path).
fn via_sudo(uid: u32, cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(LINK);
    c.env_remove("MICROVM_WORKSPACES_ROOT")
        .env_remove("JOURNAL_STREAM")
        .env("SUDO_UID", uid.to_string())
        .current_dir(cwd)
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    output_within(c, Duration::from_secs(20))
}

/// microvm-link as root acting for `uid` in the re-rooted tree of `fx`.
fn as_user(fx: &Fx, uid: u32, cwd: &str, args: &[&str]) -> Output {
    let mut c = Command::new(LINK);
    c.env("MICROVM_WORKSPACES_ROOT", fx.root())
        .env_remove("SUDO_UID")
        .env_remove("JOURNAL_STREAM")
        .args(["--user", &uid.to_string()])
        .args(args)
        .current_dir(fx.p(cwd))
        .stdin(Stdio::null());
    output_within(c, Duration::from_secs(20))
}

/// Runs `c`, killing it if it is still running after `limit` (a run blocked on a FIFO is a
/// failure of the test, not a hung suite).
fn output_within(mut c: Command, limit: Duration) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "microvm-link still running after {limit:?} (blocked?); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A fixture with VM vm1 (share `ws` on its workspace entry) and alice's repo `~/vm1`.
fn vm1() -> Fx {
    let fx = Fx::new();
    fx.runner("vm1", &[("ws", b"/var/lib/microvm-workspaces/vm1")]);
    fx.mkdir("/home/alice", ALICE, 0o755);
    fx.repo("/home/alice/vm1", ALICE);
    fx.write("/home/alice/vm1/alice-was-here", b"a");
    fx.mkdir("/home/bob", BOB, 0o755);
    fx.repo("/home/bob/vm1", BOB);
    fx.write("/home/bob/vm1/bob-was-here", b"b");
    fx
}

/// Attack 1: a sticky, root-owned directory (`/tmp`) as the root, a config of the user's
/// making with `"workspaceDir": "/"`, and a victim's 0700 directory as the "entry": root
/// moved the victim's directory aside and mounted the attacker's repo in its place.
#[test]
fn attack_1_rerooting_through_sudo_is_refused() {
    in_mount_ns!(attack_1_rerooting_through_sudo_is_refused);
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path();
    chmod(tmp, 0o1777);
    std::fs::create_dir_all(tmp.join("etc/microvm-workspaces")).unwrap();
    std::fs::write(
        tmp.join("etc/microvm-workspaces/config.json"),
        br#"{"workspaceDir": "/", "vms": {"victim": {"shares": []}}}"#,
    )
    .unwrap();
    let victim = tmp.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("socket-like"), b"bob's").unwrap();
    std::os::unix::fs::chown(&victim, Some(BOB), Some(BOB)).unwrap();
    chmod(&victim, 0o700);
    let repo = tmp.join("mine");
    std::fs::create_dir(&repo).unwrap();
    std::os::unix::fs::chown(&repo, Some(ALICE), Some(ALICE)).unwrap();
    let before = snapshot(tmp);
    let root = tmp.to_str().unwrap();
    let repo_s = repo.to_str().unwrap();
    for (env, args) in [
        (
            vec![],
            vec!["--root", root, "victim", "--repo", repo_s, "--no-restart"],
        ),
        (
            vec![("MICROVM_WORKSPACES_ROOT", root)],
            vec!["victim", "--repo", repo_s, "--no-restart"],
        ),
        (
            vec![],
            vec!["--root", root, "unlink", "victim", "--no-restart"],
        ),
        (vec![], vec!["--root", root, "status"]),
    ] {
        let out = via_sudo(ALICE, tmp, &env, &args);
        assert_one_line_error(&out, &["refused through sudo"]);
        assert_eq!(before, snapshot(tmp), "{args:?}");
        assert!(!is_mountpoint(&victim), "{args:?}: mounted over the victim");
    }
    // `--user` is root's own too.
    let out = via_sudo(ALICE, tmp, &[], &["--user", "0", "status"]);
    assert_one_line_error(&out, &["--user is refused through sudo"]);

    // Root itself may re-root, but a workspace dir others may write to is not a trusted
    // place: root refuses to act there, whoever it acts for.
    let out = Command::new(LINK)
        .env_remove("SUDO_UID")
        .args(["--root", root, "--user", &ALICE.to_string()])
        .args(["victim", "--repo", repo_s, "--no-restart"])
        .current_dir(tmp)
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        &["must be owned by root and not writable by group or others"],
    );
    assert_eq!(before, snapshot(tmp));
    assert!(!is_mountpoint(&victim));
}

/// Attack 2: `--root` a symlink to the user's tree whose config is a FIFO; root blocks
/// opening it, the user swaps the symlink to `/` and writes a config that names `/etc`.
/// Through sudo the root is refused before anything is opened; as root, a config that is not
/// root's is never opened, so it cannot block, and the tree is opened once.
#[test]
fn attack_2_a_swappable_root_and_a_fifo_config_get_nowhere() {
    in_mount_ns!(attack_2_a_swappable_root_and_a_fifo_config_get_nowhere);
    let fx = vm1();
    let cfg = fx.p("/etc/microvm-workspaces/config.json");
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    nix::unistd::mkfifo(&cfg, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    std::os::unix::fs::chown(&cfg, Some(ALICE), Some(ALICE)).unwrap();
    let link = tempfile::tempdir().unwrap();
    let root_link = link.path().join("root");
    std::os::unix::fs::symlink(fx.root(), &root_link).unwrap();
    let before = fx.snapshot();
    let out = via_sudo(
        ALICE,
        &fx.p("/home/alice/vm1"),
        &[],
        &["--root", root_link.to_str().unwrap(), "vm1", "--no-restart"],
    );
    assert_one_line_error(&out, &["refused through sudo"]);
    // Root itself, with the same tree: the FIFO (alice's) is refused unopened.
    let out = as_user(&fx, ALICE, "/home/alice/vm1", &["vm1", "--no-restart"]);
    assert_one_line_error(
        &out,
        &[
            "config /etc/microvm-workspaces/config.json",
            "owned by uid 4242, not root",
        ],
    );
    assert_eq!(before, fx.snapshot());
    // Control: root's own config, reached through root-owned links as on NixOS
    // (/etc -> /etc/static -> the store), is read.
    std::fs::remove_file(&cfg).unwrap();
    fx.write(
        "/nix/store/1111-etc/config.json",
        br#"{"vms": {"vm9": {}}}"#,
    );
    fx.symlink(
        "/etc/static/config.json",
        "/etc/microvm-workspaces/config.json",
    );
    fx.symlink("/nix/store/1111-etc", "/etc/static");
    let out = as_user(&fx, 0, "/", &["status", "--json"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"vm9\""));
}

/// Attack 3: unmounts named by a path resolved again (`real_root.join(at)`), which a user
/// swapping the `--root` symlink redirected onto any mount on the host. Through sudo there is
/// no `--root`; and the unmount itself names the checked mount by descriptor: swapping the
/// path under it afterwards changes nothing.
#[test]
fn attack_3_unmount_detaches_the_checked_mount_only() {
    in_mount_ns!(attack_3_unmount_detaches_the_checked_mount_only);
    use microvm_workspaces::chase::{Tree, Trust, Walk};
    use microvm_workspaces::entry;
    use microvm_workspaces::paths::Root;
    let fx = vm1();
    let out = via_sudo(
        ALICE,
        &fx.p("/home/alice/vm1"),
        &[],
        &[
            "--root",
            fx.root().to_str().unwrap(),
            "unlink",
            "vm1",
            "--no-restart",
        ],
    );
    assert_one_line_error(&out, &["refused through sudo"]);

    let tmpfs = |p: &Path| {
        nix::mount::mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap()
    };
    let ours = fx.mkdir("/srv/p/entry", 0, 0o755);
    tmpfs(&ours);
    std::fs::write(ours.join("ours"), b"").unwrap();
    let tree = Tree::open(&Root::from_args(Some(fx.root())).unwrap()).unwrap();
    let Walk::Found(node) = tree.walk(Path::new("/srv/p/entry"), Trust::Owners).unwrap() else {
        panic!("entry not found")
    };
    // The path now names another mount (someone else's).
    std::fs::rename(fx.p("/srv/p"), fx.p("/srv/p-old")).unwrap();
    let theirs = fx.mkdir("/srv/p/entry", 0, 0o755);
    tmpfs(&theirs);
    std::fs::write(theirs.join("theirs"), b"").unwrap();
    entry::unmount(&node).unwrap();
    assert!(
        is_mountpoint(&theirs),
        "the mount the path names now was detached"
    );
    assert!(theirs.join("theirs").exists());
    assert!(
        !is_mountpoint(&fx.p("/srv/p-old/entry")),
        "the checked mount is still there"
    );
    // And a directory that is not a mount is refused, not passed to umount2.
    let Walk::Found(plain) = tree.walk(Path::new("/home/alice"), Trust::Owners).unwrap() else {
        panic!()
    };
    assert!(entry::unmount(&plain).is_err());
}

/// Attack 4: anyone allowed to run microvm-link could unlink another user's link or relink
/// it to their own repo, and have another user's directory in the way moved aside.
#[test]
fn attack_4_owners_decide_who_changes_an_entry() {
    in_mount_ns!(attack_4_owners_decide_who_changes_an_entry);
    let fx = vm1();
    assert_ok(&as_user(
        &fx,
        BOB,
        "/home/bob/vm1",
        &["vm1", "--no-restart"],
    ));
    let linked = fx.snapshot();
    let entry = fx.p(&format!("{WS}/vm1"));
    assert!(entry.join("bob-was-here").exists());
    for args in [
        vec!["vm1", "--no-restart"],
        vec!["unlink", "vm1", "--no-restart"],
    ] {
        let out = as_user(&fx, ALICE, "/home/alice/vm1", &args);
        assert_one_line_error(
            &out,
            &["is a link of uid 4343", "only they or root may change it"],
        );
        assert_eq!(linked, fx.snapshot(), "{args:?}");
        assert!(
            entry.join("bob-was-here").exists(),
            "{args:?}: bob's link was changed"
        );
    }
    // Bob's repo gone: the link is dangling, and anyone may take the entry over.
    std::fs::rename(fx.p("/home/bob/vm1"), fx.p("/home/bob/vm1.moved")).unwrap();
    assert_ok(&as_user(
        &fx,
        ALICE,
        "/home/alice/vm1",
        &["vm1", "--no-restart"],
    ));
    assert!(entry.join("alice-was-here").exists());
    // Root may change anyone's.
    assert_ok(&as_user(&fx, 0, "/", &["unlink", "vm1", "--no-restart"]));
    assert!(is_marked(&entry));

    // A directory of bob's in the way is not alice's to move aside; her own is.
    let fx = vm1();
    let entry = fx.mkdir(&format!("{WS}/vm1"), BOB, 0o700);
    std::fs::write(entry.join("bobs"), b"").unwrap();
    fx.write(&format!("{WS}/.lock"), b""); // bookkeeping the refused run may create
    chmod(&fx.p(&format!("{WS}/.lock")), 0o600);
    let before = fx.snapshot();
    let out = as_user(&fx, ALICE, "/home/alice/vm1", &["vm1", "--no-restart"]);
    assert_one_line_error(&out, &["is a directory of uid 4343", "only they or root"]);
    assert_eq!(before, fx.snapshot());
    std::os::unix::fs::chown(&entry, Some(ALICE), Some(ALICE)).unwrap();
    let out = as_user(&fx, ALICE, "/home/alice/vm1", &["vm1", "--no-restart"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("moved your directory"));
    assert!(entry.join("alice-was-here").exists());
}

/// Attack 5: a user who owns `<stateDir>/<vm>` (microvm.nix makes it microvm:kvm 0775) points
/// `current` at a tree of their own; every later link by anyone failed, after relinking.
#[test]
fn attack_5_one_untrusted_runner_does_not_break_other_links() {
    in_mount_ns!(attack_5_one_untrusted_runner_does_not_break_other_links);
    let fx = vm1();
    fx.mkdir("/var/lib/microvms/evil", BOB, 0o775);
    fx.mkdir("/home/bob/runner/share/microvm/virtiofs/x", BOB, 0o755);
    let source = fx.write(
        "/home/bob/runner/share/microvm/virtiofs/x/source",
        b"/var/lib/microvm-workspaces/vm1/evil\n",
    );
    for p in ["", "/share", "/share/microvm", "/share/microvm/virtiofs"] {
        std::os::unix::fs::chown(fx.p(&format!("/home/bob/runner{p}")), Some(BOB), Some(BOB))
            .unwrap();
    }
    std::os::unix::fs::chown(source, Some(BOB), Some(BOB)).unwrap();
    fx.symlink_as("/home/bob/runner", "/var/lib/microvms/evil/current", BOB);
    let out = as_user(&fx, ALICE, "/home/alice/vm1", &["vm1", "--no-restart"]);
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("skipped VM evil") && err.contains("not root"),
        "{err}"
    );
    assert!(fx.p(&format!("{WS}/vm1/alice-was-here")).exists());
    assert!(
        !fx.p("/home/alice/vm1/evil").exists(),
        "the untrusted runner's source was made"
    );
    // status lists both, and says nothing the runner claims.
    let out = as_user(&fx, 0, "/", &["status", "--json"]);
    assert_ok(&out);
    let st = String::from_utf8_lossy(&out.stdout);
    assert!(st.contains("\"evil\"") && !st.contains("vm1/evil"), "{st}");
}

/// Attack 6: a config or `/run` record that is a user's symlink to a root-only file was
/// followed, and its content came back in the error text.
#[test]
fn attack_6_files_root_does_not_trust_are_never_read() {
    in_mount_ns!(attack_6_files_root_does_not_trust_are_never_read);
    let fx = vm1();
    fx.write("/root/secret", b"{\"api_token_hunter2\": 1}");
    chmod(&fx.p("/root/secret"), 0o600);
    fx.mkdir("/etc/microvm-workspaces", ALICE, 0o755);
    fx.symlink_as("/root/secret", "/etc/microvm-workspaces/config.json", ALICE);
    for args in [vec!["status"], vec!["vm1", "--no-restart"]] {
        let out = as_user(&fx, ALICE, "/home/alice/vm1", &args);
        assert_one_line_error(&out, &["config /etc/microvm-workspaces/config.json"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("hunter2"), "{err}");
    }
    // A root-owned directory does not make a user's link in it trusted either.
    std::fs::remove_file(fx.p("/etc/microvm-workspaces/config.json")).unwrap();
    std::os::unix::fs::chown(fx.p("/etc/microvm-workspaces"), Some(0), Some(0)).unwrap();
    fx.symlink_as("/root/secret", "/etc/microvm-workspaces/config.json", ALICE);
    let out = as_user(&fx, ALICE, "/home/alice/vm1", &["status"]);
    assert_one_line_error(&out, &["owned by uid 4242, not root"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
    std::fs::remove_file(fx.p("/etc/microvm-workspaces/config.json")).unwrap();

    // The /run record: a user's link to the secret is ignored, never quoted.
    fx.mkdir("/run/microvm-workspaces", 0, 0o755);
    fx.symlink_as("/root/secret", "/run/microvm-workspaces/vm1.json", ALICE);
    let out = as_user(&fx, 0, "/", &["status", "vm1", "--json"]);
    assert_ok(&out);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("hunter2"), "{all}");
    // Control: root's own config with an unknown key is named, for the admin.
    std::fs::remove_file(fx.p("/run/microvm-workspaces/vm1.json")).unwrap();
    fx.config(r#"{"colour": "blue"}"#);
    let out = as_user(&fx, 0, "/", &["status"]);
    assert_one_line_error(&out, &["unknown field `colour`"]);
}
