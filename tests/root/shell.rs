//! `microvm-link shell` and the SSH wait against a re-rooted tree, with a stand-in `ssh` on
//! PATH (it answers `-G` and records how it was run) and a local listener that speaks the
//! first bytes of SSH. The real ssh into a real guest is proven by the end-to-end suite.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use crate::common::*;

/// A directory alice can reach, holding the stand-in `ssh` and its log.
struct FakeSsh {
    dir: tempfile::TempDir,
}

impl FakeSsh {
    fn new(port: u16) -> FakeSsh {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let script = format!(
            "#!/bin/sh\nif [ \"$1\" = -G ]; then\n  echo \"user $(id -un 2>/dev/null || id -u)\"\n  echo 'hostname 127.0.0.1'\n  echo 'port {port}'\n  echo 'proxycommand none'\n  exit 0\nfi\n{{ id -u; printf '%s\\n' \"$@\"; }} > {log}\nexit 7\n",
            log = dir.path().join("log").display()
        );
        let ssh = dir.path().join("ssh");
        std::fs::write(&ssh, script).unwrap();
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
        FakeSsh { dir }
    }

    fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap()
        )
    }

    /// uid it ran as, then its arguments; `None` if the session part never ran.
    fn log(&self) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(self.dir.path().join("log")).ok()?;
        Some(text.lines().map(str::to_string).collect())
    }
}

/// A listener that greets every connection like an SSH server.
fn banner_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(b"SSH-2.0-test\r\n");
        }
    });
    port
}

/// A listener that greets like an SSH server and records, for each connection, the uid that
/// owns the connecting socket (from /proc/net/tcp: who connected, root or the caller).
fn banner_server_recording_uids() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<u32>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let uids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = uids.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let peer = c.peer_addr().unwrap().port();
            let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
            let uid = tcp.lines().skip(1).find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let local_port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
                (local_port == peer)
                    .then(|| f[7].parse::<u32>().ok())
                    .flatten()
            });
            seen.lock().unwrap().push(uid.unwrap_or(u32::MAX));
            let _ = c.write_all(b"SSH-2.0-test\r\n");
        }
    });
    (port, uids)
}

/// A port nothing listens on (bound, then closed).
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn fixture() -> Fx {
    let fx = Fx::new();
    fx.runner("vm1", &[("workspace", b"/var/lib/microvm-workspaces/vm1")]);
    fx.config(
        r#"{"vms": {"vm1": {"ssh": "vm1", "shares": [{"tag": "workspace", "proto": "virtiofs",
            "source": "/var/lib/microvm-workspaces/vm1", "mountPoint": "/work"}]}}}"#,
    );
    fx.mkdir("/home/alice", ALICE, 0o755);
    fx.repo("/home/alice/vm1", ALICE);
    fx.mkdir("/home/alice/vm1/.git", ALICE, 0o755);
    fx.mkdir("/home/alice/vm1/sub dir", ALICE, 0o755);
    fx.mkdir("/home/bob", BOB, 0o755);
    fx.repo("/home/bob/vm1", BOB);
    fx
}

fn shell(fx: &Fx, ssh: &FakeSsh, cwd: &str, args: &[&str]) -> std::process::Output {
    Run::link(fx)
        .user(ALICE)
        .cwd(cwd)
        .env("PATH", ssh.path_env())
        .args(args)
        .output()
}

fn record(fx: &Fx) -> Option<PathBuf> {
    std::fs::read_link(fx.p("/var/lib/microvm-workspaces/.links/vm1")).ok()
}

#[test]
fn shell_links_waits_and_runs_ssh_as_the_user_in_the_matching_guest_directory() {
    in_mount_ns!(shell_links_waits_and_runs_ssh_as_the_user_in_the_matching_guest_directory);
    let fx = fixture();
    let ssh = FakeSsh::new(banner_server());
    let out = shell(
        &fx,
        &ssh,
        "/home/alice/vm1/sub dir",
        &["shell", "--", "ls", "-l", "it's"],
    );
    // The exit status is the remote command's (the stand-in exits 7).
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        record(&fx),
        Some(PathBuf::from("/home/alice/vm1")),
        "not linked"
    );
    let log = ssh.log().expect("ssh never ran");
    assert_eq!(
        log[0],
        ALICE.to_string(),
        "ssh ran as uid {}, not alice",
        log[0]
    );
    assert_eq!(
        log[1..],
        [
            "--",
            "vm1",
            r#"cd '/work/sub dir' && exec 'ls' '-l' 'it'\''s'"#
        ],
        "{log:?}"
    );
    // Already linked: the second time links nothing and still gets there.
    let out = shell(&fx, &ssh, "/home/alice/vm1", &["shell", "vm1", "--", "pwd"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(ssh.log().unwrap()[3], "cd '/work' && exec 'pwd'");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("linked /var"),
        "relinked"
    );
}

#[test]
fn a_destination_that_could_become_an_ssh_option_is_refused_before_anything_happens() {
    in_mount_ns!(a_destination_that_could_become_an_ssh_option_is_refused_before_anything_happens);
    let fx = fixture();
    let ssh = FakeSsh::new(banner_server());
    let before = fx.snapshot();
    for bad in [
        "-oProxyCommand=touch /tmp/pwned",
        "vm1\nProxyCommand x",
        "a b",
    ] {
        let out = shell(
            &fx,
            &ssh,
            "/home/alice/vm1",
            &["shell", &format!("--ssh={bad}"), "--", "pwd"],
        );
        assert_one_line_error(&out, &["SSH destination"]);
        let out = shell(
            &fx,
            &ssh,
            "/home/alice/vm1",
            &[&format!("--ssh={bad}"), "--no-restart"],
        );
        assert_one_line_error(&out, &["SSH destination"]);
        // The value as a separate argument: microvm-link's own check names it (not clap's
        // "unexpected argument" with a tip to use `-- -o...`).
        for args in [
            vec!["shell", "--ssh", bad, "--", "pwd"],
            vec!["--ssh", bad, "--no-restart"],
        ] {
            let out = shell(&fx, &ssh, "/home/alice/vm1", &args);
            assert_one_line_error(&out, &["SSH destination", &format!("{bad:?}")]);
        }
        assert_eq!(before, fx.snapshot(), "{bad:?}: something changed");
        assert_eq!(ssh.log(), None, "{bad:?}: ssh ran");
    }
}

#[test]
fn a_destination_that_never_answers_is_a_bounded_wait_and_a_clear_error() {
    in_mount_ns!(a_destination_that_never_answers_is_a_bounded_wait_and_a_clear_error);
    let fx = fixture();
    let ssh = FakeSsh::new(dead_port());
    let t0 = std::time::Instant::now();
    let out = shell(
        &fx,
        &ssh,
        "/home/alice/vm1",
        &["shell", "--ssh-timeout", "2", "--", "pwd"],
    );
    assert!(t0.elapsed().as_secs() < 30, "the wait was not bounded");
    // What linking did comes first; the failure is the last line, and the exit status 1.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("microvm-link: vm1 (127.0.0.1:")
            && last.contains("gave no SSH banner within 2 s"),
        "{err}"
    );
    assert_eq!(ssh.log(), None, "ssh ran although nothing answered");
}

#[test]
fn shell_refuses_what_link_refuses() {
    in_mount_ns!(shell_refuses_what_link_refuses);
    let fx = fixture();
    let ssh = FakeSsh::new(banner_server());
    let before = fx.snapshot();
    // bob's repo, as alice: the same refusal as link.
    let out = shell(&fx, &ssh, "/home/bob/vm1", &["shell", "--", "pwd"]);
    assert_one_line_error(&out, &["owned by uid 4343, not by you (uid 4242)"]);
    let out = shell(&fx, &ssh, "/home/bob/vm1", &["--no-restart"]);
    assert_one_line_error(&out, &["owned by uid 4343, not by you (uid 4242)"]);
    assert_eq!(before, fx.snapshot());
    assert_eq!(ssh.log(), None);
    // A VM without a destination: said how to set one.
    fx.config(r#"{"vms": {"vm1": {}}}"#);
    let out = shell(&fx, &ssh, "/home/alice/vm1", &["shell", "--", "pwd"]);
    assert_one_line_error(&out, &["vm1 has no SSH destination", "--ssh DEST"]);
}

/// Issue 18, 6: root acting for a user (sudo, or `--user`) probed the SSH banner itself,
/// connecting from root to whatever host:port the caller's ssh config names (past
/// owner-based firewall rules; the answer tells ports apart). The probe connects as the caller.
#[test]
fn the_ssh_banner_probe_connects_as_the_caller() {
    in_mount_ns!(the_ssh_banner_probe_connects_as_the_caller);
    let fx = fixture();
    let (port, uids) = banner_server_recording_uids();
    let ssh = FakeSsh::new(port);
    let out = shell(&fx, &ssh, "/home/alice/vm1", &["shell", "--", "true"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uids = uids.lock().unwrap().clone();
    assert!(!uids.is_empty(), "nothing probed the banner");
    assert!(
        uids.iter().all(|&u| u == ALICE),
        "connected as {uids:?}, not as alice ({ALICE})"
    );
    // Through sudo the internal probe is refused: root connects nowhere for a caller.
    let out = Run::link(&fx)
        .env("SUDO_UID", ALICE.to_string())
        .args(["__probe-ssh", "--", "127.0.0.1", &port.to_string()])
        .output();
    assert_one_line_error(&out, &["__probe-ssh is internal and refused through sudo"]);
}

#[test]
fn shell_with_a_pool_leases_a_vm_for_the_worktree_and_goes_into_its_live_view() {
    in_mount_ns!(shell_with_a_pool_leases_a_vm_for_the_worktree_and_goes_into_its_live_view);
    let fx = Fx::new();
    let vms: Vec<String> = ["a1", "a2"]
        .iter()
        .map(|vm| {
            format!(
                r#""{vm}": {{"ssh": "{vm}", "shares": [{{"tag": "workspace", "proto": "virtiofs", "source": "/var/lib/microvm-workspaces/.live/{vm}", "mountPoint": "/work"}}]}}"#
            )
        })
        .collect();
    fx.config(&format!(
        r#"{{"vms": {{{}}}, "pools": {{"agents": ["a1", "a2"]}}}}"#,
        vms.join(", ")
    ));
    for vm in ["a1", "a2"] {
        let src = format!("/var/lib/microvm-workspaces/.live/{vm}");
        fx.runner(vm, &[("workspace", src.as_bytes())]);
    }
    fx.mkdir("/home/alice", ALICE, 0o755);
    for wt in ["/home/alice/wt1", "/home/alice/wt2"] {
        fx.repo(wt, ALICE);
        fx.mkdir(&format!("{wt}/.git"), ALICE, 0o755);
        fx.mkdir(&format!("{wt}/sub"), ALICE, 0o755);
    }
    let ssh = FakeSsh::new(banner_server());
    let out = shell(
        &fx,
        &ssh,
        "/home/alice/wt1/sub",
        &["shell", "--pool", "agents", "--", "pwd"],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(
        err.contains("leased a1 from pool agents for /home/alice/wt1"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "the lease's report belongs on stderr"
    );
    let log = ssh.log().expect("ssh never ran");
    assert_eq!(log[1..3], ["--", "a1"], "{log:?}");
    // First the guest's view must show the worktree itself (its inode): virtiofs keeps the
    // previous `current` for up to a second.
    let ino = std::fs::metadata(fx.p("/home/alice/wt1")).unwrap().ino();
    assert_eq!(
        log[3],
        format!("n=0; while [ \"$(stat -c %i '/work/current'/. 2>/dev/null)\" != {ino} ] && [ $n -lt 30 ]; do sleep 0.1; n=$((n+1)); done; [ \"$(stat -c %i '/work/current'/. 2>/dev/null)\" = {ino} ] || echo 'microvm-link: the live view does not show the repo after 3 s; going on' >&2; cd '/work/current/sub' && exec 'pwd'"),
    );
    // Another worktree: the next VM. The first again: its own lease, nothing new.
    shell(
        &fx,
        &ssh,
        "/home/alice/wt2",
        &["shell", "--pool", "agents", "--", "true"],
    );
    assert_eq!(ssh.log().unwrap()[2], "a2");
    let out = shell(
        &fx,
        &ssh,
        "/home/alice/wt1",
        &["shell", "--pool", "agents", "--", "true"],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("a1 is leased for /home/alice/wt1 already"),
        "{err}"
    );
    assert_eq!(ssh.log().unwrap()[2], "a1");
    // A VM named with --pool: refused before anything happens.
    assert_one_line_error(
        &shell(
            &fx,
            &ssh,
            "/home/alice/wt1",
            &["shell", "a2", "--pool", "agents", "--", "true"],
        ),
        &["--pool \"agents\" chooses the VM itself: name no VM (a2) with it"],
    );
}
