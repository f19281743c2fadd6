//! Crash safety: SIGKILL after every change (a failpoint per step) and after random delays,
//! then the next runs; record, mount and the user's files must stay consistent throughout.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::api;
use crate::common::*;
use crate::*;

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
    cmd: fn(&Fx) -> Run,
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
    for r in [A, A_SIDE, B, W] {
        assert_eq!(
            std::fs::read(fx.p(&format!("{r}/marker"))).ok().as_deref(),
            Some(r.as_bytes()),
            "{ctx}: {r}/marker lost"
        );
    }
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
            cmd: |fx| {
                Run::link(fx)
                    .user(ALICE)
                    .cwd(B)
                    .args(["vm1", "--no-restart"])
            },
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
            cmd: |fx| {
                Run::link(fx)
                    .user(ALICE)
                    .cwd(A)
                    .args(["vm1", "--no-restart"])
            },
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
            name: "relink A->a worktree",
            setup: || linked_to(A),
            cmd: |fx| {
                Run::link(fx)
                    .user(ALICE)
                    .cwd(W)
                    .args(["vm1", "--no-restart"])
            },
            vm: "vm1",
            entries: &[
                ("vm1", &[Some(A), Some(W)], Some(W)),
                ("side", &[Some(A_SIDE), None], None),
            ],
            after_kill: |fx, ctx| repos_intact(fx, ctx),
            after_next: |fx, ctx| {
                host_made_in_repo(fx, ctx);
                // The room in the worktree is the owner's and empty; the view's `.git` is
                // the git file of the scaffold mounted in it.
                let room = fx.p(&format!("{W}/.microvm-git"));
                assert_eq!(meta(&room).0, ALICE, "{ctx}");
                assert_eq!(std::fs::read_dir(&room).unwrap().count(), 0, "{ctx}");
                let view = fx.p(&format!("{WS}/vm1"));
                assert_eq!(
                    std::fs::read_to_string(view.join(".git")).unwrap(),
                    "gitdir: .microvm-git/.git/c/.git\n",
                    "{ctx}"
                );
                assert_eq!(mount_count(&view.join(".microvm-git")), 1, "{ctx}");
            },
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
            cmd: |fx| {
                Run::link(fx)
                    .user(ALICE)
                    .cwd(A)
                    .args(["vm1", "--no-restart"])
            },
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
            cmd: |fx| {
                Run::link(fx)
                    .user(ALICE)
                    .cwd(A)
                    .args(["vm1", "--no-restart"])
            },
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
            cmd: |fx| {
                Run::link(fx)
                    .user(ALICE)
                    .cwd("/")
                    .args(["unlink", "vm1", "--no-restart"])
            },
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
            cmd: |fx| Run::prepare(fx, "vm3"),
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
            cmd: |fx| Run::prepare(fx, "vm2"),
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
                for m in mounts_under(fx.root()).into_iter().rev() {
                    nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).unwrap();
                }
                std::fs::remove_dir_all(fx.p(&format!("{A}/hosts"))).unwrap();
                fx
            },
            cmd: |fx| Run::prepare(fx, "vm2"),
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
    Run::prepare(fx, s.vm).ok();
    for (name, _, _) in s.entries {
        assert_agree(fx, name, &format!("{ctx}, after the next prepare"));
    }
    // The next microvm-link (the same command again) finishes the job and cleans up.
    if s.rerun {
        (s.cmd)(fx).ok();
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

/// How many runs the crash test must actually have killed, at failpoints and at random.
const KILLS: usize = 200;
/// Random-delay runs at least.
const RUNS: usize = 160;

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
            let out = (s.cmd)(&fx).env(api::FAILPOINT_ENV, n.to_string()).output();
            let ctx = format!("{}: killed after step {n}", s.name);
            let finished = match out.status.signal() {
                Some(9) => {
                    // Killed by its own failpoint, after the step asked for, not by anything
                    // else: only such a kill counts.
                    let err = stderr(&out);
                    assert!(
                        err.contains(&format!("failpoint: killed after step {n} (")),
                        "{ctx}: SIGKILL without the failpoint: {err}"
                    );
                    false
                }
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
    // 2. SIGKILL after a random delay within a normal run's duration: at least RUNS runs, and
    // more (up to three times as many) while fewer than KILLS runs in all were really killed
    // (a loaded machine lets more runs finish before their kill).
    let mut random_kills = 0;
    let mut runs = 0;
    while runs < RUNS || (stepwise + random_kills < KILLS && runs < 3 * RUNS) {
        let i = runs;
        runs += 1;
        let s = &scenarios[i % scenarios.len()];
        let mut rng = Rng::new(i as u64);
        let span = took[i % scenarios.len()].as_micros() as u64;
        let delay = Duration::from_micros(rng.below(span + span / 5));
        let fx = (s.setup)();
        let mut child = (s.cmd)(&fx).spawn_quiet();
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
    // What was checked must have happened: runs really died mid-way, counted from each
    // child's exit signal (a run that finished before its kill tests no crash).
    assert!(
        random_kills > 0,
        "none of {runs} random-delay runs was killed before it finished"
    );
    assert!(
        stepwise + random_kills >= KILLS,
        "only {} runs were killed, want {KILLS}",
        stepwise + random_kills
    );
}
