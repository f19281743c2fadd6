//! `microvm-link status` in words (docs/reference/cli.md#status): what each share showed at start
//! (from the runtime record prepare writes) and shows now, and why a stale one is stale.
//! Against temporary roots; tests that link run in a private mount namespace.

use std::process::{Command, Output};

use crate::common::*;

/// A user the user database knows, so the reason can name them.
const NOBODY: u32 = 65534;

/// nobody links vm1 to their repo /home/nobody/vm1 (no restart).
fn link_nobodys_repo(fx: &Fx) {
    let repo = fx.p("/home/nobody/vm1");
    let args = ["vm1", "--repo", &repo.to_string_lossy(), "--no-restart"];
    assert_ok(&link(fx, NOBODY, &args));
}

fn link(fx: &Fx, uid: u32, args: &[&str]) -> Output {
    Command::new(LINK)
        .env("MICROVM_WORKSPACES_ROOT", fx.root())
        .env_remove("SUDO_UID")
        .env_remove("JOURNAL_STREAM")
        .arg("--user")
        .arg(uid.to_string())
        .args(args)
        .output()
        .unwrap()
}

fn status_json(fx: &Fx) -> serde_json::Value {
    let out = fx.run(LINK, &["status", "--json"]);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Share `tag` of `vm` in `status --json`.
fn share(st: &serde_json::Value, vm: &str, tag: &str) -> serde_json::Value {
    st["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vm"] == vm)
        .unwrap_or_else(|| panic!("{vm} not in {st}"))["shares"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["tag"] == tag)
        .unwrap_or_else(|| panic!("{vm}/{tag} not in {st}"))
        .clone()
}

fn table(fx: &Fx, extra: &[&str]) -> String {
    let mut args = vec!["status"];
    args.extend(extra);
    let out = fx.run(LINK, &args);
    assert_ok(&out);
    String::from_utf8(out.stdout).unwrap()
}

fn fixture() -> Fx {
    let fx = Fx::new();
    fx.runner("vm1", &[("workspace", b"/var/lib/microvm-workspaces/vm1")]);
    fx.runner("vm3", &[("other", b"/var/lib/microvm-workspaces/vm3")]);
    fx.repo("/home/nobody/vm1", NOBODY);
    fx.prepare_ok("vm1");
    fx.prepare_ok("vm3");
    fx
}

#[test]
fn the_record_says_what_each_share_showed_at_start() {
    in_mount_ns!(the_record_says_what_each_share_showed_at_start);
    let fx = fixture();
    assert_eq!(
        fx.record("vm1")["shares"][0]["shows"],
        serde_json::json!({"is": "placeholder"})
    );
    link_nobodys_repo(&fx);
    fx.prepare_ok("vm1");
    assert_eq!(
        fx.record("vm1")["shares"][0]["shows"],
        serde_json::json!({"is": "repo", "path": "/home/nobody/vm1", "owner": NOBODY})
    );
}

#[test]
fn status_says_in_words_what_a_stale_and_a_fresh_vm_show() {
    in_mount_ns!(status_says_in_words_what_a_stale_and_a_fresh_vm_show);
    let fx = fixture();
    let before = table(&fx, &[]);
    link_nobodys_repo(&fx);
    let st = status_json(&fx);
    let s = share(&st, "vm1", "workspace");
    assert_eq!(s["showedAtStart"], "placeholder", "{s}");
    assert_eq!(s["showsNow"], "repo /home/nobody/vm1", "{s}");
    assert_eq!(s["stale"], true);
    assert_eq!(
        s["staleBecause"],
        "started on the placeholder; nobody's repo is linked now"
    );
    // device and inode stay in the JSON.
    assert!(
        s["atStart"]["inode"].is_u64() && s["now"]["inode"].is_u64(),
        "{s}"
    );
    let fresh = share(&st, "vm3", "other");
    assert_eq!(fresh["showedAtStart"], "placeholder");
    assert_eq!(fresh["showsNow"], "placeholder");
    assert_eq!(fresh["stale"], false);
    assert_eq!(fresh["staleBecause"], serde_json::Value::Null);

    let after = table(&fx, &[]);
    let vm1 = after.lines().find(|l| l.starts_with("vm1 ")).unwrap();
    assert!(
        vm1.contains("placeholder  repo /home/nobody/vm1")
            && vm1.ends_with("STALE: started on the placeholder; nobody's repo is linked now"),
        "before:\n{before}after:\n{after}"
    );
    assert!(
        !after.contains(':') || !vm1.contains(" ("),
        "no device:inode without -v: {after}"
    );
    let vm3 = after.lines().find(|l| l.starts_with("vm3 ")).unwrap();
    assert!(vm3.ends_with("placeholder  placeholder"), "{after}");
    // -v adds device:inode.
    let verbose = table(&fx, &["-v"]);
    let at = &s["atStart"];
    assert!(
        verbose.contains(&format!("placeholder ({}:{})", at["device"], at["inode"])),
        "{verbose}"
    );
    eprintln!("before:\n{before}\nafter:\n{after}\n-v:\n{verbose}");

    // A start clears it and records the repo; unlinking makes it stale the other way.
    fx.prepare_ok("vm1");
    let s = share(&status_json(&fx), "vm1", "workspace");
    assert_eq!(
        (s["showedAtStart"].as_str(), s["stale"].as_bool()),
        (Some("repo /home/nobody/vm1"), Some(false))
    );
    assert_ok(&link(&fx, 0, &["unlink", "vm1", "--no-restart"]));
    let s = share(&status_json(&fx), "vm1", "workspace");
    assert_eq!(s["showsNow"], "placeholder");
    assert_eq!(
        s["staleBecause"],
        "started on nobody's repo /home/nobody/vm1; unlinked since, the placeholder serves now"
    );
}

#[test]
fn a_plain_directory_and_a_missing_one_are_said_so() {
    let fx = Fx::new();
    fx.runner("vm1", &[("data", b"/srv/data")]);
    fx.mkdir("/srv/data", 0, 0o755);
    fx.prepare_ok("vm1");
    let s = share(&status_json(&fx), "vm1", "data");
    assert_eq!(
        (s["showedAtStart"].as_str(), s["showsNow"].as_str()),
        (Some("directory"), Some("directory"))
    );
    std::fs::remove_dir(fx.p("/srv/data")).unwrap();
    let s = share(&status_json(&fx), "vm1", "data");
    assert_eq!(s["showsNow"], "missing");
    assert_eq!(
        s["staleBecause"],
        "started on a directory; the source is gone now"
    );
    let t = table(&fx, &[]);
    assert!(
        t.contains("directory  missing  STALE: started on a directory"),
        "{t}"
    );
}

#[test]
fn records_written_before_words_still_read() {
    let fx = Fx::new();
    fx.runner(
        "vm1",
        &[
            ("workspace", b"/var/lib/microvm-workspaces/vm1"),
            ("data", b"/srv/data"),
        ],
    );
    fx.mkdir("/srv/data", 0, 0o755);
    fx.prepare_ok("vm1");
    // The record as the previous version wrote it: no "shows".
    let mut rec = fx.record("vm1");
    for s in rec["shares"].as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("shows");
    }
    fx.write(
        "/run/microvm-workspaces/vm1.json",
        rec.to_string().as_bytes(),
    );
    let st = status_json(&fx);
    let ws = share(&st, "vm1", "workspace");
    assert_eq!(
        ws["showedAtStart"], "placeholder",
        "the kind still tells: {ws}"
    );
    let data = share(&st, "vm1", "data");
    assert_eq!(data["showedAtStart"], serde_json::Value::Null, "{data}");
    assert_eq!(data["showsNow"], "directory");
    assert_eq!(data["stale"], false);
}

#[test]
fn a_normal_user_sees_placeholders_in_words_too() {
    // trusted.* is invisible without CAP_SYS_ADMIN; the words fall back to the mode.
    let fx = fixture();
    std::fs::set_permissions(
        fx.root(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=4242", "--regid=4242", "--clear-groups", "--"])
        .arg(LINK)
        .args(["status", "--json"])
        .env("MICROVM_WORKSPACES_ROOT", fx.root())
        .env_remove("SUDO_UID")
        .output()
        .unwrap();
    assert_ok(&out);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = share(&st, "vm1", "workspace");
    assert_eq!(
        (s["showedAtStart"].as_str(), s["showsNow"].as_str()),
        (Some("placeholder"), Some("placeholder")),
        "{s}"
    );
}
