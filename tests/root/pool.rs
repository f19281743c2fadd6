//! Pools and leases (issue 20, docs/reference/cli.md#pool): `microvm-link --pool` leases the
//! first free VM of a pool for a worktree and links it there through the VM's live share;
//! the same worktree finds its lease again; a full pool is refused naming every holder;
//! `release` is its holder's (or root's), or anyone's once the worktree is gone; leases are
//! files that outlive mounts. Re-rooted trees in private mount namespaces; the running
//! guests are the end-to-end suite's (21-pool-worktrees).

use std::os::unix::fs::MetadataExt;
use std::process::Output;

use crate::common::*;

const WS: &str = "/var/lib/microvm-workspaces";

/// Pool `agents` of `n` VMs `a1..an`, each with one live workspace share of its own entry
/// (in the config and the runner); worktrees wt1..wt3 of alice's and wt2 of bob's.
fn fixture(n: usize) -> Rig {
    let fx = rig();
    let vms: Vec<String> = (1..=n).map(|i| format!("a{i}")).collect();
    fx.live_pool(&vms, "workspace", true);
    for (wt, uid) in [
        ("/home/alice/wt1", ALICE),
        ("/home/alice/wt2", ALICE),
        ("/home/alice/wt3", ALICE),
        ("/home/bob/wt2", BOB),
    ] {
        fx.repo(wt, uid);
        fx.write(&format!("{wt}/marker"), wt.as_bytes());
    }
    fx
}

fn pool(fx: &Fx, wt: &str, uid: u32, args: &[&str]) -> Output {
    Run::link(fx)
        .user(uid)
        .cwd(wt)
        .args(["--pool", "agents"])
        .args(args)
        .output()
}

fn link(fx: &Fx, cwd: &str, uid: u32, args: &[&str]) -> Output {
    Run::link(fx).user(uid).cwd(cwd).args(args).output()
}

fn json(out: &Output) -> serde_json::Value {
    assert_ok(out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn lease(fx: &Fx, vm: &str) -> Option<(String, u32)> {
    let p = fx.p(&format!("{WS}/.leases/{vm}"));
    let t = std::fs::read_link(&p).ok()?;
    Some((t.to_string_lossy().into_owned(), meta(&p).0))
}

/// What the guest of `vm` sees through its live share (`<live root>/current`).
fn seen(fx: &Fx, vm: &str) -> Option<String> {
    std::fs::read_to_string(fx.p(&format!("{WS}/.live/{vm}/current/marker"))).ok()
}

#[test]
fn a_worktree_leases_the_first_free_vm_and_finds_its_lease_again() {
    in_mount_ns!(a_worktree_leases_the_first_free_vm_and_finds_its_lease_again);
    let fx = fixture(3);
    let out = pool(&fx, "/home/alice/wt1", ALICE, &[]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        text.lines().next(),
        Some("leased a1 from pool agents for /home/alice/wt1"),
        "{text}"
    );
    assert_eq!(lease(&fx, "a1"), Some(("/home/alice/wt1".into(), ALICE)));
    assert_eq!(
        std::fs::read_link(fx.p(&format!("{WS}/.links/a1"))).unwrap(),
        std::path::Path::new("/home/alice/wt1")
    );
    assert_eq!(seen(&fx, "a1").as_deref(), Some("/home/alice/wt1"));
    let leases = fx.p(&format!("{WS}/.leases"));
    assert_eq!(meta(&leases), (0, 0, 0o755), ".leases is a trusted place");

    // Again from wt1: its own lease, nothing recorded anew, nothing relinked.
    let before = std::fs::symlink_metadata(fx.p(&format!("{WS}/.leases/a1"))).unwrap();
    let v = json(&pool(&fx, "/home/alice/wt1", ALICE, &["--json"]));
    assert_eq!(v["vm"], "a1");
    assert_eq!(v["lease"]["new"], false);
    assert_eq!(v["lease"]["worktree"], "/home/alice/wt1");
    assert_eq!(v["lease"]["pool"], "agents");
    assert_eq!(v["changed"], 0, "{v}");
    let after = std::fs::symlink_metadata(fx.p(&format!("{WS}/.leases/a1"))).unwrap();
    assert_eq!(
        (before.ino(), before.mtime()),
        (after.ino(), after.mtime()),
        "the lease was written again"
    );
    let text =
        String::from_utf8_lossy(&pool(&fx, "/home/alice/wt1/", ALICE, &[]).stdout).into_owned();
    assert!(
        text.starts_with("a1 is leased for /home/alice/wt1 already (pool agents, since "),
        "{text}"
    );

    // Other worktrees get the next VMs, in the pool's order.
    let v = json(&pool(&fx, "/home/alice/wt2", ALICE, &["--json"]));
    assert_eq!(
        (v["vm"].as_str(), v["lease"]["new"].as_bool()),
        (Some("a2"), Some(true))
    );
    let v = json(&pool(&fx, "/home/bob/wt2", BOB, &["--json"]));
    assert_eq!(v["vm"], "a3");
    assert_eq!(lease(&fx, "a3"), Some(("/home/bob/wt2".into(), BOB)));
    for (vm, wt) in [("a1", "wt1"), ("a2", "wt2")] {
        assert_eq!(seen(&fx, vm), Some(format!("/home/alice/{wt}")));
    }
    assert_eq!(leftovers(fx.root()), Vec::<std::path::PathBuf>::new());

    // status: the pool and who holds what, as JSON and in the table.
    let st = json(&link(&fx, "/", 0, &["status", "--json"]));
    let vms = &st["pools"][0]["vms"];
    assert_eq!(st["pools"][0]["pool"], "agents");
    assert_eq!(vms[0]["lease"]["uid"], ALICE);
    assert_eq!(vms[0]["lease"]["worktree"], "/home/alice/wt1");
    assert_eq!(vms[0]["lease"]["worktreeGone"], false);
    assert!(vms[0]["lease"]["since"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(vms[2]["lease"]["uid"], BOB);
    let table = String::from_utf8(link(&fx, "/", 0, &["status"]).stdout).unwrap();
    assert!(table.contains("\nPOOL    VM  LEASE\n"), "{table}");
    assert!(
        table.contains("agents  a1  uid 4242 for /home/alice/wt1 since "),
        "{table}"
    );
}

#[test]
fn a_full_pool_is_refused_naming_every_lease_and_changes_nothing() {
    in_mount_ns!(a_full_pool_is_refused_naming_every_lease_and_changes_nothing);
    let fx = fixture(2);
    assert_ok(&pool(&fx, "/home/alice/wt1", ALICE, &[]));
    assert_ok(&pool(&fx, "/home/bob/wt2", BOB, &[]));
    let snap = fx.snapshot();
    let out = pool(&fx, "/home/alice/wt3", ALICE, &[]);
    assert_one_line_error(
        &out,
        &["microvm-link: pool agents is full (2 leased: a1 by uid 4242 for /home/alice/wt1, a2 by uid 4343 for /home/bob/wt2)"],
    );
    let mut now = fx.snapshot();
    now.retain(|p, _| !p.ends_with(".lock"));
    let mut was = snap;
    was.retain(|p, _| !p.ends_with(".lock"));
    assert_eq!(was, now);
    // A dry run says the same.
    assert_one_line_error(
        &pool(&fx, "/home/alice/wt3", ALICE, &["--dry-run"]),
        &["pool agents is full (2 leased: "],
    );
}

#[test]
fn a_release_is_the_holders_or_roots_and_the_placeholder_serves() {
    in_mount_ns!(a_release_is_the_holders_or_roots_and_the_placeholder_serves);
    let fx = fixture(2);
    assert_ok(&pool(&fx, "/home/alice/wt1", ALICE, &[]));
    assert_ok(&pool(&fx, "/home/alice/wt2", ALICE, &[]));
    // Bob may not end alice's lease, by name or otherwise.
    let out = link(&fx, "/home/bob/wt2", BOB, &["release", "a1"]);
    assert_one_line_error(
        &out,
        &["a1 is leased by uid 4242 for /home/alice/wt1; only they or root may release it"],
    );
    assert!(lease(&fx, "a1").is_some());
    // Bob in his worktree, which holds no lease: one line.
    assert_one_line_error(
        &link(&fx, "/home/bob/wt2", BOB, &["release"]),
        &["no VM is leased for /home/bob/wt2 by you"],
    );
    // A dry run shows the release and changes nothing.
    let snap = fx.snapshot();
    let text =
        String::from_utf8(link(&fx, "/home/alice/wt1", ALICE, &["release", "--dry-run"]).stdout)
            .unwrap();
    assert!(text.contains("would end the lease of a1"), "{text}");
    assert!(text.contains("would remove lease "), "{text}");
    assert!(text.contains("would remove record "), "{text}");
    assert_eq!(snap, fx.snapshot());
    // Alice, in her worktree: its lease ends, the placeholder serves, the VM is free.
    let out = link(&fx, "/home/alice/wt1", ALICE, &["release"]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("released the lease of a1 (uid 4242 for /home/alice/wt1, since "),
        "{text}"
    );
    assert!(text.lines().next().unwrap().ends_with(" UTC)"), "{text}");
    assert_eq!(lease(&fx, "a1"), None);
    assert!(!fx.p(&format!("{WS}/.links/a1")).exists());
    // Who held it last stays beside the leases (for the next holder's fresh guest rule), and
    // is no lease: status shows a1 free.
    assert_eq!(
        lease(&fx, ".last-a1"),
        Some(("/home/alice/wt1".into(), ALICE))
    );
    let st = json(&link(&fx, "/", 0, &["status", "--json"]));
    assert_eq!(
        st["pools"][0]["vms"][0]["lease"],
        serde_json::Value::Null,
        "{st}"
    );
    assert_eq!(st["strayLeases"], serde_json::json!([]));
    let current = fx.p(&format!("{WS}/.live/a1/current"));
    assert!(is_marked(&current) && !is_mountpoint(&current));
    // Releasing what is not leased says so.
    let out = link(&fx, "/", ALICE, &["release", "a1"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("a1 is not leased; nothing to release"));
    // Root may end anyone's; the next lease takes the freed VM first.
    assert_ok(&link(&fx, "/", 0, &["release", "a2"]));
    assert_eq!(lease(&fx, "a2"), None);
    let v = json(&pool(&fx, "/home/bob/wt2", BOB, &["--json"]));
    assert_eq!(v["vm"], "a1");
}

#[test]
fn a_lease_whose_worktree_is_gone_is_released_by_the_next_lease_call() {
    in_mount_ns!(a_lease_whose_worktree_is_gone_is_released_by_the_next_lease_call);
    let fx = fixture(1);
    assert_ok(&pool(&fx, "/home/alice/wt1", ALICE, &[]));
    std::fs::rename(fx.p("/home/alice/wt1"), fx.p("/home/alice/wt1-moved")).unwrap();
    let st = json(&link(&fx, "/", 0, &["status", "--json"]));
    assert_eq!(st["pools"][0]["vms"][0]["lease"]["worktreeGone"], true);
    let out = pool(&fx, "/home/bob/wt2", BOB, &[]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("released the lease of a1 (uid 4242 for /home/alice/wt1, since ")
            && lines[0].ends_with("): its worktree is gone"),
        "{text}"
    );
    assert_eq!(lines[1], "leased a1 from pool agents for /home/bob/wt2");
    assert_eq!(lease(&fx, "a1"), Some(("/home/bob/wt2".into(), BOB)));
    assert_eq!(seen(&fx, "a1").as_deref(), Some("/home/bob/wt2"));
    // The moved worktree is not shown to bob's VM any more.
    let current = fx.p(&format!("{WS}/.live/a1/current"));
    assert_eq!(mount_count(&current), 1);
}

#[test]
fn leases_are_files_and_outlive_every_mount() {
    in_mount_ns!(leases_are_files_and_outlive_every_mount);
    let fx = fixture(2);
    assert_ok(&pool(&fx, "/home/alice/wt1", ALICE, &[]));
    // A reboot: every mount is gone, the records and leases stay.
    for p in mounts_under(fx.root()).iter().rev() {
        nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    assert_eq!(seen(&fx, "a1"), None);
    assert_eq!(lease(&fx, "a1"), Some(("/home/alice/wt1".into(), ALICE)));
    // The VM's start mounts its link again; the worktree's lease is found again.
    fx.prepare_ok("a1");
    assert_eq!(seen(&fx, "a1").as_deref(), Some("/home/alice/wt1"));
    let v = json(&pool(&fx, "/home/alice/wt1", ALICE, &["--json"]));
    assert_eq!(
        (v["vm"].as_str(), v["lease"]["new"].as_bool()),
        (Some("a1"), Some(false))
    );
    // Not linked again after a reboot until its start: the lease call links it.
    for p in mounts_under(fx.root()).iter().rev() {
        nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    let v = json(&pool(&fx, "/home/alice/wt1", ALICE, &["--json"]));
    assert_eq!(v["vm"], "a1");
    assert_eq!(seen(&fx, "a1").as_deref(), Some("/home/alice/wt1"));
}

#[test]
fn a_dry_run_shows_the_lease_and_changes_nothing() {
    in_mount_ns!(a_dry_run_shows_the_lease_and_changes_nothing);
    let fx = fixture(2);
    let snap = fx.snapshot();
    let out = pool(&fx, "/home/alice/wt1", ALICE, &["--dry-run"]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("would lease a1 from pool agents for /home/alice/wt1\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "would write lease {WS}/.leases/a1 (pool agents, -> /home/alice/wt1, owner uid 4242)"
        )),
        "{text}"
    );
    assert!(text.contains("would link "), "{text}");
    assert_eq!(snap, fx.snapshot());
}

#[test]
fn bad_pool_input_is_one_line_naming_what_and_where() {
    in_mount_ns!(bad_pool_input_is_one_line_naming_what_and_where);
    let fx = fixture(2);
    let snap = fx.snapshot();
    for (args, needle) in [
        (
            vec!["--pool", "nope"],
            "there is no pool nope; the config's pools: agents",
        ),
        (
            vec!["--pool", "agents", "a1"],
            "--pool \"agents\" chooses the VM itself: name no VM (a1) with it",
        ),
        (
            vec!["--pool", "-oX"],
            "--pool: pool name \"-oX\" does not start with a letter, a digit or '_'",
        ),
        (
            vec!["--pool", "a\nb"],
            "--pool: pool name \"a\\nb\" has a character other than",
        ),
        (
            vec!["shell", "--pool", "nope", "--", "true"],
            "there is no pool nope; the config's pools: agents",
        ),
    ] {
        let out = link(&fx, "/home/alice/wt1", ALICE, &args);
        assert_one_line_error(&out, &[needle]);
    }
    // A worktree of someone else's: refused as any foreign repo is.
    assert_one_line_error(
        &pool(&fx, "/home/bob/wt2", ALICE, &[]),
        &["repo /home/bob/wt2 is owned by uid 4343, not by you (uid 4242)"],
    );
    // Through sudo nobody names another user (`--user` is root's own).
    let out = Run::link(&fx)
        .env("SUDO_UID", ALICE.to_string())
        .cwd("/home/alice/wt1")
        .args(["--pool", "agents"])
        .output();
    assert_one_line_error(&out, &["refused through sudo"]);
    assert_eq!(snap, fx.snapshot());

    // A runner whose workspace share is not the live root any more (the config's is).
    let store = std::fs::read_link(fx.p("/var/lib/microvms/a2/current")).unwrap();
    fx.write(
        &format!(
            "{}/share/microvm/virtiofs/workspace/source",
            store.display()
        ),
        format!("{WS}/a2\n").as_bytes(),
    );
    assert_one_line_error(
        &pool(&fx, "/home/alice/wt1", ALICE, &[]),
        &[&format!(
            "pool agents: VM a2 has no live workspace share: none of its shares has the source {WS}/.live/a2"
        )],
    );
    // An empty pool, a pool VM without a live share: the config is refused, naming it.
    fx.config(r#"{"vms": {"a1": {}}, "pools": {"agents": []}}"#);
    assert_one_line_error(
        &pool(&fx, "/home/alice/wt1", ALICE, &[]),
        &["pools.agents is empty: a pool needs at least one VM"],
    );
    fx.config(r#"{"vms": {"a1": {}}, "pools": {"agents": ["a1"]}}"#);
    assert_one_line_error(
        &pool(&fx, "/home/alice/wt1", ALICE, &[]),
        &[&format!(
            "pools.agents: VM a1 has no live workspace share (a share of vms.a1 whose source is {WS}/.live/a1)"
        )],
    );
}

#[test]
fn a_pool_vm_changes_hands_only_through_leases() {
    in_mount_ns!(a_pool_vm_changes_hands_only_through_leases);
    let fx = fixture(2);
    assert_ok(&pool(&fx, "/home/alice/wt1", ALICE, &[]));
    let before = fx.snapshot();
    let why = "a1 is in pool agents: lease it with microvm-link --pool agents and end the lease with microvm-link release (only root links a pool VM by hand)";
    // Bob by hand: onto alice's leased VM, onto the free one, and unlinking either.
    for args in [&["a1"][..], &["a2"], &["unlink", "a1"], &["unlink", "a2"]] {
        let out = link(&fx, "/home/bob/wt2", BOB, args);
        let vm = args[args.len() - 1];
        assert_one_line_error(&out, &[&why.replace("a1", vm)]);
    }
    // Alice too, though she holds a1: her lease is ended by release, not by unlink.
    assert_one_line_error(
        &link(&fx, "/home/alice/wt1", ALICE, &["unlink", "a1"]),
        &[why],
    );
    assert_eq!(
        fx.snapshot(),
        before,
        "a refused link by hand changed something"
    );
    assert_eq!(lease(&fx, "a1"), Some(("/home/alice/wt1".into(), ALICE)));
    // Root may.
    assert_ok(&link(&fx, "/home/alice/wt2", 0, &["a2", "--no-restart"]));
    assert_eq!(seen(&fx, "a2").as_deref(), Some("/home/alice/wt2"));
}

#[test]
fn a_lease_says_where_it_moved_a_directory_in_its_way() {
    in_mount_ns!(a_lease_says_where_it_moved_a_directory_in_its_way);
    let fx = fixture(1);
    // Alice's own directory where a1's entry goes: moved aside for her lease, and said.
    fx.mkdir(&format!("{WS}/a1"), ALICE, 0o755);
    fx.write(&format!("{WS}/a1/notes"), b"mine");
    let v = json(&pool(&fx, "/home/alice/wt1", ALICE, &["--json"]));
    let displaced = v["displaced"].as_array().expect("displaced is a list");
    assert_eq!(displaced.len(), 1, "{v}");
    assert_eq!(displaced[0]["from"], format!("{WS}/a1"), "{v}");
    let to = displaced[0]["to"].as_str().unwrap();
    assert_eq!(
        std::fs::read(fx.p(&format!("{to}/notes"))).unwrap(),
        b"mine",
        "the directory is not where the report says"
    );
}
