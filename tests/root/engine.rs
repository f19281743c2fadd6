//! The engine's promise (issue 19): what a dry run plans is exactly what the act then does,
//! for generated workspaces and intents (a pool's lease and release among them, issue 20),
//! and a refusal changes nothing. Needs root: the
//! placeholders carry trusted xattrs and links are (idmapped) mounts.

use crate::common::api::*;
use crate::common::*;
use proptest::prelude::*;

const WS: &str = "/var/lib/microvm-workspaces";

/// What the entry `vm1` is before the intents run.
#[derive(Debug, Clone, Copy)]
enum Before {
    NoWorkspaceDir,
    Placeholder,
    UsersDirectory,
    HypervisorsDirectory,
    LegacySymlink,
    Linked,
    LinkedRepoGone,
    LinkedByRoot,
    LiveRoot,
    /// vm1 leased from pool `p` for /home/alice/a.
    Leased,
    /// vm1 leased for a worktree that has moved away since.
    LeaseGone,
}

/// What is asked of it.
#[derive(Debug, Clone, Copy)]
enum Intent {
    LinkA,
    LinkB,
    Unlink,
    Start,
    /// `--pool p` from /home/alice/a, and from /home/alice/b.
    LeaseA,
    LeaseB,
    /// `release vm1`.
    Release,
}

fn before() -> impl Strategy<Value = Before> {
    prop_oneof![
        Just(Before::NoWorkspaceDir),
        Just(Before::Placeholder),
        Just(Before::UsersDirectory),
        Just(Before::HypervisorsDirectory),
        Just(Before::LegacySymlink),
        Just(Before::Linked),
        Just(Before::LinkedRepoGone),
        Just(Before::LinkedByRoot),
        Just(Before::LiveRoot),
        Just(Before::Leased),
        Just(Before::LeaseGone),
    ]
}

fn intent() -> impl Strategy<Value = Intent> {
    prop_oneof![
        Just(Intent::LinkA),
        Just(Intent::LinkB),
        Just(Intent::Unlink),
        Just(Intent::Start),
        Just(Intent::LeaseA),
        Just(Intent::LeaseB),
        Just(Intent::Release),
    ]
}

fn repo(fx: &Fx, inside: &str, git: bool) {
    fx.repo(inside, ALICE);
    if git {
        fx.mkdir(&format!("{inside}/.git"), ALICE, 0o755);
        for d in ["objects", "refs", "refs/heads"] {
            fx.mkdir(&format!("{inside}/.git/{d}"), ALICE, 0o755);
        }
        fx.write(&format!("{inside}/.git/HEAD"), b"ref: refs/heads/main\n");
        std::os::unix::fs::chown(
            fx.p(&format!("{inside}/.git/HEAD")),
            Some(ALICE),
            Some(ALICE),
        )
        .unwrap();
    }
    fx.mkdir(&format!("{inside}/sub"), ALICE, 0o755);
}

/// Runs `intent` once as a dry run and once for real: the operations (or the refusal).
fn run(fx: &Fx, intent: Intent) -> (Result<Vec<String>, String>, Result<Vec<String>, String>) {
    let root = Root::from_args(Some(fx.root())).unwrap();
    let tree = Tree::open(&root).unwrap();
    let cfg = Config::load(&tree).unwrap();
    let once = |dry_run: bool| -> Result<Vec<String>, String> {
        let text = |ops: &[Op]| ops.iter().map(|o| o.to_string()).collect::<Vec<_>>();
        let env = || Env {
            root: root.clone(),
            tree: Tree::open(&root).unwrap(),
            cfg: cfg.clone(),
            caller: Caller::User(ALICE),
        };
        let opts = Options {
            dry_run,
            no_restart: true,
            ..Options::default()
        };
        match intent {
            Intent::LeaseA | Intent::LeaseB => {
                let wt = fx.p(match intent {
                    Intent::LeaseA => "/home/alice/a",
                    _ => "/home/alice/b",
                });
                flow_lease(&env(), &"p".parse().unwrap(), Some(&wt), opts)
                    .map(|o| text(&o.relinked.ops))
                    .map_err(|e| one_line(&e))
            }
            Intent::Release => flow_release(&env(), Some("vm1".parse().unwrap()), opts)
                .map(|o| text(&o.relinked.ops))
                .map_err(|e| one_line(&e)),
            Intent::Start => {
                let shares = shares(&tree, &cfg, "vm1").map_err(|e| one_line(&e))?;
                prepare_shares(&tree, &cfg, "vm1", &shares, dry_run)
                    .map(|o| o.actions.iter().map(|a| a.to_string()).collect())
                    .map_err(|e| one_line(&e))
            }
            _ => {
                let target = match intent {
                    Intent::LinkA => Some(fx.p("/home/alice/a")),
                    Intent::LinkB => Some(fx.p("/home/alice/b")),
                    _ => None,
                };
                let change = Change {
                    name: "vm1".parse().unwrap(),
                    target: target.map(|t| root.inside(&t).unwrap()),
                };
                relink(&tree, &cfg, &[change], Caller::User(ALICE), dry_run)
                    .map(|r| text(&r.ops))
                    .map_err(|e| one_line(&e))
            }
        }
    };
    let planned = once(true);
    let done = once(false);
    (planned, done)
}

fn setup(b: Before) -> Rig {
    let fx = rig();
    // vm1 is pool p's one VM: a live share of its own entry, in the config.
    fx.config(
        r#"{"vms": {"vm1": {"shares": [{"tag": "pool", "proto": "virtiofs",
            "source": "/var/lib/microvm-workspaces/.live/vm1"}]}}, "pools": {"p": ["vm1"]}}"#,
    );
    fx.runner(
        "vm1",
        &[
            ("workspace", b"/var/lib/microvm-workspaces/vm1"),
            ("hosts", b"/var/lib/microvm-workspaces/vm1/hosts/vm1"),
            ("live", b"/var/lib/microvm-workspaces/.live/vm1/sub"),
        ],
    );
    repo(&fx, "/home/alice/a", true);
    repo(&fx, "/home/alice/b", false);
    if !matches!(b, Before::NoWorkspaceDir) {
        fx.mkdir(WS, 0, 0o755);
    }
    // By the engine, as the intents below: a user links a pool VM by hand only through it
    // (microvm-link refuses, policy::may_link_by_hand), and these are the states to reach.
    let link_as = |user: u32, to: &str| {
        let root = Root::from_args(Some(fx.root())).unwrap();
        let tree = Tree::open(&root).unwrap();
        let cfg = Config::load(&tree).unwrap();
        let change = Change {
            name: "vm1".parse().unwrap(),
            target: Some(to.into()),
        };
        let caller = match user {
            0 => Caller::Root,
            u => Caller::User(u),
        };
        relink(&tree, &cfg, &[change], caller, false).unwrap();
    };
    match b {
        Before::NoWorkspaceDir => {}
        Before::Placeholder => {
            fx.prepare_ok("vm1");
        }
        Before::UsersDirectory => {
            fx.mkdir(&format!("{WS}/vm1"), ALICE, 0o755);
        }
        Before::HypervisorsDirectory => {
            fx.mkdir(&format!("{WS}/vm1"), 0, 0o775);
        }
        Before::LegacySymlink => fx.symlink_as("/home/alice/b", &format!("{WS}/vm1"), ALICE),
        Before::Linked => link_as(ALICE, "/home/alice/a"),
        Before::LinkedRepoGone => {
            repo(&fx, "/home/alice/c", false);
            link_as(ALICE, "/home/alice/c");
            std::fs::rename(fx.p("/home/alice/c"), fx.p("/home/alice/c-moved")).unwrap();
        }
        Before::LinkedByRoot => {
            repo(&fx, "/home/bob/r", false);
            std::os::unix::fs::chown(fx.p("/home/bob/r"), Some(ALICE), Some(ALICE)).unwrap();
            link_as(0, "/home/bob/r");
        }
        Before::LiveRoot => {
            link_as(ALICE, "/home/alice/a");
            fx.prepare_ok("vm1");
        }
        Before::Leased | Before::LeaseGone => {
            let wt = match b {
                Before::Leased => "/home/alice/a",
                _ => "/home/alice/c",
            };
            repo(&fx, "/home/alice/c", false);
            Run::link(&fx)
                .user(ALICE)
                .cwd(wt)
                .args(["--pool", "p", "--no-restart"])
                .ok_stdout();
            if matches!(b, Before::LeaseGone) {
                std::fs::rename(fx.p("/home/alice/c"), fx.p("/home/alice/c-moved")).unwrap();
            }
        }
    }
    fx
}

#[test]
fn the_plan_is_exactly_what_the_act_does_and_a_refusal_changes_nothing() {
    in_mount_ns!(the_plan_is_exactly_what_the_act_does_and_a_refusal_changes_nothing);
    use std::cell::Cell;
    let (cases, changed, refused) = (Cell::new(0), Cell::new(0), Cell::new(0));
    // Plans that wrote and removed a lease record.
    let (leased, released) = (Cell::new(0), Cell::new(0));
    let config = ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(b in before(), intents in proptest::collection::vec(intent(), 1..4))| {
        let fx = setup(b);
        for i in intents {
            let snap = fx.snapshot();
            let (planned, done) = run(&fx, i);
            cases.set(cases.get() + 1);
            match (&planned, &done) {
                (Ok(p), Ok(d)) => {
                    prop_assert_eq!(p, d, "{:?} then {:?}", b, i);
                    if !d.is_empty() {
                        changed.set(changed.get() + 1);
                    }
                    if d.iter().any(|o| o.starts_with("write lease ")) {
                        leased.set(leased.get() + 1);
                    }
                    if d.iter().any(|o| o.starts_with("remove lease ")) {
                        released.set(released.get() + 1);
                    }
                }
                (Err(p), Err(d)) => {
                    prop_assert_eq!(p, d, "{:?} then {:?}", b, i);
                    // A refusal changes nothing (the lock file aside, taken before looking).
                    let mut now = fx.snapshot();
                    now.retain(|p, _| !p.ends_with(".lock"));
                    let mut was = snap.clone();
                    was.retain(|p, _| !p.ends_with(".lock"));
                    prop_assert_eq!(was, now, "{:?} then {:?}: refused ({}) but changed", b, i, d);
                    refused.set(refused.get() + 1);
                }
                _ => prop_assert!(false, "{:?} then {:?}: planned {:?}, did {:?}", b, i, planned, done),
            }
        }
    });
    let (cases, changed, refused) = (cases.get(), changed.get(), refused.get());
    let (leased, released) = (leased.get(), released.get());
    eprintln!("engine: {cases} intents, {changed} with operations ({leased} wrote a lease, {released} removed one), {refused} refused; plan == act in each");
    // The generator reached what it is for.
    assert!(
        changed > 10 && refused > 0 && leased > 0 && released > 0,
        "{changed} changed, {refused} refused, {leased} leased, {released} released"
    );
}
