//! Reliability and security suite (issue 6): tries to break prepare and microvm-link.
//!
//! * crash safety: runs killed at every step (a failpoint per change) and after random delays;
//! * concurrency: prepares and links racing on VMs that share sources;
//! * hostile input: bounded property tests of the parsers and name derivation;
//! * privilege attacks by an unprivileged user;
//! * a full or read-only file system under the workspace dir.
//!
//! Every test runs as root against a temporary root; those that mount run in a private mount
//! namespace (`in_mount_ns!`). Nothing here asserts on timing. Counts (kills, races, cases,
//! attacks) are printed with `--nocapture`.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use microvm_workspaces::failpoint::FAILPOINT_ENV;

const WS: &str = "/var/lib/microvm-workspaces";

// ---- a fixture that cleans up its mounts ----

/// A fixture whose mounts (bind-mounted repos, test file systems) are detached when it goes,
/// so hundreds of them can live one after another in one mount namespace.
struct Rig(Fx);

impl std::ops::Deref for Rig {
    type Target = Fx;
    fn deref(&self) -> &Fx {
        &self.0
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for _ in 0..10 {
            let mut m = mounts_under(self.0.root());
            if m.is_empty() {
                break;
            }
            m.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
            for p in m {
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn rig() -> Rig {
    Rig(Fx::new())
}

/// Every mount point at or below `root`, one entry per mount (stacked mounts repeat).
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    mount_points()
        .into_iter()
        .filter(|p| p.starts_with(root))
        .collect()
}

/// A small deterministic generator (xorshift64*), seeded per run so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03 | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

// ---- running the binaries ----

/// microvm-link in `cwd` (inside path), as root on behalf of `uid` (`--user`).
fn link_cmd(fx: &Fx, cwd: &str, uid: u32, args: &[&str]) -> Command {
    let mut c = Command::new(LINK);
    c.env("MICROVM_WORKSPACES_ROOT", fx.root())
        .env_remove("SUDO_UID")
        .arg("--user")
        .arg(uid.to_string())
        .env_remove("JOURNAL_STREAM")
        .env_remove("INVOCATION_ID")
        .env_remove(FAILPOINT_ENV)
        .current_dir(fx.p(cwd))
        .args(args);
    c
}

fn prepare_cmd(fx: &Fx, vm: &str) -> Command {
    let mut c = Command::new(PREPARE);
    c.env("MICROVM_WORKSPACES_ROOT", fx.root())
        .env_remove("JOURNAL_STREAM")
        .env_remove("INVOCATION_ID")
        .env_remove("SUDO_UID")
        .env_remove(FAILPOINT_ENV)
        .arg(vm);
    c
}

fn ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert_ok(&out);
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

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

/// Names starting `.mvw-tmp-` anywhere in the tree (symlinks not followed).
fn leftovers(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_name().as_bytes().starts_with(b".mvw-tmp-") {
                out.push(e.path());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                todo.push(e.path());
            }
        }
    }
    out
}

/// Files named `name` below `dir`, with their content.
fn files_named(dir: &Path, name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() && e.file_name() == name {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

/// Nothing inside a user's tree may be owned by root (everything there is made as its owner).
fn assert_all_owned_by(dir: &Path, uid: u32, ctx: &str) {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                assert_eq!(
                    m.uid(),
                    uid,
                    "{ctx}: {} owned by {}",
                    e.path().display(),
                    m.uid()
                );
                todo.push(e.path());
            }
        }
    }
}

// ---- crash safety ----

const A: &str = "/home/alice/a/vm1";
const A_SIDE: &str = "/home/alice/a/side";
const B: &str = "/home/alice/b/vm1";

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
    fx.mkdir(&format!("{B}/.git"), ALICE, 0o755);
    fx
}

fn linked_to(repo: &str) -> Rig {
    let fx = link_base();
    ok(link_cmd(&fx, repo, ALICE, &["vm1", "--no-restart"]));
    fx
}

fn lchown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
}

/// A workspace entry, the records allowed after a kill, and the record after the next run.
type EntryRule = (
    &'static str,
    &'static [Option<&'static str>],
    Option<&'static str>,
);

/// One way of interrupting something: the state before, the command, what may be true after
/// a kill at any point, and what the next runs must leave.
struct Scenario {
    name: &'static str,
    setup: fn() -> Rig,
    cmd: fn(&Fx) -> Command,
    /// The VM whose start (prepare) is the next run.
    vm: &'static str,
    /// Entries checked, each with the records allowed after a kill and the final one.
    entries: &'static [EntryRule],
    /// Extra checks after a kill and after the next runs.
    after_kill: fn(&Fx, &str),
    after_next: fn(&Fx, &str),
    /// Run the command again as a next run (microvm-link scenarios).
    rerun: bool,
}

fn repos_intact(fx: &Fx, ctx: &str) {
    for r in [A, A_SIDE, B] {
        assert_eq!(
            std::fs::read(fx.p(&format!("{r}/marker"))).ok().as_deref(),
            Some(r.as_bytes()),
            "{ctx}: {r}/marker lost"
        );
    }
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

fn host_made_in_repo(fx: &Fx, ctx: &str) {
    let repo = record(fx, "vm1").expect("linked");
    let host = fx.p(&format!("{}/hosts/vm2", repo.display()));
    assert_eq!(meta(&host).0, ALICE, "{ctx}: {}", host.display());
}

fn placeholders_whole(fx: &Fx, ctx: &str) {
    for p in [
        "/var/lib/microvm-workspaces/vm3",
        "/var/lib/microvm-workspaces/vm3/hosts",
        "/var/lib/microvm-workspaces/vm3/hosts/microvms",
        "/var/lib/microvm-workspaces/vm3/hosts/microvms/vm3",
        "/var/lib/microvm-workspaces/vm3/hosts/microvms/other",
        "/srv/shares/a/b",
    ] {
        let real = fx.p(p);
        if real.exists() {
            assert_eq!(meta(&real), (0, 0, 0o555), "{ctx}: {p} half-made");
            assert!(is_marked(&real), "{ctx}: {p} unmarked");
        }
    }
    for p in ["/srv/shares", "/srv/shares/a"] {
        let real = fx.p(p);
        if real.exists() {
            assert_eq!(meta(&real), (0, 0, 0o755), "{ctx}: {p}");
            assert!(!is_marked(&real), "{ctx}: {p}");
        }
    }
    if let Ok(text) = std::fs::read(fx.p("/run/microvm-workspaces/vm3.json")) {
        let v: serde_json::Value = serde_json::from_slice(&text)
            .unwrap_or_else(|e| panic!("{ctx}: a torn runtime record: {e}"));
        assert_eq!(v["shares"].as_array().unwrap().len(), 5, "{ctx}");
    }
}

fn all_placeholders_there(fx: &Fx, ctx: &str) {
    placeholders_whole(fx, ctx);
    assert!(fx.p("/srv/shares/a/b").is_dir(), "{ctx}");
    assert!(
        fx.p("/var/lib/microvm-workspaces/vm3/hosts/microvms/other")
            .is_dir(),
        "{ctx}"
    );
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "relink A->B",
            setup: || linked_to(A),
            cmd: |fx| link_cmd(fx, B, ALICE, &["vm1", "--no-restart"]),
            vm: "vm1",
            entries: &[
                ("vm1", &[Some(A), Some(B)], Some(B)),
                ("side", &[Some(A_SIDE), None], None),
            ],
            after_kill: |fx, ctx| repos_intact(fx, ctx),
            after_next: host_made_in_repo,
            rerun: true,
        },
        Scenario {
            name: "relink B->A",
            setup: || linked_to(B),
            cmd: |fx| link_cmd(fx, A, ALICE, &["vm1", "--no-restart"]),
            vm: "vm1",
            entries: &[
                ("vm1", &[Some(B), Some(A)], Some(A)),
                ("side", &[None, Some(A_SIDE)], Some(A_SIDE)),
            ],
            after_kill: |fx, ctx| repos_intact(fx, ctx),
            after_next: host_made_in_repo,
            rerun: true,
        },
        Scenario {
            name: "displace a user's directory",
            setup: || {
                let fx = link_base();
                fx.mkdir(WS, 0, 0o755);
                fx.mkdir(&format!("{WS}/vm1/sub"), ALICE, 0o755);
                lchown(&fx.p(&format!("{WS}/vm1")), ALICE);
                fx.write(&format!("{WS}/vm1/precious"), b"do not lose me");
                fx.write(&format!("{WS}/vm1/sub/deeper"), b"me neither");
                fx
            },
            cmd: |fx| link_cmd(fx, A, ALICE, &["vm1", "--no-restart"]),
            vm: "vm1",
            entries: &[
                ("vm1", &[None, Some(A)], Some(A)),
                ("side", &[None, Some(A_SIDE)], Some(A_SIDE)),
            ],
            after_kill: |fx, ctx| {
                repos_intact(fx, ctx);
                precious_once(fx, ctx);
            },
            after_next: |fx, ctx| {
                displaced_and_kept(fx, ctx);
                host_made_in_repo(fx, ctx);
            },
            rerun: true,
        },
        Scenario {
            name: "relink over a legacy symlink",
            setup: || {
                let fx = link_base();
                fx.mkdir(WS, 0, 0o755);
                fx.symlink(B, &format!("{WS}/vm1"));
                lchown(&fx.p(&format!("{WS}/vm1")), ALICE);
                fx
            },
            cmd: |fx| link_cmd(fx, A, ALICE, &["vm1", "--no-restart"]),
            vm: "vm1",
            entries: &[
                ("vm1", &[None, Some(A)], Some(A)),
                ("side", &[None, Some(A_SIDE)], Some(A_SIDE)),
            ],
            after_kill: |fx, ctx| repos_intact(fx, ctx),
            after_next: host_made_in_repo,
            rerun: true,
        },
        Scenario {
            name: "unlink",
            setup: || linked_to(A),
            cmd: |fx| link_cmd(fx, "/", ALICE, &["unlink", "vm1", "--no-restart"]),
            vm: "vm1",
            entries: &[
                ("vm1", &[Some(A), None], None),
                ("side", &[Some(A_SIDE), None], None),
            ],
            after_kill: |fx, ctx| repos_intact(fx, ctx),
            after_next: |fx, ctx| {
                assert!(is_marked(&fx.p(&format!("{WS}/vm1"))), "{ctx}");
            },
            rerun: true,
        },
        Scenario {
            name: "prepare nested placeholders",
            setup: || {
                let fx = rig();
                fx.runner(
                    "vm3",
                    &[
                        ("ws", b"/var/lib/microvm-workspaces/vm3"),
                        ("a", b"/var/lib/microvm-workspaces/vm3/hosts/microvms/vm3"),
                        ("b", b"/var/lib/microvm-workspaces/vm3/hosts/microvms/other"),
                        ("c", b"/srv/shares/a/b"),
                        ("d", b"/var/lib/microvm-workspaces/vm3/hosts"),
                    ],
                );
                fx
            },
            cmd: |fx| prepare_cmd(fx, "vm3"),
            vm: "vm3",
            entries: &[],
            after_kill: placeholders_whole,
            after_next: all_placeholders_there,
            rerun: false,
        },
        Scenario {
            name: "prepare migrating a legacy symlink",
            setup: || {
                let fx = link_base();
                fx.mkdir(WS, 0, 0o755);
                fx.symlink(A, &format!("{WS}/vm1"));
                lchown(&fx.p(&format!("{WS}/vm1")), ALICE);
                fx
            },
            cmd: |fx| prepare_cmd(fx, "vm2"),
            vm: "vm2",
            entries: &[("vm1", &[None, Some(A)], Some(A))],
            after_kill: |fx, ctx| repos_intact(fx, ctx),
            after_next: host_made_in_repo,
            rerun: false,
        },
        Scenario {
            name: "prepare re-mounting after a reboot",
            setup: || {
                let fx = linked_to(A);
                // A reboot: mounts gone, records kept; and a source to create in the repo.
                for m in mounts_under(fx.root()) {
                    nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).unwrap();
                }
                std::fs::remove_dir_all(fx.p(&format!("{A}/hosts"))).unwrap();
                fx
            },
            cmd: |fx| prepare_cmd(fx, "vm2"),
            vm: "vm2",
            entries: &[("vm1", &[Some(A)], Some(A))],
            after_kill: |fx, ctx| repos_intact(fx, ctx),
            after_next: host_made_in_repo,
            rerun: false,
        },
    ]
}

/// What must hold right after `s.cmd` was killed (or finished), then the next runs.
fn check_crashed_run(fx: &Fx, s: &Scenario, ctx: &str) {
    for (name, allowed, _) in s.entries {
        let entry = fx.p(&format!("{WS}/{name}"));
        let m = std::fs::symlink_metadata(&entry);
        let legacy = m.as_ref().is_ok_and(|m| m.file_type().is_symlink());
        if *name == "vm1" {
            // The workspace path exists at every instant: a directory, or (not yet
            // migrated) the legacy symlink to a directory.
            assert!(
                m.as_ref().is_ok_and(|m| m.is_dir())
                    || (legacy
                        && fx
                            .p(std::fs::read_link(&entry).unwrap().to_str().unwrap())
                            .is_dir()),
                "{ctx}: {WS}/vm1 vanished or is not a directory"
            );
        }
        let rec = record(fx, name);
        assert!(
            allowed.iter().any(|a| a.map(PathBuf::from) == rec),
            "{ctx}: record of {name} is {rec:?}, expected one of {allowed:?}"
        );
        assert!(mount_count(&entry) <= 1, "{ctx}: mounts stacked on {name}");
    }
    (s.after_kill)(fx, ctx);

    // The next start of the VM: record and mount agree afterwards.
    ok(prepare_cmd(fx, s.vm));
    for (name, _, _) in s.entries {
        assert_agree(fx, name, &format!("{ctx}, after the next prepare"));
    }
    // The next microvm-link (the same command again) finishes the job and cleans up.
    if s.rerun {
        ok((s.cmd)(fx));
    }
    let ctx = format!("{ctx}, after the next run");
    for (name, _, want) in s.entries {
        assert_agree(fx, name, &ctx);
        assert_eq!(record(fx, name), want.map(PathBuf::from), "{ctx}: {name}");
    }
    let left = leftovers(fx.root());
    assert!(
        left.is_empty(),
        "{ctx}: leftover temporary entries {left:?}"
    );
    (s.after_next)(fx, &ctx);
    assert_all_owned_by(&fx.p("/home/alice/a/vm1"), ALICE, &ctx);
}

#[test]
fn crash_at_every_step_and_at_random_moments_leaves_a_consistent_state() {
    in_mount_ns!(crash_at_every_step_and_at_random_moments_leaves_a_consistent_state);
    let scenarios = scenarios();
    let mut kills = 0;
    let mut took = Vec::new();
    // 1. A failpoint after every change: kill after step 1, 2, ... until a run finishes.
    for s in &scenarios {
        let mut n = 1;
        loop {
            let fx = (s.setup)();
            let t0 = Instant::now();
            let out = (s.cmd)(&fx)
                .env(FAILPOINT_ENV, n.to_string())
                .output()
                .unwrap();
            let ctx = format!("{}: killed after step {n}", s.name);
            let finished = match out.status.signal() {
                Some(9) => false,
                _ => {
                    assert_ok(&out);
                    took.push(t0.elapsed());
                    true
                }
            };
            check_crashed_run(&fx, s, &ctx);
            if finished {
                assert!(
                    n > 3,
                    "{}: only {} steps: the failpoint is not reached",
                    s.name,
                    n - 1
                );
                break;
            }
            kills += 1;
            n += 1;
            assert!(n < 100, "{}: never finishes", s.name);
        }
    }
    let stepwise = kills;
    // 2. SIGKILL after a random delay within a normal run's duration.
    let mut random_kills = 0;
    let runs = 160;
    for i in 0..runs {
        let s = &scenarios[i % scenarios.len()];
        let mut rng = Rng::new(i as u64);
        let span = took[i % scenarios.len()].as_micros() as u64;
        let delay = Duration::from_micros(rng.below(span + span / 5));
        let fx = (s.setup)();
        let mut child = (s.cmd)(&fx)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.signal() == Some(9) {
            random_kills += 1;
        } else {
            assert!(status.success(), "{}: run {i} failed", s.name);
        }
        check_crashed_run(
            &fx,
            s,
            &format!("{}: random run {i}, killed after {delay:?}", s.name),
        );
    }
    eprintln!(
        "crash safety: {stepwise} kills at failpoints over {} scenarios, {runs} random-delay runs of which {random_kills} were killed mid-run",
        scenarios.len()
    );
    assert!(stepwise + runs >= 200);
}

// ---- concurrency ----

const HOSTS: usize = 7;

/// nixfiles (linked back and forth between two checkouts, with the companion nix-secrets)
/// and seven VMs sharing nix-secrets, a nested placeholder tree and each their own directory
/// inside nixfiles.
fn racing_rig() -> Rig {
    let fx = rig();
    fx.config(r#"{"companions": {"nixfiles": {"nix-secrets": "../nix-secrets"}}}"#);
    fx.runner(
        "nixfiles",
        &[
            ("nixfiles", b"/var/lib/microvm-workspaces/nixfiles"),
            ("secrets", b"/var/lib/microvm-workspaces/nix-secrets"),
        ],
    );
    for h in 0..HOSTS {
        let host = format!("/var/lib/microvm-workspaces/nixfiles/hosts/microvms/h{h}");
        let own = format!("/var/lib/microvm-workspaces/h{h}");
        fx.runner(
            &format!("h{h}"),
            &[
                ("host", host.as_bytes()),
                ("secrets", b"/var/lib/microvm-workspaces/nix-secrets"),
                ("own", own.as_bytes()),
                ("common", b"/var/lib/microvm-workspaces/shared/common/deep"),
                ("data", b"/srv/vm-data/common"),
            ],
        );
    }
    for r in ["/home/alice/a/nixfiles", "/home/alice/b/nixfiles"] {
        fx.repo(r, ALICE);
        fx.mkdir(&format!("{r}/.git"), ALICE, 0o755);
    }
    fx.repo("/home/alice/a/nix-secrets", ALICE);
    fx
}

#[test]
fn thirty_two_prepares_and_eight_links_racing_fifty_times_stay_consistent() {
    in_mount_ns!(thirty_two_prepares_and_eight_links_racing_fifty_times_stay_consistent);
    let vms: Vec<String> = std::iter::once("nixfiles".to_string())
        .chain((0..HOSTS).map(|h| format!("h{h}")))
        .collect();
    let mut runs = 0;
    for round in 0..50 {
        let fx = racing_rig();
        let mut children = Vec::new();
        for i in 0..40 {
            let mut c = if i % 5 == 4 {
                let repo = if (i / 5 + round) % 2 == 0 { "a" } else { "b" };
                link_cmd(
                    &fx,
                    &format!("/home/alice/{repo}/nixfiles"),
                    ALICE,
                    &["--no-restart"],
                )
            } else {
                prepare_cmd(&fx, &vms[i % vms.len()])
            };
            let what = format!("{:?}", c.get_args().collect::<Vec<_>>());
            children.push((
                what,
                c.stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            ));
        }
        for (what, child) in children {
            let out = child.wait_with_output().unwrap();
            let err = stderr(&out);
            assert!(out.status.success(), "round {round}: {what} failed: {err}");
            assert!(
                !err.contains("exists") && !err.contains("EEXIST"),
                "round {round}: {what}: {err}"
            );
            runs += 1;
        }
        let ctx = format!("round {round}");
        for entry in ["nixfiles", "nix-secrets"] {
            assert_agree(&fx, entry, &ctx);
        }
        assert!(record(&fx, "nixfiles").is_some(), "{ctx}");
        for h in 0..HOSTS {
            for p in [
                format!("{WS}/nixfiles/hosts/microvms/h{h}"),
                format!("{WS}/h{h}"),
                format!("{WS}/nix-secrets"),
                format!("{WS}/shared/common/deep"),
                "/srv/vm-data/common".to_string(),
            ] {
                assert!(fx.p(&p).is_dir(), "{ctx}: {p} missing");
            }
        }
        for vm in &vms {
            let rec = fx.record(vm);
            assert_eq!(rec["vm"], vm.as_str(), "{ctx}");
        }
        let left = leftovers(fx.root());
        assert!(left.is_empty(), "{ctx}: leftovers {left:?}");
        for r in ["a/nixfiles", "b/nixfiles", "a/nix-secrets"] {
            assert_all_owned_by(&fx.p(&format!("/home/alice/{r}")), ALICE, &ctx);
        }
        assert!(
            is_marked(&fx.p(&format!("{WS}/shared/common/deep"))),
            "{ctx}"
        );
    }
    eprintln!("concurrency: 50 rounds of 32 prepares + 8 links, {runs} runs, none failed");
}

// ---- hostile input: bounded property tests ----

mod hostile {
    use super::*;
    use microvm_workspaces::config::Config;
    use microvm_workspaces::logging::one_line;
    use microvm_workspaces::paths;
    use proptest::prelude::*;
    use proptest::test_runner::{Config as PConfig, RngAlgorithm, TestRng, TestRunner};

    pub static CASES: AtomicUsize = AtomicUsize::new(0);

    /// A runner with a fixed seed (reproducible in CI) and no regression files.
    pub fn runner(cases: u32, seed: u8) -> TestRunner {
        let cfg = PConfig {
            cases,
            failure_persistence: None,
            max_shrink_iters: 200,
            ..PConfig::default()
        };
        TestRunner::new_with_rng(cfg, TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]))
    }

    pub fn check<S: Strategy>(
        what: &str,
        cases: u32,
        seed: u8,
        s: S,
        f: impl Fn(S::Value) -> Result<(), TestCaseError>,
    ) where
        S::Value: std::fmt::Debug,
    {
        let r = runner(cases, seed).run(&s, |v| {
            CASES.fetch_add(1, Ordering::Relaxed);
            f(v)
        });
        if let Err(e) = r {
            panic!("{what}: {e}");
        }
    }

    /// An error as the binaries print it: one line, and no control character at all (a
    /// carriage return or an escape sequence would garble a terminal or the journal too).
    pub fn one_clean_line(e: &anyhow::Error) -> Result<(), TestCaseError> {
        let line = one_line(e);
        prop_assert!(!line.is_empty());
        prop_assert!(
            !line.chars().any(char::is_control),
            "control character in {:?}",
            line
        );
        Ok(())
    }

    /// Bytes that like to break parsers and paths.
    pub fn nasty_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            4 => any::<u8>().prop_map(|b| vec![b]),
            2 => prop::sample::select(vec![
                &b"/"[..], b"..", b".", b"\n", b"\0", b"\r", b"\x1b[2J", b"\xff", b"\xc3",
                b"\xc3\xbc", b"//", b"../", b"/etc", b"/nix/store", b" ", b"\\", b"%",
                b"\"", b"-", b"\t", b"\xe2\x80\xae",
            ])
            .prop_map(|s| s.to_vec()),
            2 => "[a-z0-9._-]{1,8}".prop_map(|s| s.into_bytes()),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    const TEMPLATES: &[&str] = &[
        r#"{"enable": true, "stateDir": "/var/lib/microvms", "workspaceDir": "/var/lib/microvm-workspaces",
            "placeholder": {"user": "root", "group": "root", "mode": "0555"},
            "vms": {"testvm": {"hostName": "testvm", "shares": [{"tag": "workspace", "proto": "virtiofs",
                "source": "/var/lib/microvm-workspaces/testvm", "readOnly": false}]}},
            "companions": {"nixfiles": {"nix-secrets": "../nix-secrets"}}}"#,
        r#"{}"#,
        r#"{"vms": {"a": {"shares": [{"tag": "t", "proto": "9p", "source": "rel/dir"}]}}}"#,
        r#"{"placeholder": {"mode": "0500"}, "enable": false}"#,
    ];

    const TOKENS: &[&[u8]] = &[
        b"\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"null",
        b"true",
        b"0",
        b"-1",
        b"1e999",
        b"\"\\u0000\"",
        b"\"a\\nb\"",
        b"\"../x\"",
        b"\"/\"",
        b"\"\"",
        b"\"\\r\\u001b\"",
        b"\"vms\"",
        b"\"shares\"",
        b"\"companions\"",
        b"\"mode\"",
        b"\"7777\"",
        b"\"9p\"",
        b"\xff",
        b"\xc3",
        b"\\",
        b"\"unknownKey\": 1,",
        b"{\"x\":{}}",
    ];

    #[derive(Debug, Clone)]
    enum Mutation {
        Delete(usize, usize),
        Insert(usize, Vec<u8>),
        Token(usize, usize),
        Flip(usize, u8),
    }

    pub fn mutated_json() -> impl Strategy<Value = Vec<u8>> {
        let m = prop_oneof![
            (any::<usize>(), 1..8usize).prop_map(|(p, n)| Mutation::Delete(p, n)),
            (any::<usize>(), nasty_bytes()).prop_map(|(p, b)| Mutation::Insert(p, b)),
            (any::<usize>(), 0..TOKENS.len()).prop_map(|(p, t)| Mutation::Token(p, t)),
            (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Flip(p, b)),
        ];
        (0..TEMPLATES.len(), prop::collection::vec(m, 1..6)).prop_map(|(t, ms)| {
            let mut text = TEMPLATES[t].as_bytes().to_vec();
            for m in ms {
                let at = |p: usize| p % (text.len() + 1);
                match m {
                    Mutation::Delete(p, n) => {
                        let s = at(p);
                        let e = (s + n).min(text.len());
                        text.drain(s..e);
                    }
                    Mutation::Insert(p, b) => {
                        let s = at(p);
                        text.splice(s..s, b);
                    }
                    Mutation::Token(p, t) => {
                        let s = at(p);
                        text.splice(s..s, TOKENS[t].iter().copied());
                    }
                    Mutation::Flip(p, b) => {
                        if !text.is_empty() {
                            let s = p % text.len();
                            text[s] = b;
                        }
                    }
                }
            }
            text
        })
    }

    fn lossy(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// A config built from hostile strings in every place a string goes.
    pub fn structured_config() -> impl Strategy<Value = serde_json::Value> {
        let s = || nasty_bytes().prop_map(|b| lossy(&b));
        let share = (s(), prop::sample::select(vec!["virtiofs", "9p", "nfs"]), s(), any::<bool>())
            .prop_map(|(tag, proto, source, ro)| {
                serde_json::json!({"tag": tag, "proto": proto, "source": source, "readOnly": ro})
            });
        let vm = (s(), prop::collection::vec(share, 0..4));
        (
            prop::collection::vec(vm, 0..4),
            prop::collection::vec((s(), s(), s()), 0..3),
            prop::option::of((s(), s(), s())),
            prop::option::of(s()),
        )
            .prop_map(|(vms, comps, ph, ws)| {
                let mut v = serde_json::json!({});
                let mut m = serde_json::Map::new();
                for (name, shares) in vms {
                    m.insert(name, serde_json::json!({"shares": shares}));
                }
                v["vms"] = m.into();
                let mut c = serde_json::Map::new();
                for (vm, name, rel) in comps {
                    c.insert(vm, serde_json::json!({ name: rel }));
                }
                v["companions"] = c.into();
                if let Some((user, group, mode)) = ph {
                    v["placeholder"] =
                        serde_json::json!({"user": user, "group": group, "mode": mode});
                }
                if let Some(ws) = ws {
                    v["workspaceDir"] = ws.into();
                }
                v
            })
    }

    /// An accepted config satisfies everything the rest of the code relies on.
    pub fn accepted(cfg: &Config) -> Result<(), TestCaseError> {
        prop_assert!(cfg.workspace_dir.is_absolute() && cfg.state_dir.is_absolute());
        for (vm, v) in &cfg.vms {
            prop_assert!(paths::check_name("VM", vm).is_ok());
            for s in &v.shares {
                prop_assert!(!s.source.is_empty() && !s.source.contains(['\n', '\0']));
                prop_assert!(!s.tag.is_empty() && !s.tag.contains('/'));
            }
        }
        for (vm, set) in &cfg.companions {
            prop_assert!(paths::check_name("VM", vm).is_ok());
            for (name, rel) in set {
                prop_assert!(paths::check_name("entry", name).is_ok());
                prop_assert!(rel.is_relative());
            }
        }
        Ok(())
    }
}

#[test]
fn hostile_config_bytes_never_panic_and_fail_in_one_clean_line() {
    use hostile::*;
    use microvm_workspaces::config::Config;
    use proptest::prelude::*;
    let n0 = CASES.load(Ordering::Relaxed);
    check(
        "arbitrary bytes",
        1000,
        1,
        prop::collection::vec(any::<u8>(), 0..256),
        |b| match Config::parse(&b) {
            Ok(c) => accepted(&c),
            Err(e) => one_clean_line(&e),
        },
    );
    let accepted_mutants = AtomicUsize::new(0);
    check(
        "mutated valid JSON",
        2000,
        2,
        mutated_json(),
        |b| match Config::parse(&b) {
            Ok(c) => {
                accepted_mutants.fetch_add(1, Ordering::Relaxed);
                accepted(&c)
            }
            Err(e) => one_clean_line(&e),
        },
    );
    // Control: the mutations are not all fatal, so the accepted path is exercised too.
    assert!(accepted_mutants.load(Ordering::Relaxed) > 0);
    let (ok, bad) = (AtomicUsize::new(0), AtomicUsize::new(0));
    check(
        "hostile strings in a well-formed config",
        600,
        3,
        structured_config(),
        |v| {
            let text = serde_json::to_vec(&v).unwrap();
            match Config::parse(&text) {
                Ok(c) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    accepted(&c)?;
                    generate_stays_in_its_directory(&text)
                }
                Err(e) => {
                    bad.fetch_add(1, Ordering::Relaxed);
                    one_clean_line(&e)
                }
            }
        },
    );
    assert!(ok.load(Ordering::Relaxed) > 0 && bad.load(Ordering::Relaxed) > 0);
    eprintln!(
        "hostile config: {} cases",
        CASES.load(Ordering::Relaxed) - n0
    );
}

/// The generator, fed an accepted config, writes only drop-ins, each in a directory of its own
/// right under the output directory.
fn generate_stays_in_its_directory(
    config: &[u8],
) -> Result<(), proptest::test_runner::TestCaseError> {
    use microvm_workspaces::{paths::Root, units};
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("etc/microvm-workspaces")).unwrap();
    std::fs::write(root.join("etc/microvm-workspaces/config.json"), config).unwrap();
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let env = units::GenEnv {
        in_initrd: Some(false),
        cmdline: Some(String::new()),
    };
    let r = units::generate(
        &Root::from_args(Some(&root)).unwrap(),
        &env,
        &out,
        Path::new("/bin/prepare"),
    );
    let files = match r {
        Ok(units::Generated::Wrote(f)) => f,
        Ok(units::Generated::Disabled(_)) => return Ok(()),
        Err(e) => return hostile::one_clean_line(&e),
    };
    for f in &files {
        let parts: Vec<_> = f.components().collect();
        proptest::prop_assert_eq!(parts.len(), 2, "{:?}", f);
        proptest::prop_assert!(
            matches!(parts[0], std::path::Component::Normal(_)),
            "{:?}",
            f
        );
        proptest::prop_assert!(out.join(f).is_file(), "{:?}", f);
    }
    let on_disk = files_named(&out, "50-microvm-workspaces.conf").len();
    proptest::prop_assert_eq!(on_disk, files.len());
    Ok(())
}

#[test]
fn hostile_runner_sources_never_panic_and_fail_in_one_clean_line() {
    use hostile::*;
    use microvm_workspaces::chase::Tree;
    use microvm_workspaces::config::Config;
    use microvm_workspaces::paths::{self, Root};
    use microvm_workspaces::{prepare, runner};
    use proptest::prelude::*;
    let n0 = CASES.load(Ordering::Relaxed);
    let fx = Fx::new();
    fx.runner("vm1", &[("t", b"/x")]);
    let file = fx.p("/nix/store/0000-microvm-vm1/share/microvm/virtiofs/t/source");
    let root = Root::from_args(Some(fx.root())).unwrap();
    let tree = Tree::open(&root).unwrap();
    let cfg = Config::default();
    let before = fx.snapshot();
    let accepted = AtomicUsize::new(0);
    let bytes = prop_oneof![nasty_bytes(), prop::collection::vec(any::<u8>(), 0..300)];
    check("runner source bytes", 1000, 4, bytes, |b| {
        std::fs::write(&file, &b).unwrap();
        match runner::shares(&tree, &cfg, "vm1") {
            Ok(shares) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                prop_assert_eq!(shares.len(), 1);
                let s = &shares[0];
                prop_assert!(!s.source.is_empty() && !s.source.contains(['\n', '\0']));
                prop_assert!(s.path.is_absolute());
                prop_assert_eq!(&paths::normalize(&s.path), &s.path);
                prop_assert!(!s
                    .path
                    .components()
                    .any(|c| c == std::path::Component::ParentDir));
                // Preparing it (as a plan: nothing is written) never panics either.
                if let Err(e) = prepare::prepare_vm(&tree, &cfg, "vm1", true) {
                    one_clean_line(&e)?;
                }
                Ok(())
            }
            Err(e) => one_clean_line(&e),
        }
    });
    assert!(accepted.load(Ordering::Relaxed) > 0);
    std::fs::write(&file, b"/x\n").unwrap();
    assert_eq!(before, fx.snapshot(), "a dry run changed the tree");

    // The same through the prepare binary, for real: exit 0, or 1 with one clean line.
    let fx = Fx::new();
    fx.runner("vm1", &[("t", b"/x")]);
    let file = fx.p("/nix/store/0000-microvm-vm1/share/microvm/virtiofs/t/source");
    check(
        "runner source bytes, prepare binary",
        120,
        5,
        nasty_bytes(),
        |b| {
            std::fs::write(&file, &b).unwrap();
            let out = fx.prepare("vm1");
            let err = stderr(&out);
            match out.status.code() {
                Some(0) => Ok(()),
                Some(1) => {
                    prop_assert_eq!(err.matches('\n').count(), 1, "{:?}", err);
                    prop_assert!(err.ends_with('\n'));
                    prop_assert!(!err.trim_end().chars().any(char::is_control), "{:?}", err);
                    Ok(())
                }
                other => Err(TestCaseError::fail(format!("exit {other:?}: {err}"))),
            }
        },
    );
    eprintln!(
        "hostile runner: {} cases",
        CASES.load(Ordering::Relaxed) - n0
    );
}

#[test]
fn hostile_names_never_panic_and_derive_only_safe_names() {
    use hostile::*;
    use microvm_workspaces::flow::derive_vm_name;
    use microvm_workspaces::paths::check_name;
    use microvm_workspaces::units;
    use proptest::prelude::*;
    let n0 = CASES.load(Ordering::Relaxed);
    let derived = AtomicUsize::new(0);
    check("derive_vm_name", 1000, 6, nasty_bytes(), |b| {
        let p = PathBuf::from("/home/u").join(OsStr::from_bytes(&b));
        match derive_vm_name(&p) {
            Ok(name) => {
                derived.fetch_add(1, Ordering::Relaxed);
                prop_assert!(check_name("VM", &name).is_ok());
                prop_assert!(name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
                prop_assert!(!name.starts_with('-') && !name.ends_with('-'));
                Ok(())
            }
            Err(e) => one_clean_line(&e),
        }
    });
    assert!(derived.load(Ordering::Relaxed) > 0);
    check("check_name", 1000, 7, nasty_bytes(), |b| {
        let s = String::from_utf8_lossy(&b);
        match check_name("VM", &s) {
            Ok(()) => {
                prop_assert!(!s.is_empty() && !s.starts_with('.') && !s.contains('/'));
                prop_assert!(!s.chars().any(char::is_control) && s.len() <= 200);
                Ok(())
            }
            Err(e) => one_clean_line(&e),
        }
    });
    // A unit instance (%i), unescaped the way prepare does it: never a path out of its dir.
    check("unit instance names", 500, 8, nasty_bytes(), |b| {
        let inst = String::from_utf8_lossy(&b);
        let vm = units::unmangle(&inst);
        if check_name("VM", &vm).is_ok() {
            prop_assert!(!vm.contains('/') && vm != ".." && vm != ".");
            prop_assert_eq!(units::unmangle(&units::mangle(&vm)), vm);
        }
        Ok(())
    });
    eprintln!(
        "hostile names: {} cases",
        CASES.load(Ordering::Relaxed) - n0
    );
}

// ---- privilege attacks by an unprivileged user ----

static ATTACKS: AtomicUsize = AtomicUsize::new(0);

fn attack() {
    ATTACKS.fetch_add(1, Ordering::Relaxed);
}

/// nixfiles (alice's repo, in her own home) and web, whose source lies in it.
fn nested_rig() -> Rig {
    let fx = rig();
    fx.runner(
        "nixfiles",
        &[("nixfiles", b"/var/lib/microvm-workspaces/nixfiles")],
    );
    fx.runner(
        "web",
        &[(
            "host",
            b"/var/lib/microvm-workspaces/nixfiles/hosts/microvms/web",
        )],
    );
    fx.mkdir("/home/alice", ALICE, 0o755);
    fx.repo("/home/alice/nixfiles", ALICE);
    fx.mkdir("/home/alice/nixfiles/.git", ALICE, 0o755);
    // What a confused resolver would write into as root.
    fx.mkdir("/etc/microvms", 0, 0o755);
    fx.mkdir("/root/microvms", 0, 0o700);
    fx.mkdir("/root", 0, 0o700);
    fx
}

fn user_symlink(fx: &Fx, target: &str, inside: &str, uid: u32) {
    fx.symlink(target, inside);
    lchown(&fx.p(inside), uid);
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
        let out = link_cmd(&fx, "/home/alice/nixfiles", ALICE, &["--no-restart"])
            .output()
            .unwrap();
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
    ok(link_cmd(
        &fx,
        "/home/alice/nixfiles",
        ALICE,
        &["--no-restart"],
    ));
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
    ok(link_cmd(
        &fx,
        "/home/alice/nixfiles",
        ALICE,
        &["--no-restart"],
    ));
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
            link_cmd(&fx, "/home/alice/nixfiles", ALICE, &["--no-restart"])
                .output()
                .unwrap()
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
            let out = link_cmd(&fx, "/home/alice/vm1", ALICE, &args)
                .output()
                .unwrap();
            assert_one_line_error(&out, &["VM name"]);
        }
        assert_one_line_error(&fx.prepare(vm), &["VM name"]);
    }
    // A unit instance escaping a slash (`%i` of `microvm@..\x2fetc`) and a derived name.
    attack();
    assert_one_line_error(&fx.prepare(r"..\x2fetc"), &["VM name \"../etc\""]);
    attack();
    let out = link_cmd(&fx, "/home/alice/..hidden", ALICE, &["--no-restart"])
        .output()
        .unwrap();
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
    ok(link_cmd(
        &fx,
        "/home/alice/vm1",
        ALICE,
        &["--no-restart", "--dry-run"],
    ));
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
        let out = link_cmd(
            &fx,
            "/home/alice",
            ALICE,
            &["vm1", "--repo", &repo, "--no-restart"],
        )
        .output()
        .unwrap();
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
        ok(link_cmd(&fx, "/home/alice/vm1", ALICE, &["--no-restart"]));
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

/// microvm-link (`bin`) run with the given real uid (effective uid stays root unless `drop`).
fn link_as(
    bin: &Path,
    fx: &Fx,
    ruid: u32,
    drop: bool,
    env: &[(&str, &str)],
    args: &[&str],
) -> Output {
    let mut c = Command::new("setpriv");
    if drop {
        c.args([
            format!("--reuid={ruid}"),
            format!("--regid={ruid}"),
            "--clear-groups".into(),
        ]);
    } else {
        c.arg(format!("--ruid={ruid}"));
    }
    c.arg("--")
        .arg(bin)
        .args(args)
        .env("MICROVM_WORKSPACES_ROOT", fx.root())
        .env_remove("SUDO_UID")
        .env_remove("JOURNAL_STREAM")
        .env_remove("INVOCATION_ID")
        .current_dir("/");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
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
             [ $(wc -l < {log}) -gt 3 ] && exit 97\n[ \"$1\" = -- ] && shift\nexec \"$@\"\n",
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
    let out = link_as(
        &link,
        &fx,
        ALICE,
        true,
        // (not re-rooted: a normal user may not re-root through sudo, and is told so first)
        &[
            ("SUDO_UID", "0"),
            ("PATH", &path),
            ("MICROVM_WORKSPACES_ROOT", ""),
        ],
        &["vm1", "--repo", &bob_repo, "--no-restart"],
    );
    assert_one_line_error(&out, &["not as root", "real sudo"]);
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls.lines().count(), 1, "sudo was asked {calls:?}");
    assert!(
        calls.starts_with("uid=4242 SUDO_UID=0 -- ") && calls.contains(link.to_str().unwrap()),
        "{calls}"
    );
    assert_eq!(before, fx.snapshot());

    // 2. Root's powers (a set-uid copy) but a real uid of alice: SUDO_UID is not believed,
    // whatever it claims.
    for claim in ["0", "4343"] {
        attack();
        let out = link_as(
            &link,
            &fx,
            ALICE,
            false,
            &[("SUDO_UID", claim)],
            &["vm1", "--repo", &bob_repo, "--no-restart"],
        );
        assert_one_line_error(&out, &["SUDO_UID is set", "refusing to trust it"]);
        assert_eq!(before, fx.snapshot(), "SUDO_UID={claim}");
    }
    // Control: the same without SUDO_UID acts as alice: bob's repo refused, hers linked.
    let out = link_as(
        &link,
        &fx,
        ALICE,
        false,
        &[],
        &["vm1", "--repo", &bob_repo, "--no-restart"],
    );
    assert_one_line_error(&out, &["owned by uid 4343", "not by you (uid 4242)"]);
    let out = link_as(
        &link,
        &fx,
        ALICE,
        false,
        &[],
        &["vm1", "--repo", &alice_repo, "--no-restart"],
    );
    assert_ok(&out);
    assert_eq!(record(&fx, "vm1"), Some(PathBuf::from("/home/alice/vm1")));
    let linked = fx.snapshot();

    // 3. As root, SUDO_UID that is not a plain uid: refused, nothing done.
    for bogus in ["", "abc", "-1", " 0", "0x0", "4294967296", "0\n"] {
        attack();
        let out = link_as(
            &link,
            &fx,
            0,
            false,
            &[("SUDO_UID", bogus)],
            &["vm1", "--repo", &bob_repo, "--no-restart"],
        );
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
        ok(prepare_cmd(&fx, "vm1"));
        assert_eq!(mount_count(&entry), 0, "{forged}: prepare mounted over it");
        assert_eq!(
            std::fs::read(entry.join("precious")).unwrap(),
            b"do not lose me"
        );
        // microvm-link moves it aside (not deleted) and mounts on a real placeholder, for the
        // directory's owner only: root's look-alike is not alice's to move.
        let mover = if forged == "root-0555" {
            let before = fx.snapshot();
            let out = link_cmd(&fx, A, ALICE, &["vm1", "--no-restart"])
                .output()
                .unwrap();
            assert_one_line_error(
                &out,
                &["is a directory of root (uid 0)", "only they or root"],
            );
            assert_eq!(
                before,
                fx.snapshot(),
                "{forged}: a refused link changed something"
            );
            0
        } else {
            ALICE
        };
        let out = ok(link_cmd(&fx, A, mover, &["vm1", "--no-restart"]));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("moved your directory"),
            "{forged}"
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

// ---- a full or read-only file system under the workspace dir ----

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
    type Case = (&'static str, fn(&Fx), fn(&Fx) -> Command);
    let cases: [Case; 3] = [
        ("first prepare", |_| {}, |fx| prepare_cmd(fx, "vm2")),
        (
            "relink",
            |fx| {
                ok(link_cmd(fx, A, ALICE, &["vm1", "--no-restart"]));
            },
            |fx| link_cmd(fx, B, ALICE, &["vm1", "--no-restart"]),
        ),
        (
            "displacing a directory",
            |fx| {
                fx.mkdir(&format!("{WS}/vm1"), ALICE, 0o755);
                fx.write(&format!("{WS}/vm1/precious"), b"do not lose me");
                fx.write(&format!("{WS}/vm1/deeper"), b"x");
            },
            |fx| link_cmd(fx, A, ALICE, &["vm1", "--no-restart"]),
        ),
    ];
    for (name, setup, cmd) in cases {
        for free in 0.. {
            let fx = link_base();
            let ws = small_fs(&fx);
            setup(&fx);
            fill(&ws, free);
            let ctx = format!("{name} with {free} inodes free");
            let out = cmd(&fx).output().unwrap();
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
            ok(cmd(&fx));
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
    ok(link_cmd(&fx, A, ALICE, &["vm1", "--no-restart"]));
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
        ("relink", link_cmd(&fx, B, ALICE, &["vm1", "--no-restart"])),
        (
            "unlink",
            link_cmd(&fx, "/", ALICE, &["unlink", "vm1", "--no-restart"]),
        ),
        ("prepare of a missing source", prepare_cmd(&fx, "vm3")),
    ] {
        let mut c = c;
        let out = c.output().unwrap();
        failed_cleanly(&fx, &out, "Read-only file system", what);
        assert_eq!(before, snapshot(&ws), "{what} changed the workspace dir");
        assert_eq!(record(&fx, "vm1"), Some(PathBuf::from(A)), "{what}");
    }
    // Starting a VM whose sources all exist needs no write there.
    ok(prepare_cmd(&fx, "vm1"));
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
    ok(link_cmd(&fx, B, ALICE, &["vm1", "--no-restart"]));
    ok(prepare_cmd(&fx, "vm3"));
    assert_agree(&fx, "vm1", "writable again");
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
    let out = ok(link_cmd(
        &fx,
        "/home/alice/nixfiles",
        ALICE,
        &["--no-restart"],
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("moved your directory"), "{text}");
    assert!(!fx.p(&format!("{WS}/.displaced")).exists());
    assert_agree(&fx, "nixfiles", "linked");
    assert_eq!(
        meta(&fx.p("/home/alice/nixfiles/hosts/microvms/web")).0,
        ALICE
    );
}

/// The runner is read with one `openat2` per source when no symlink is on the way; a runner
/// whose tag directory or source file is a symlink (as `symlinkJoin` makes them) still reads
/// through the careful walk, absolute targets inside the root.
#[test]
fn runner_files_behind_symlinks_are_still_read() {
    let fx = Fx::new();
    fx.runner("vm1", &[("plain", b"/srv/plain")]);
    let virtiofs = "/nix/store/0000-microvm-vm1/share/microvm/virtiofs";
    fx.write("/nix/store/1111-other/source", b"/srv/via-file-link\n");
    fx.write("/nix/store/2222-tagdir/source", b"/srv/via-dir-link\n");
    fx.mkdir(&format!("{virtiofs}/filelink"), 0, 0o755);
    fx.symlink(
        "/nix/store/1111-other/source",
        &format!("{virtiofs}/filelink/source"),
    );
    fx.symlink("../../../../2222-tagdir", &format!("{virtiofs}/dirlink"));
    fx.prepare_ok("vm1");
    let rec = fx.record("vm1");
    let paths: Vec<&str> = rec["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    for p in ["/srv/plain", "/srv/via-file-link", "/srv/via-dir-link"] {
        assert!(paths.contains(&p), "{p} not in {paths:?}");
        assert!(is_marked(&fx.p(p)), "{p}");
    }
}
