//! Privilege attacks by an unprivileged user against root's prepare and microvm-link: symlinks
//! into /etc, a TOCTOU flipper, `../` names, foreign repos, spoofed `SUDO_UID`, forged
//! placeholders; and the sudo boundary (issue 9), one test per attack found against it, each
//! of which made root act on other people's files, detach mounts, or quote root-only files
//! before the fix. Each runs the real binary as root, as sudo would (`SUDO_UID`), or as root
//! acting for a user (`--user`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::*;

static ATTACKS: AtomicUsize = AtomicUsize::new(0);

fn attack() {
    ATTACKS.fetch_add(1, Ordering::Relaxed);
}

/// nixfiles (alice's repo, in her own home) and web, whose source lies in it.
fn nested_rig() -> Rig {
    let fx = rig();
    fx.nixfiles_with_hosts(&["web"]);
    fx.mkdir("/home/alice", ALICE, 0o755);
    fx.repo("/home/alice/nixfiles", ALICE);
    fx.mkdir("/home/alice/nixfiles/.git", ALICE, 0o755);
    // What a confused resolver would write into as root.
    fx.mkdir("/etc/microvms", 0, 0o755);
    fx.mkdir("/root/microvms", 0, 0o700);
    fx.mkdir("/root", 0, 0o700);
    fx
}

/// Nothing on the real host's /etc or /root either (the walk never leaves the root).
fn host_untouched() {
    for p in [
        "/etc/microvms/web",
        "/root/microvms/web",
        "/etc/web",
        "/root/web",
    ] {
        assert!(!Path::new(p).exists(), "{p} exists on the host");
    }
}

#[test]
fn a_users_symlink_to_etc_or_root_never_leads_link_or_prepare_there() {
    in_mount_ns!(a_users_symlink_to_etc_or_root_never_leads_link_or_prepare_there);
    for target in [
        "/etc",
        "/root",
        "../../../../../../etc",
        "/home/alice/../../root",
    ] {
        attack();
        let fx = nested_rig();
        user_symlink(&fx, target, "/home/alice/nixfiles/hosts", ALICE);
        let etc = snapshot(&fx.p("/etc"));
        let root = snapshot(&fx.p("/root"));
        // microvm-link ensures web's nested source through the new link.
        let out = Run::link(&fx)
            .user(ALICE)
            .cwd("/home/alice/nixfiles")
            .args(["--no-restart"])
            .output();
        assert_one_line_error(&out, &["unsafe path transition"]);
        // And web's next start, with the link recorded anyway (link refuses before it
        // changes anything, so the record is made by hand here).
        fx.mkdir(&format!("{WS}/.links"), 0, 0o755);
        user_symlink(
            &fx,
            "/home/alice/nixfiles",
            &format!("{WS}/.links/nixfiles"),
            ALICE,
        );
        assert_one_line_error(&fx.prepare("web"), &["unsafe path transition"]);
        assert_eq!(
            etc,
            snapshot(&fx.p("/etc")),
            "{target}: root wrote into /etc"
        );
        assert_eq!(
            root,
            snapshot(&fx.p("/root")),
            "{target}: root wrote into /root"
        );
        assert!(!fx.p("/etc/microvms/web").exists() && !fx.p("/root/microvms/web").exists());
        host_untouched();
    }
    // Control: the same with a real directory creates the source, as alice, in her repo.
    let fx = nested_rig();
    fx.mkdir("/home/alice/nixfiles/hosts", ALICE, 0o755);
    Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/nixfiles")
        .args(["--no-restart"])
        .ok();
    assert_eq!(
        meta(&fx.p("/home/alice/nixfiles/hosts/microvms/web")).0,
        ALICE
    );
    eprintln!(
        "attacks tried: {} (a_users_symlink_to_etc_or_root_never_leads_link_or_prepare_there)",
        ATTACKS.load(Ordering::Relaxed)
    );
}

#[test]
fn flipping_a_directory_and_a_symlink_to_etc_during_prepares_never_writes_into_etc() {
    in_mount_ns!(flipping_a_directory_and_a_symlink_to_etc_during_prepares_never_writes_into_etc);
    let fx = nested_rig();
    Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/nixfiles")
        .args(["--no-restart"])
        .ok();
    let repo = fx.p("/home/alice/nixfiles");
    // `hosts` and `hosts.flip`: alice's directory and alice's symlink to /etc, swapped
    // atomically (RENAME_EXCHANGE) as fast as possible while prepares and links run.
    fx.mkdir("/home/alice/nixfiles/hosts", ALICE, 0o755);
    user_symlink(&fx, "/etc", "/home/alice/nixfiles/hosts.flip", ALICE);
    let dir = nix::fcntl::open(
        &repo.join("hosts"),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let etc = snapshot(&fx.p("/etc"));
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (stop, repo) = (stop.clone(), repo.clone());
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &repo.join("hosts"),
                    nix::fcntl::AT_FDCWD,
                    &repo.join("hosts.flip"),
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .unwrap();
                flips += 1;
            }
            flips
        })
    };
    let (mut made, mut refused) = (0, 0);
    let runs = 300;
    for i in 0..runs {
        let out = if i % 4 == 3 {
            Run::link(&fx)
                .user(ALICE)
                .cwd("/home/alice/nixfiles")
                .args(["--no-restart"])
                .output()
        } else {
            fx.prepare("web")
        };
        if out.status.success() {
            made += 1;
        } else {
            // The only acceptable failure: the walk saw the symlink and refused it.
            assert_one_line_error(&out, &["unsafe path transition"]);
            refused += 1;
        }
        // Whatever was created went into alice's directory, as alice; reset for the next run.
        let web = nix::sys::stat::fstatat(
            &dir,
            "microvms/web",
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if let Ok(st) = web {
            assert_eq!(st.st_uid, ALICE, "run {i}: created as {}", st.st_uid);
            nix::unistd::unlinkat(&dir, "microvms/web", nix::unistd::UnlinkatFlags::RemoveDir)
                .unwrap();
        }
        assert!(
            !fx.p("/etc/microvms/web").exists(),
            "run {i}: root created /etc/microvms/web"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    assert_eq!(
        etc,
        snapshot(&fx.p("/etc")),
        "something was written into /etc"
    );
    host_untouched();
    // Controls: the race really was run (both outcomes seen, many flips).
    assert!(
        made > 0 && refused > 0,
        "made {made}, refused {refused}: no race happened"
    );
    assert!(flips > 1000, "only {flips} flips");
    ATTACKS.fetch_add(runs, Ordering::Relaxed);
    eprintln!("TOCTOU: {runs} runs against {flips} flips: {made} created in the repo, {refused} refused, 0 in /etc");
}

#[test]
fn vm_names_that_climb_out_are_refused_everywhere() {
    let fx = rig();
    fx.runner("vm1", &[("ws", b"/var/lib/microvm-workspaces/vm1")]);
    fx.repo("/home/alice/vm1", ALICE);
    fx.repo("/home/alice/..hidden", ALICE);
    fx.mkdir("/run", 0, 0o755);
    let before = fx.snapshot();
    for vm in [
        "../etc",
        "..",
        ".",
        "vm1/../../etc",
        "../../run/x",
        "/etc",
        ".hidden",
        "a\nb",
    ] {
        attack();
        for args in [
            vec![vm, "--no-restart"],
            vec!["unlink", vm, "--no-restart"],
            vec!["status", vm],
        ] {
            let out = Run::link(&fx)
                .user(ALICE)
                .cwd("/home/alice/vm1")
                .args(&args)
                .output();
            assert_one_line_error(&out, &["VM name"]);
        }
        assert_one_line_error(&fx.prepare(vm), &["VM name"]);
    }
    // A unit instance escaping a slash (`%i` of `microvm@..\x2fetc`) and a derived name.
    attack();
    assert_one_line_error(&fx.prepare(r"..\x2fetc"), &["VM name \"../etc\""]);
    attack();
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/..hidden")
        .args(["--no-restart"])
        .output();
    assert_one_line_error(&out, &["name the VM"]);
    assert_eq!(before, fx.snapshot(), "a refused name changed the tree");
    assert!(!fx.p("/run/etc.json").exists() && !fx.p("/etc.json").exists());
    // In the config: VM names and companion entries.
    for cfg in [
        r#"{"vms": {"../evil": {}}}"#,
        r#"{"companions": {"vm1": {"../../etc": "x"}}}"#,
        r#"{"companions": {"../vm1": {"side": "x"}}}"#,
        r#"{"companions": {"vm1": {"side": "/etc"}}}"#,
    ] {
        attack();
        fx.config(cfg);
        assert_one_line_error(&fx.prepare("vm1"), &["config"]);
    }
    // Control: a good name goes through.
    std::fs::remove_file(fx.p("/etc/microvm-workspaces/config.json")).unwrap();
    Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/vm1")
        .args(["--no-restart", "--dry-run"])
        .ok();
    eprintln!(
        "attacks tried: {} (vm_names_that_climb_out_are_refused_everywhere)",
        ATTACKS.load(Ordering::Relaxed)
    );
}

#[test]
fn a_repo_the_user_does_not_own_is_never_linked() {
    in_mount_ns!(a_repo_the_user_does_not_own_is_never_linked);
    let fx = rig();
    fx.config(r#"{"companions": {"vm1": {"side": "../side"}}}"#);
    fx.runner("vm1", &[("ws", b"/var/lib/microvm-workspaces/vm1")]);
    fx.mkdir("/home/alice", ALICE, 0o755);
    fx.repo("/home/alice/vm1", ALICE);
    fx.mkdir("/home/bob", BOB, 0o755);
    fx.repo("/home/bob/vm1", BOB);
    fx.repo("/srv/rootrepo", 0);
    user_symlink(&fx, "/home/bob/vm1", "/home/alice/to-bob", ALICE);
    user_symlink(&fx, "../bob/vm1", "/home/alice/to-bob-rel", ALICE);
    let before = fx.snapshot();
    let real = |p: &str| fx.p(p).to_str().unwrap().to_string();
    for repo in [
        real("/home/bob/vm1"),
        "../bob/vm1".to_string(),
        "to-bob".to_string(),
        "to-bob-rel".to_string(),
        real("/srv/rootrepo"),
        real("/etc"),
        real("/"),
        "/".to_string(), // outside the root
        real("/home/alice/vm1/../../bob/vm1"),
        real("/home/alice/missing"),
    ] {
        attack();
        let out = Run::link(&fx)
            .user(ALICE)
            .cwd("/home/alice")
            .args(["vm1", "--repo", &repo, "--no-restart"])
            .output();
        assert_eq!(
            out.status.code(),
            Some(1),
            "--repo {repo} was accepted: {}",
            stderr(&out)
        );
        assert_eq!(stderr(&out).lines().count(), 1, "{repo}: {}", stderr(&out));
        assert_eq!(before, fx.snapshot(), "--repo {repo} changed the tree");
        assert!(
            mounts_under(fx.root()).is_empty(),
            "--repo {repo} mounted something"
        );
    }
    // A companion that is bob's (through alice's symlink, or bob's own directory) is not
    // linked for alice: it stays a placeholder.
    for side in ["symlink", "dir"] {
        attack();
        let _ = std::fs::remove_file(fx.p("/home/alice/side"));
        if side == "symlink" {
            user_symlink(&fx, "/home/bob/vm1", "/home/alice/side", ALICE);
        } else {
            fx.mkdir("/home/alice/side", BOB, 0o755);
        }
        Run::link(&fx)
            .user(ALICE)
            .cwd("/home/alice/vm1")
            .args(["--no-restart"])
            .ok();
        assert!(
            record(&fx, "side").is_none(),
            "{side}: bob's directory linked for alice"
        );
        assert_eq!(mount_count(&fx.p(&format!("{WS}/side"))), 0);
        let _ = std::fs::remove_dir(fx.p("/home/alice/side"));
    }
    // Control: her own repo is linked.
    assert_agree(&fx, "vm1", "control");
    assert_eq!(record(&fx, "vm1"), Some(PathBuf::from("/home/alice/vm1")));
    eprintln!(
        "attacks tried: {} (a_repo_the_user_does_not_own_is_never_linked)",
        ATTACKS.load(Ordering::Relaxed)
    );
}

#[test]
fn a_spoofed_sudo_uid_is_never_trusted() {
    in_mount_ns!(a_spoofed_sudo_uid_is_never_trusted);
    let fx = rig();
    fx.runner("vm1", &[("ws", b"/var/lib/microvm-workspaces/vm1")]);
    fx.repo("/home/alice/vm1", ALICE);
    fx.repo("/home/bob/vm1", BOB);
    let bob_repo = fx.p("/home/bob/vm1").to_str().unwrap().to_string();
    let alice_repo = fx.p("/home/alice/vm1").to_str().unwrap().to_string();
    let before = fx.snapshot();

    // 1. Not root at all, SUDO_UID=0 and a `sudo` of the user's own that does not make them
    // root: microvm-link asks sudo once, notices it came back unprivileged, and stops.
    attack();
    let bin = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        bin.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // A copy of microvm-link that uid 4242 can run wherever the build tree lives.
    let link = bin.path().join("microvm-link");
    std::fs::copy(LINK, &link).unwrap();
    let log = bin.path().join("calls");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let sudo = bin.path().join("sudo");
    std::fs::write(
        &sudo,
        format!(
            "#!/bin/sh\necho \"uid=$(id -u) SUDO_UID=$SUDO_UID $*\" >> {log}\n\
             [ $(wc -l < {log}) -gt 3 ] && exit 97\n[ \"$1\" = -n ] && shift\n[ \"$1\" = -- ] && shift\nexec \"$@\"\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&sudo, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    let out = Run::new(&link)
        .drop_to(ALICE)
        .cwd_real("/")
        // (not re-rooted: a normal user may not re-root through sudo, and is told so first)
        .envs(&[
            ("SUDO_UID", "0"),
            ("PATH", &path),
            ("MICROVM_WORKSPACES_ROOT", ""),
        ])
        .args(["vm1", "--repo", &bob_repo, "--no-restart"])
        .output();
    assert_one_line_error(&out, &["not as root", "real sudo"]);
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls.lines().count(), 1, "sudo was asked {calls:?}");
    assert!(
        // `-n`: no terminal to ask a password on (flow::sudo_command)
        calls.starts_with("uid=4242 SUDO_UID=0 -n -- ") && calls.contains(link.to_str().unwrap()),
        "{calls}"
    );
    assert_eq!(before, fx.snapshot());

    // 2. Root's powers (a set-uid copy) but a real uid of alice: SUDO_UID is not believed,
    // whatever it claims.
    for claim in ["0", "4343"] {
        attack();
        let out = Run::new(&link)
            .root(&fx)
            .real_uid(ALICE)
            .cwd_real("/")
            .envs(&[("SUDO_UID", claim)])
            .args(["vm1", "--repo", &bob_repo, "--no-restart"])
            .output();
        assert_one_line_error(&out, &["SUDO_UID is set", "refusing to trust it"]);
        assert_eq!(before, fx.snapshot(), "SUDO_UID={claim}");
    }
    // Control: the same without SUDO_UID acts as alice: bob's repo refused, hers linked.
    let out = Run::new(&link)
        .root(&fx)
        .real_uid(ALICE)
        .cwd_real("/")
        .args(["vm1", "--repo", &bob_repo, "--no-restart"])
        .output();
    assert_one_line_error(&out, &["owned by uid 4343", "not by you (uid 4242)"]);
    let out = Run::new(&link)
        .root(&fx)
        .real_uid(ALICE)
        .cwd_real("/")
        .args(["vm1", "--repo", &alice_repo, "--no-restart"])
        .output();
    assert_ok(&out);
    assert_eq!(record(&fx, "vm1"), Some(PathBuf::from("/home/alice/vm1")));
    let linked = fx.snapshot();

    // 3. As root, SUDO_UID that is not a plain uid: refused, nothing done.
    for bogus in ["", "abc", "-1", " 0", "0x0", "4294967296", "0\n"] {
        attack();
        let out = Run::new(&link)
            .root(&fx)
            .real_uid(0)
            .cwd_real("/")
            .envs(&[("SUDO_UID", bogus)])
            .args(["vm1", "--repo", &bob_repo, "--no-restart"])
            .output();
        assert_one_line_error(&out, &["SUDO_UID", "not a number"]);
        assert_eq!(linked, fx.snapshot(), "SUDO_UID={bogus:?}");
    }
    eprintln!(
        "attacks tried: {} (a_spoofed_sudo_uid_is_never_trusted)",
        ATTACKS.load(Ordering::Relaxed)
    );
}

#[test]
fn forged_placeholders_are_never_taken_for_ours() {
    in_mount_ns!(forged_placeholders_are_never_taken_for_ours);
    // 1. A user cannot set the trusted mark (root can: the control).
    attack();
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    for (who, dir) in [("alice", "mine"), ("root", "roots")] {
        let d = t.path().join(dir);
        std::fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(ALICE), Some(ALICE)).unwrap();
        let mut c = Command::new("setpriv");
        if who == "alice" {
            c.args(["--reuid=4242", "--regid=4242", "--clear-groups"]);
        }
        let out = c
            .args([
                "--",
                "setfattr",
                "-n",
                "trusted.microvm-workspaces",
                "-v",
                "placeholder",
            ])
            .arg(&d)
            .output()
            .unwrap();
        assert_eq!(
            out.status.success(),
            who == "root",
            "{who}: {}",
            stderr(&out)
        );
        assert_eq!(is_marked(&d), who == "root");
    }

    // 2. Look-alikes in the workspace dir, each holding a file: root 0555 without the mark,
    // and alice's 0555 with the mark in the user namespace (which she may set).
    for forged in ["root-0555", "alice-user-xattr"] {
        attack();
        let fx = link_base();
        fx.mkdir(WS, 0, 0o755);
        let entry = fx.p(&format!("{WS}/vm1"));
        let (uid, _) = if forged == "root-0555" {
            (0, 0)
        } else {
            (ALICE, 0)
        };
        fx.mkdir(&format!("{WS}/vm1"), uid, 0o755);
        fx.write(&format!("{WS}/vm1/precious"), b"do not lose me");
        fx.write(&format!("{WS}/vm1/deeper"), b"x");
        if forged == "alice-user-xattr" {
            let st = Command::new("setfattr")
                .args(["-n", "user.microvm-workspaces", "-v", "placeholder"])
                .arg(&entry)
                .status()
                .unwrap();
            assert!(st.success());
        }
        std::fs::set_permissions(&entry, std::os::unix::fs::PermissionsExt::from_mode(0o555))
            .unwrap();
        // A record pointing at a repo: prepare must not mount over the look-alike.
        fx.mkdir(&format!("{WS}/.links"), 0, 0o755);
        user_symlink(&fx, A, &format!("{WS}/.links/vm1"), ALICE);
        Run::prepare(&fx, "vm1").ok();
        assert_eq!(mount_count(&entry), 0, "{forged}: prepare mounted over it");
        assert_eq!(
            std::fs::read(entry.join("precious")).unwrap(),
            b"do not lose me"
        );
        // microvm-link moves it aside (not deleted) and mounts on a real placeholder: alice's
        // own, and root's (nobody's work: any linker may; issue 16).
        let out = Run::link(&fx)
            .user(ALICE)
            .cwd(A)
            .args(["vm1", "--no-restart"])
            .ok();
        let said = if forged == "root-0555" {
            "moved the directory of root (uid 0)"
        } else {
            "moved your directory"
        };
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(said),
            "{forged}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        displaced_and_kept(&fx, forged);
        assert_agree(&fx, "vm1", forged);
        nix::mount::umount2(&entry, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert!(
            is_marked(&entry),
            "{forged}: the mountpoint is not our placeholder"
        );
        let kept = files_named(&fx.p(&format!("{WS}/.displaced")), "precious");
        assert_eq!(mount_count(kept[0].0.parent().unwrap()), 0);
    }
    eprintln!(
        "attacks tried: {} (forged_placeholders_are_never_taken_for_ours)",
        ATTACKS.load(Ordering::Relaxed)
    );
}

// ---- found while attacking ----

/// web's source lies inside nixfiles' entry and web starts first: the entry prepare makes on
/// the way is a placeholder (not a plain directory), so the later link mounts on it instead
/// of taking it for a user's directory and moving it aside.
#[test]
fn an_entry_created_as_a_parent_is_a_placeholder_a_link_can_mount_on() {
    in_mount_ns!(an_entry_created_as_a_parent_is_a_placeholder_a_link_can_mount_on);
    let fx = nested_rig();
    let out = fx.run(PREPARE, &["--dry-run", "web"]);
    assert_ok(&out);
    let plan = String::from_utf8(out.stdout).unwrap();
    assert!(
        plan.contains("would create placeholder /var/lib/microvm-workspaces/nixfiles ("),
        "{plan}"
    );
    fx.prepare_ok("web");
    let entry = fx.p(&format!("{WS}/nixfiles"));
    assert_eq!(meta(&entry), (0, 0, 0o555));
    assert!(is_marked(&entry));
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/nixfiles")
        .args(["--no-restart"])
        .ok();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("moved your directory"), "{text}");
    assert!(!fx.p(&format!("{WS}/.displaced")).exists());
    assert_agree(&fx, "nixfiles", "linked");
    assert_eq!(
        meta(&fx.p("/home/alice/nixfiles/hosts/microvms/web")).0,
        ALICE
    );
}
// ---- the sudo boundary (issue 9) ----

/// How long a microvm-link run may take before the test calls it blocked.
const LIMIT: Duration = Duration::from_secs(20);

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
        let out = Run::new(LINK)
            .env("SUDO_UID", ALICE.to_string())
            .cwd(tmp)
            .envs(&env)
            .args(&args)
            .stdin_null()
            .output_within(LIMIT);
        assert_one_line_error(&out, &["refused through sudo"]);
        assert_eq!(before, snapshot(tmp), "{args:?}");
        assert!(!is_mountpoint(&victim), "{args:?}: mounted over the victim");
    }
    // `--user` is root's own too.
    let out = Run::new(LINK)
        .env("SUDO_UID", ALICE.to_string())
        .cwd(tmp)
        .args(["--user", "0", "status"])
        .stdin_null()
        .output_within(LIMIT);
    assert_one_line_error(&out, &["--user is refused through sudo"]);

    // Root itself may re-root, but a workspace dir others may write to is not a trusted
    // place: root refuses to act there, whoever it acts for.
    let out = Run::new(LINK)
        .args(["--root", root, "--user", &ALICE.to_string()])
        .args(["victim", "--repo", repo_s, "--no-restart"])
        .cwd(tmp)
        .output();
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
    let out = Run::new(LINK)
        .env("SUDO_UID", ALICE.to_string())
        .cwd(fx.p("/home/alice/vm1"))
        .args(["--root", root_link.to_str().unwrap(), "vm1", "--no-restart"])
        .stdin_null()
        .output_within(LIMIT);
    assert_one_line_error(&out, &["refused through sudo"]);
    // Root itself, with the same tree: the FIFO (alice's) is refused unopened.
    let out = link_as(&fx, ALICE, "/home/alice/vm1", &["vm1", "--no-restart"]);
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
    let out = link_as(&fx, 0, "/", &["status", "--json"]);
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
    use crate::common::api::{self, Root, Tree, Trust, Walk};
    let fx = vm1();
    let out = Run::new(LINK)
        .env("SUDO_UID", ALICE.to_string())
        .cwd(fx.p("/home/alice/vm1"))
        .args([
            "--root",
            fx.root().to_str().unwrap(),
            "unlink",
            "vm1",
            "--no-restart",
        ])
        .stdin_null()
        .output_within(LIMIT);
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
    api::unmount(&node).unwrap();
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
    assert!(api::unmount(&plain).is_err());
}

/// `microvm-link ARGS` as `uid` (through `--user`, as sudo would say) in `cwd`, stdin closed,
/// killed if it outlives [`LIMIT`].
fn link_as(fx: &Fx, uid: u32, cwd: &str, args: &[&str]) -> std::process::Output {
    Run::link(fx)
        .user(uid)
        .cwd(cwd)
        .args(args)
        .stdin_null()
        .output_within(LIMIT)
}

/// Attack 4: anyone allowed to run microvm-link could unlink another user's link or relink
/// it to their own repo, and have another user's directory in the way moved aside.
#[test]
fn attack_4_owners_decide_who_changes_an_entry() {
    in_mount_ns!(attack_4_owners_decide_who_changes_an_entry);
    let fx = vm1();
    assert_ok(&link_as(
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
        let out = Run::link(&fx)
            .user(ALICE)
            .cwd("/home/alice/vm1")
            .args(&args)
            .stdin_null()
            .output_within(LIMIT);
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
    assert_ok(&link_as(
        &fx,
        ALICE,
        "/home/alice/vm1",
        &["vm1", "--no-restart"],
    ));
    assert!(entry.join("alice-was-here").exists());
    // Root may change anyone's.
    assert_ok(&link_as(&fx, 0, "/", &["unlink", "vm1", "--no-restart"]));
    assert!(is_marked(&entry));

    // A directory of bob's in the way is not alice's to move aside; her own is.
    let fx = vm1();
    let entry = fx.mkdir(&format!("{WS}/vm1"), BOB, 0o700);
    std::fs::write(entry.join("bobs"), b"").unwrap();
    fx.write(&format!("{WS}/.lock"), b""); // bookkeeping the refused run may create
    chmod(&fx.p(&format!("{WS}/.lock")), 0o600);
    let before = fx.snapshot();
    let out = link_as(&fx, ALICE, "/home/alice/vm1", &["vm1", "--no-restart"]);
    assert_one_line_error(&out, &["is a directory of uid 4343", "only they or root"]);
    assert_eq!(before, fx.snapshot());
    std::os::unix::fs::chown(&entry, Some(ALICE), Some(ALICE)).unwrap();
    let out = link_as(&fx, ALICE, "/home/alice/vm1", &["vm1", "--no-restart"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("moved your directory"));
    assert!(entry.join("alice-was-here").exists());
}

/// Issue 16: a host that ran microvm.nix has its share sources as `microvm:kvm 0775`
/// directories, often with what guests wrote. Any allowed linker moves such a directory (or
/// root's) aside, whole, into the root-only `.displaced`; a person's directory is still
/// refused, whatever its group (uid 1000 and above are people's). Here the hypervisor is `daemon:daemon` (uid/gid 1, on every
/// Debian): the config names it as the NixOS module would name `microvm:kvm`.
#[test]
fn a_hypervisor_directory_in_the_way_moves_aside_for_any_linker() {
    in_mount_ns!(a_hypervisor_directory_in_the_way_moves_aside_for_any_linker);
    const HV: u32 = 1;
    const SERVICE: u32 = 987; // a system uid no account has: a removed service user
    for (case, uid, gid, moves) in [
        ("hypervisor user", HV, HV, true),
        ("root", 0, 0, true),
        ("a service uid, hypervisor group", SERVICE, HV, true),
        ("bob, hypervisor group", BOB, HV, false),
        ("a service uid, other group", SERVICE, 0, false),
    ] {
        attack();
        let fx = vm1();
        fx.config(r#"{"hypervisor": {"user": "daemon", "group": "daemon"}}"#);
        let entry = fx.mkdir(&format!("{WS}/vm1"), 0, 0o775);
        std::os::unix::fs::chown(&entry, Some(uid), Some(gid)).unwrap();
        fx.write(&format!("{WS}/vm1/guest-wrote"), b"from the guest");
        let link = || link_as(&fx, ALICE, "/home/alice/vm1", &["vm1", "--no-restart"]);
        if !moves {
            fx.write(&format!("{WS}/.lock"), b""); // bookkeeping the refused run may create
            chmod(&fx.p(&format!("{WS}/.lock")), 0o600);
            let before = fx.snapshot();
            let out = link();
            assert_one_line_error(
                &out,
                &[&format!("is a directory of uid {uid}"), "only they or root"],
            );
            assert_eq!(
                before,
                fx.snapshot(),
                "{case}: a refused link changed something"
            );
            continue;
        }
        let out = link();
        assert_ok(&out);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("moved the directory of") && said.contains("only root can read it there"),
            "{case}: {said}"
        );
        assert!(entry.join("alice-was-here").exists(), "{case}: not linked");
        let kept = files_named(&fx.p(&format!("{WS}/.displaced")), "guest-wrote");
        assert_eq!(kept.len(), 1, "{case}: {kept:?}");
        assert_eq!(kept[0].1, b"from the guest");
        // Whole: owner, group and mode as they were.
        let moved = kept[0].0.parent().unwrap();
        assert_eq!(meta(moved), (uid, gid, 0o775), "{case}");
        // Root-only: alice cannot even list it.
        let displaced = fx.p(&format!("{WS}/.displaced"));
        assert_eq!(meta(&displaced), (0, 0, 0o700), "{case}");
        let peek = Command::new("setpriv")
            .args([
                "--reuid=4242",
                "--regid=4242",
                "--clear-groups",
                "--",
                "cat",
            ])
            .arg(&kept[0].0)
            .output()
            .unwrap();
        assert!(!peek.status.success(), "{case}: alice read the moved data");
    }
    eprintln!(
        "attacks tried: {} (a_hypervisor_directory_in_the_way_moves_aside_for_any_linker)",
        ATTACKS.load(Ordering::Relaxed)
    );
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
    let out = link_as(&fx, ALICE, "/home/alice/vm1", &["vm1", "--no-restart"]);
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
    let out = link_as(&fx, 0, "/", &["status", "--json"]);
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
        let out = Run::link(&fx)
            .user(ALICE)
            .cwd("/home/alice/vm1")
            .args(&args)
            .stdin_null()
            .output_within(LIMIT);
        assert_one_line_error(&out, &["config /etc/microvm-workspaces/config.json"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("hunter2"), "{err}");
    }
    // A root-owned directory does not make a user's link in it trusted either.
    std::fs::remove_file(fx.p("/etc/microvm-workspaces/config.json")).unwrap();
    std::os::unix::fs::chown(fx.p("/etc/microvm-workspaces"), Some(0), Some(0)).unwrap();
    fx.symlink_as("/root/secret", "/etc/microvm-workspaces/config.json", ALICE);
    let out = link_as(&fx, ALICE, "/home/alice/vm1", &["status"]);
    assert_one_line_error(&out, &["owned by uid 4242, not root"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
    std::fs::remove_file(fx.p("/etc/microvm-workspaces/config.json")).unwrap();

    // The /run record: a user's link to the secret is ignored, never quoted.
    fx.mkdir("/run/microvm-workspaces", 0, 0o755);
    fx.symlink_as("/root/secret", "/run/microvm-workspaces/vm1.json", ALICE);
    let out = link_as(&fx, 0, "/", &["status", "vm1", "--json"]);
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
    let out = link_as(&fx, 0, "/", &["status"]);
    assert_one_line_error(&out, &["unknown field `colour`"]);
}

/// Attack 7 (found by review): sudo keeps the caller's PATH unless sudoers sets
/// `secure_path` (NixOS's does not), and their umask. Root then ran the caller's `virtiofsd
/// --version` (doctor) and `systemctl` (restarts), and created its directories with the
/// caller's umask.
#[test]
fn attack_7_the_callers_path_and_umask_are_not_roots() {
    in_mount_ns!(attack_7_the_callers_path_and_umask_are_not_roots);
    attack();
    // A root-owned program on the caller's PATH (on NixOS anyone can put one in the store).
    let bin = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ran = bin.path().join("ran-as");
    for name in ["virtiofsd", "systemctl"] {
        let p = bin.path().join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\nid -u >> {}\necho 'virtiofsd 1.14.0'\n",
                ran.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.path().display());
    // A known VM on the host's own paths (this namespace's private /var/lib), so that status
    // asks systemd about it.
    nix::mount::mount(
        Some("tmpfs"),
        "/var/lib",
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("mode=0755"),
    )
    .unwrap();
    let store = Path::new("/var/lib/store-vm1/share/microvm/virtiofs/ws");
    std::fs::create_dir_all(store).unwrap();
    std::fs::write(store.join("source"), "/var/lib/microvm-workspaces/vm1\n").unwrap();
    std::fs::create_dir_all("/var/lib/microvms/vm1").unwrap();
    std::os::unix::fs::symlink("/var/lib/store-vm1", "/var/lib/microvms/vm1/current").unwrap();
    for args in [vec!["doctor"], vec!["status"]] {
        let _ = Run::new(LINK)
            .env("SUDO_UID", ALICE.to_string())
            .env("PATH", &path)
            .cwd_real("/")
            .args(&args)
            .stdin_null()
            .output_within(LIMIT);
        let who = std::fs::read_to_string(&ran).unwrap_or_default();
        assert!(
            !who.lines().any(|l| l == "0"),
            "{args:?}: root ran a program from the caller's PATH"
        );
    }

    // The umask: root's directories are 0755 whatever the caller's is.
    let fx = vm1();
    fx.mkdir("/var/lib/microvm-workspaces", 0, 0o755);
    fx.runner("lv", &[("l", b"/var/lib/microvm-workspaces/.live/vm1/sub")]);
    fx.prepare_ok("lv");
    let out = Command::new("sh")
        .args(["-c", "umask 077 && exec \"$@\"", "sh", LINK])
        .args(["--user", &ALICE.to_string(), "vm1", "--no-restart"])
        .env("MICROVM_WORKSPACES_ROOT", fx.root())
        .env_remove("SUDO_UID")
        .current_dir(fx.p("/home/alice/vm1"))
        .output()
        .unwrap();
    assert_ok(&out);
    for p in ["/var/lib/microvm-workspaces/.links", "/home/alice/vm1/sub"] {
        assert_eq!(meta(&fx.p(p)).2, 0o755, "{p}");
    }
}

/// Found by review: an unlink of what is not linked changed nothing, yet restarted the VM
/// (any group member could restart any known VM).
#[test]
fn an_unlink_that_changes_nothing_restarts_nothing() {
    in_mount_ns!(an_unlink_that_changes_nothing_restarts_nothing);
    let fx = vm1();
    let out = Run::link(&fx)
        .user(ALICE)
        .cwd("/")
        .args(["unlink", "vm1", "--json"])
        .ok_stdout();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["restart"]["result"], "not-needed", "{v}");
    assert_eq!(v["changed"], 0, "{v}");
}

/// Found by review: a repo its owner replaced by a link into someone else's tree made every
/// start of every VM sharing the entry fail; it is now as good as gone.
#[test]
fn a_repo_that_cannot_be_reached_safely_is_gone_for_everyone_else() {
    in_mount_ns!(a_repo_that_cannot_be_reached_safely_is_gone_for_everyone_else);
    let fx = vm1();
    fx.runner("bobvm", &[("s", b"/var/lib/microvm-workspaces/vm1")]);
    Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/vm1")
        .args(["--no-restart"])
        .ok();
    let entry = fx.p("/var/lib/microvm-workspaces/vm1");
    nix::mount::umount2(&entry, nix::mount::MntFlags::MNT_DETACH).unwrap(); // a reboot
    std::fs::rename(fx.p("/home/alice/vm1"), fx.p("/home/alice/vm1.old")).unwrap();
    fx.symlink_as("/home/bob/vm1", "/home/alice/vm1", ALICE);
    fx.prepare_ok("bobvm");
    assert!(
        !is_mountpoint(&entry),
        "bob's tree was mounted for alice's link"
    );
    assert!(is_marked(&entry), "the placeholder does not serve");
}

// ---- issue 18: what one link-group member can do to another's VMs ----

/// `microvm-link ARGS --json` as `uid` in `cwd`, which must succeed; its JSON.
fn link_json(fx: &Fx, uid: u32, cwd: &str, args: &[&str]) -> serde_json::Value {
    let out = Run::link(fx)
        .user(uid)
        .cwd(cwd)
        .args(args)
        .arg("--json")
        .stdin_null()
        .output_within(LIMIT);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The VMs named in a JSON list of `{"vm": ...}` objects (every list in `--json` is one).
fn vms_in(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|x| {
            x["vm"]
                .as_str()
                .expect("an object naming its vm")
                .to_string()
        })
        .collect()
}

/// Issue 18, 2: `microvm-link testvm` from any directory restarted testvm although no share
/// of testvm passes through the entry `testvm` (the NixOS module writes every VM into
/// config.json, so any member could restart any VM). Only a VM with a share through a changed
/// entry restarts; under a re-rooted tree "would restart" shows as `skipped`.
#[test]
fn a_link_restarts_only_vms_with_a_share_through_a_changed_entry() {
    in_mount_ns!(a_link_restarts_only_vms_with_a_share_through_a_changed_entry);
    attack();
    let fx = vm1();
    // testvm shares only nixfiles, not its own entry.
    fx.runner(
        "testvm",
        &[("nixfiles", b"/var/lib/microvm-workspaces/nixfiles")],
    );
    fx.repo("/home/alice/scratch", ALICE);
    let run = |vm: &str, args: &[&str]| {
        link_json(
            &fx,
            ALICE,
            "/home/alice/scratch",
            &[&[vm][..], args].concat(),
        )
    };
    for (vm, args) in [("testvm", &[][..]), ("testvm", &["--restart-stale"][..])] {
        let v = run(vm, args);
        assert_eq!(v["restart"]["result"], "unaffected", "{vm} {args:?}: {v}");
        let why = v["restart"]["why"].as_str().unwrap_or_default();
        assert!(
            why.contains("no share of testvm passes through /var/lib/microvm-workspaces/testvm"),
            "{v}"
        );
    }
    // The control: vm1 shares its own entry, so linking it restarts it.
    let v = run("vm1", &[]);
    assert_eq!(v["restart"]["result"], "skipped", "{v}");
    let v = link_json(&fx, ALICE, "/", &["unlink", "testvm"]);
    assert_eq!(v["restart"]["result"], "unaffected", "{v}");
}

/// Issue 18, 3: `--restart-stale` restarted every stale VM, whoever's link made it stale.
/// For a caller other than root, a VM is restarted only when its stale shares pass through
/// entries the caller links (or this run changed); the others are listed, not restarted.
#[test]
fn restart_stale_restarts_only_what_the_callers_links_made_stale() {
    in_mount_ns!(restart_stale_restarts_only_what_the_callers_links_made_stale);
    attack();
    let fx = vm1();
    fx.runner("bobs", &[("ws", b"/var/lib/microvm-workspaces/bobs")]);
    fx.runner("watch-bob", &[("b", b"/var/lib/microvm-workspaces/bobs")]);
    fx.runner("watch-alice", &[("a", b"/var/lib/microvm-workspaces/vm1")]);
    fx.repo("/home/bob/bobs", BOB);
    for vm in ["watch-bob", "watch-alice"] {
        assert_ok(&Run::prepare(&fx, vm).output_within(LIMIT));
    }
    // bob's link leaves watch-bob stale; alice's leaves watch-alice stale.
    assert_ok(&link_as(
        &fx,
        BOB,
        "/home/bob/bobs",
        &["bobs", "--no-restart"],
    ));
    let v = link_json(&fx, ALICE, "/home/alice/vm1", &["vm1", "--restart-stale"]);
    let stale = vms_in(&v["stale"]);
    assert!(
        stale.contains(&"watch-bob".into()) && stale.contains(&"watch-alice".into()),
        "{v}"
    );
    assert_eq!(vms_in(&v["restartedStale"]), ["watch-alice"], "{v}");
    assert_eq!(vms_in(&v["staleKept"]), ["watch-bob"], "{v}");
    assert!(
        v["staleKept"][0]["why"]
            .as_str()
            .unwrap()
            .contains("linked by uid 4343"),
        "{v}"
    );
    assert_eq!(
        v["restartedStale"][0]["restart"]["result"], "skipped",
        "{v}"
    );
    let text = Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/vm1")
        .args(["vm1", "--restart-stale"])
        .stdin_null()
        .ok_stdout();
    assert!(text.contains("stale: watch-bob still sees the old directory for b; not restarted for you: its share b passes through /var/lib/microvm-workspaces/bobs, linked by uid 4343"), "{text}");
    // A link of alice's from an earlier run still counts as hers: linking another VM,
    // --restart-stale restarts watch-alice (stale through vm1, her record), not watch-bob.
    fx.runner("alice2", &[("ws", b"/var/lib/microvm-workspaces/alice2")]);
    fx.repo("/home/alice/alice2", ALICE);
    let v = link_json(
        &fx,
        ALICE,
        "/home/alice/alice2",
        &["alice2", "--restart-stale"],
    );
    assert_eq!(vms_in(&v["restartedStale"]), ["watch-alice"], "{v}");
    // Root restarts both.
    let v = link_json(&fx, 0, "/home/alice/vm1", &["vm1", "--restart-stale"]);
    assert_eq!(v["restartedStale"].as_array().unwrap().len(), 2, "{v}");
}

/// Issue 18, 5: a symlink in the caller's repo into a directory only root may read made
/// `sudo microvm-link status --json` print what is there (its device:inode), where the caller's
/// own `status` says "missing". Status (and doctor) look with the caller's rights.
#[test]
fn status_for_a_caller_looks_with_the_callers_rights() {
    in_mount_ns!(status_for_a_caller_looks_with_the_callers_rights);
    attack();
    let fx = vm1();
    chmod(fx.root(), 0o755);
    fx.runner("peek", &[("p", b"/var/lib/microvm-workspaces/vm1/secret")]);
    fx.mkdir("/root", 0, 0o700);
    fx.mkdir("/root/secretdir", 0, 0o755);
    assert_ok(&link_as(
        &fx,
        ALICE,
        "/home/alice/vm1",
        &["vm1", "--no-restart"],
    ));
    // After the link (which would refuse it): alice's symlink in her repo, into root's.
    std::fs::remove_dir(fx.p("/home/alice/vm1/secret")).ok();
    user_symlink(&fx, "/root/secretdir", "/home/alice/vm1/secret", ALICE);
    let now = |who: u32| -> serde_json::Value {
        let out = link_as(&fx, who, "/", &["status", "peek", "--json"]);
        assert_ok(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["vms"][0]["shares"][0].clone()
    };
    // Root itself sees it (the control: the secret is there to be seen).
    assert!(now(0)["now"].is_object(), "{}", now(0));
    // Root acting for alice (as through sudo) sees what alice sees: nothing.
    let share = now(ALICE);
    assert!(share["now"].is_null(), "revealed to alice: {share}");
    assert_eq!(share["showsNow"], "missing", "{share}");
}

/// Issue 18, 1: a repo path through the workspace dir was accepted. `--repo
/// <ws>/malvm` (an entry mallory links) into the shared entry `nixfiles`, then unlinking
/// malvm, left `.links/nixfiles` naming a root-owned placeholder: every VM sharing nixfiles
/// failed to start, and only root could undo it; `malvm --repo <ws>/malvm` wrote a record and
/// detached the mount before a bind that failed. A repo is never inside the workspace dir; a
/// record left so by an older version serves the placeholder, and anyone may relink it.
#[test]
fn a_repo_is_never_inside_the_workspace_dir() {
    in_mount_ns!(a_repo_is_never_inside_the_workspace_dir);
    const MALLORY: u32 = 4444;
    let fx = vm1();
    fx.runner(
        "nixfiles",
        &[("n", b"/var/lib/microvm-workspaces/nixfiles")],
    );
    fx.runner("web", &[("n", b"/var/lib/microvm-workspaces/nixfiles")]);
    fx.runner("malvm", &[("m", b"/var/lib/microvm-workspaces/malvm")]);
    fx.mkdir("/home/mallory", MALLORY, 0o755);
    fx.repo("/home/mallory/malvm", MALLORY);
    fx.mkdir("/home/mallory/malvm/sub", MALLORY, 0o755);
    let mallory = |args: &[&str]| link_as(&fx, MALLORY, "/home/mallory/malvm", args);
    assert_ok(&mallory(&["malvm", "--no-restart"]));
    let before = fx.snapshot();
    // --repo takes real paths (re-rooted: below the fixture's root).
    let real = |p: &str| fx.p(p).to_str().unwrap().to_string();
    let (malvm, sub) = (
        real(&format!("{WS}/malvm")),
        real(&format!("{WS}/malvm/sub")),
    );
    for args in [
        ["nixfiles", "--repo", &malvm, "--no-restart"],
        ["malvm", "--repo", &malvm, "--no-restart"],
        ["malvm", "--repo", &sub, "--no-restart"],
    ] {
        attack();
        let out = mallory(&args);
        assert_one_line_error(
            &out,
            &["is inside the workspace dir", "a repo is never an entry"],
        );
        assert_eq!(
            before,
            fx.snapshot(),
            "{args:?}: a refused link changed something"
        );
        assert!(
            fx.p(&format!("{WS}/malvm/sub")).exists(),
            "{args:?}: mallory's own link was undone"
        );
    }
    // Root is refused too: the tool never points at itself.
    let out = link_as(&fx, 0, "/", &["nixfiles", "--repo", &malvm, "--no-restart"]);
    assert_one_line_error(&out, &["is inside the workspace dir"]);

    // What an older version left: nixfiles' record naming a placeholder in the workspace dir,
    // made by mallory. Starts of every VM sharing nixfiles go on with the placeholder, and
    // the entry is anyone's to relink.
    attack();
    assert_ok(&mallory(&["unlink", "malvm", "--no-restart"]));
    fx.mkdir(&format!("{WS}/.links"), 0, 0o755);
    user_symlink(
        &fx,
        "/var/lib/microvm-workspaces/malvm",
        &format!("{WS}/.links/nixfiles"),
        MALLORY,
    );
    let out = Run::prepare(&fx, "web").output_within(LIMIT);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is inside the workspace dir"),
        "no warning naming why: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        is_marked(&fx.p(&format!("{WS}/nixfiles"))),
        "the placeholder does not serve"
    );
    assert!(!is_mountpoint(&fx.p(&format!("{WS}/nixfiles"))));
    fx.repo("/home/alice/nixfiles", ALICE);
    assert_ok(&link_as(
        &fx,
        ALICE,
        "/home/alice/nixfiles",
        &["nixfiles", "--no-restart"],
    ));
    assert_eq!(
        std::fs::read_link(fx.p(&format!("{WS}/.links/nixfiles"))).unwrap(),
        Path::new("/home/alice/nixfiles")
    );
}

/// Issue 18, item 4: the holder of a shared entry puts a file (or a symlink out of the repo)
/// where another VM shares from it. That VM still starts: its source falls back to a
/// placeholder served in its own namespace (prepare's `serve_fallbacks`, here in this test's
/// private mount namespace), a journal line names the path and the link's owner, and status
/// and doctor say so. The repo is not touched and no mount appears in it.
#[test]
fn a_repo_that_cannot_serve_a_share_fails_no_other_vms_start() {
    in_mount_ns!(a_repo_that_cannot_serve_a_share_fails_no_other_vms_start);
    let fx = Fx::new();
    fx.runner(
        "nixfiles",
        &[("n", b"/var/lib/microvm-workspaces/nixfiles")],
    );
    for vm in ["vm3", "vm4"] {
        fx.runner(
            vm,
            &[(
                "host",
                format!("/var/lib/microvm-workspaces/nixfiles/hosts/microvms/{vm}").as_bytes(),
            )],
        );
    }
    fx.mkdir("/home/alice", ALICE, 0o755);
    fx.repo("/home/alice/nixfiles", ALICE);
    fx.mkdir("/home/alice/nixfiles/hosts", ALICE, 0o755);
    fx.mkdir("/home/alice/nixfiles/hosts/microvms", ALICE, 0o755);
    Run::link(&fx)
        .user(ALICE)
        .cwd("/home/alice/nixfiles")
        .args(["nixfiles", "--no-restart"])
        .ok();
    // Afterwards, in the repo: a file where vm3 shares, a symlink out of it where vm4 does.
    let hosts = fx.p("/home/alice/nixfiles/hosts/microvms");
    for vm in ["vm3", "vm4"] {
        let _ = std::fs::remove_dir(hosts.join(vm)); // made by the link for those VMs
    }
    std::fs::write(hosts.join("vm3"), b"not a directory").unwrap();
    std::os::unix::fs::chown(hosts.join("vm3"), Some(ALICE), Some(ALICE)).unwrap();
    std::os::unix::fs::symlink("/etc", hosts.join("vm4")).unwrap();
    std::os::unix::fs::lchown(hosts.join("vm4"), Some(ALICE), Some(ALICE)).unwrap();
    let before = snapshot(&fx.p("/home/alice/nixfiles"));
    for (vm, why) in [("vm3", "is not a directory"), ("vm4", "/etc")] {
        let out = fx.prepare(vm);
        assert_ok(&out);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains("cannot be served from the repo linked by uid 4242")
                && log.contains("this VM gets a placeholder there")
                && log.contains(why),
            "{vm}: {log}"
        );
        assert_eq!(fx.record(vm)["shares"][0]["kind"], "fallback", "{vm}");
    }
    assert_eq!(
        before,
        snapshot(&fx.p("/home/alice/nixfiles")),
        "the repo changed"
    );
    assert!(mounts_under(&fx.p("/home/alice")).is_empty());
    let st = Run::link(&fx).args(["status", "--json"]).ok_stdout();
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    let vm3 = st["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vm"] == "vm3")
        .unwrap();
    assert_eq!(vm3["stale"], false, "{vm3:#}");
    assert_eq!(
        vm3["shares"][0]["showedAtStart"],
        "placeholder (uid 4242's linked repo cannot serve it)"
    );
    let doc = Run::link(&fx).args(["doctor"]).output();
    let doc = String::from_utf8_lossy(&doc.stdout);
    assert!(
        doc.contains("VM vm3 share host") && doc.contains("got a placeholder at its last start"),
        "{doc}"
    );

    // What prepare --serve-fallbacks does for virtiofsd's start: a placeholder on the deepest
    // directory, below the entry (never at the repo's path); --release takes it off again.
    Run::prepare(&fx, "vm3").arg("--serve-fallbacks").ok();
    let served = fx.p("/var/lib/microvm-workspaces/nixfiles/hosts/microvms/vm3");
    assert!(
        served.is_dir() && is_marked(&served),
        "no placeholder at {}",
        served.display()
    );
    assert_eq!(meta(&served), (0, 0, 0o555));
    assert!(mounts_under(&fx.p("/home/alice")).is_empty());
    assert_eq!(
        before,
        snapshot(&fx.p("/home/alice/nixfiles")),
        "the repo changed"
    );
    Run::prepare(&fx, "vm3").arg("--release").ok();
    assert!(!served.is_dir(), "still served after --release");
}
