//! `microvm-link doctor` against temporary roots (docs/reference/cli.md#doctor): a healthy host
//! exits 0, and every check has a fixture where it fires and one where it does not.
//! Re-rooted, systemd is not asked (the drop-in check's firing is a unit test in
//! src/cmd/doctor.rs); the real systemd is the end-to-end suite's.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::common::*;
use serde_json::Value;

/// A virtiofsd in the store printing `version`, named (as microvm.nix does) in a supervisord
/// configuration that the runner's `bin/virtiofsd-run` names.
fn virtiofsd(fx: &Fx, vm: &str, version: &str) {
    let exe = format!("/nix/store/2222-virtiofsd-{vm}/bin/virtiofsd");
    fx.write(
        &exe,
        format!("#!/bin/sh\necho virtiofsd {version}\n").as_bytes(),
    );
    std::fs::set_permissions(fx.p(&exe), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = format!("/nix/store/3333-{vm}-virtiofsd-supervisord.conf");
    fx.write(
        &conf,
        format!("[program:virtiofsd-ws]\ncommand={exe} --socket-path=ws.sock --shared-dir=/x\n")
            .as_bytes(),
    );
    fx.write(
        &format!("/nix/store/0000-microvm-{vm}/bin/virtiofsd-run"),
        format!(
            "#!/bin/sh\nexec /nix/store/4444-supervisor/bin/supervisord --configuration {conf}\n"
        )
        .as_bytes(),
    );
}

const RULE: &[u8] = b"root ALL=(ALL:ALL) SETENV: ALL\n%wheel ALL=(root) NOPASSWD: /nix/store/1234-microvm-workspaces/bin/microvm-link\n";

/// A host where nothing is wrong: generator installed and run, valid config, a root-owned
/// runner with its virtiofsd 1.14, a sudo rule, vm1 prepared and not stale.
fn healthy() -> Fx {
    let fx = Fx::new();
    fx.runner("vm1", &[("workspace", b"/var/lib/microvm-workspaces/vm1")]);
    virtiofsd(&fx, "vm1", "1.14.0");
    fx.write(
        "/etc/systemd/system-generators/microvm-workspaces-generator",
        b"#!/bin/sh\n",
    );
    for t in ["microvm@", "microvm-virtiofsd@"] {
        fx.write(
            &format!("/run/systemd/generator/{t}.service.d/50-microvm-workspaces.conf"),
            b"[Service]\nExecStartPre=+/bin/microvm-workspaces-prepare %i\n",
        );
    }
    fx.config(r#"{"vms": {}}"#);
    fx.write("/etc/sudoers", RULE);
    std::fs::set_permissions(fx.p("/etc/sudoers"), std::fs::Permissions::from_mode(0o440)).unwrap();
    fx.prepare_ok("vm1");
    fx
}

/// Runs doctor --json; its exit code and findings.
fn doctor(fx: &Fx) -> (i32, Vec<Value>) {
    let out = fx.run(LINK, &["doctor", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let code = out.status.code().unwrap();
    assert_eq!(v["ok"], code == 0, "{v}");
    (code, v["findings"].as_array().unwrap().clone())
}

/// The findings of `check` with `severity`.
fn of<'a>(f: &'a [Value], check: &str, severity: &str) -> Vec<&'a Value> {
    f.iter()
        .filter(|x| x["check"] == check && x["severity"] == severity)
        .collect()
}

/// Exactly one finding of `check` with `severity` whose text holds `needle`.
fn one(f: &[Value], check: &str, severity: &str, needle: &str) -> Value {
    let text = |x: &Value| {
        format!(
            "{} fix: {}",
            x["what"].as_str().unwrap_or(""),
            x["fix"].as_str().unwrap_or("")
        )
    };
    let found: Vec<&Value> = of(f, check, severity)
        .into_iter()
        .filter(|x| text(x).contains(needle))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {severity} {check} with {needle:?} in {f:#?}"
    );
    found[0].clone()
}

fn no_fail(f: &[Value], check: &str) {
    assert!(of(f, check, "fail").is_empty(), "{check} failed: {f:#?}");
}

#[test]
fn a_healthy_host_exits_0_and_says_what_it_checked() {
    let fx = healthy();
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0, "{f:#?}");
    assert!(of(&f, "", "fail").is_empty());
    one(&f, "config", "ok", "is valid");
    assert_eq!(
        of(&f, "generator", "ok").len(),
        2,
        "installed and run: {f:#?}"
    );
    one(&f, "drop-ins", "warn", "not checked: re-rooted");
    one(&f, "runner", "ok", "1 VMs known");
    one(
        &f,
        "virtiofsd",
        "ok",
        "virtiofsd 1.14.0 at /nix/store/2222-virtiofsd-vm1/bin/virtiofsd (VMs vm1)",
    );
    one(&f, "symlinked-source", "ok", "no virtiofs source");
    one(&f, "private-tmp", "ok", "no virtiofs source");
    one(
        &f,
        "sudo",
        "ok",
        "%wheel may run /nix/store/1234-microvm-workspaces/bin/microvm-link",
    );
    one(&f, "link-records", "ok", "");
    one(&f, "stale", "ok", "no running VM is stale");
    let text = fx.run(LINK, &["doctor"]);
    assert_ok(&text);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.ends_with("nothing found that will make a VM fail (1 warning)\n"),
        "{text}"
    );
}

#[test]
fn no_generator_fails() {
    let fx = healthy();
    std::fs::remove_file(fx.p("/etc/systemd/system-generators/microvm-workspaces-generator"))
        .unwrap();
    let (code, f) = doctor(&fx);
    assert_eq!(code, 1);
    one(
        &f,
        "generator",
        "fail",
        "microvm-workspaces-generator is in none of",
    );
    // Installed in /usr/lib instead: fine.
    fx.write(
        "/usr/lib/systemd/system-generators/microvm-workspaces-generator",
        b"#!/bin/sh\n",
    );
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0, "{f:#?}");
}

#[test]
fn a_generator_that_has_not_run_fails() {
    let fx = healthy();
    std::fs::remove_dir_all(fx.p("/run/systemd/generator/microvm@.service.d")).unwrap();
    let (code, f) = doctor(&fx);
    assert_eq!(code, 1);
    one(&f, "generator", "fail", "systemctl daemon-reload");
    // Disabled in the config: no drop-ins is what was asked for; said, not failed.
    fx.config(r#"{"enable": false}"#);
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0, "{f:#?}");
    one(&f, "config", "warn", "\"enable\": false");
}

#[test]
fn a_broken_config_fails() {
    let fx = healthy();
    fx.config(r#"{"vms": {}, "stateDirr": "/x"}"#);
    let (code, f) = doctor(&fx);
    assert_eq!(code, 1);
    one(&f, "config", "fail", "stateDirr");
    // A missing one means defaults.
    std::fs::remove_file(fx.p("/etc/microvm-workspaces/config.json")).unwrap();
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0, "{f:#?}");
    one(&f, "config", "ok", "defaults");
}

#[test]
fn a_source_under_tmp_fails() {
    let fx = healthy();
    fx.runner(
        "vm2",
        &[("scratch", b"/tmp/vm2"), ("cache", b"/var/tmp/vm2")],
    );
    virtiofsd(&fx, "vm2", "1.14.0");
    let (code, f) = doctor(&fx);
    assert_eq!(code, 1);
    let found = of(&f, "private-tmp", "fail");
    assert_eq!(found.len(), 2, "{f:#?}");
    assert!(found[0]["what"]
        .as_str()
        .unwrap()
        .contains("microvm-virtiofsd@vm2.service's PrivateTmp="));
    // The same share over 9p (no virtiofsd, no PrivateTmp=): fine.
    let fx = healthy();
    fx.config(r#"{"vms": {"vm2": {"shares": [{"tag": "scratch", "proto": "9p", "source": "/tmp/vm2"}]}}}"#);
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0, "{f:#?}");
    one(&f, "private-tmp", "ok", "");
}

#[test]
fn a_symlinked_source_fails_for_virtiofsd_1_14_and_warns_for_older() {
    let fx = healthy();
    fx.mkdir("/srv/real", 0, 0o755);
    fx.symlink("/srv/real", "/srv/link");
    fx.runner("vm2", &[("data", b"/srv/link")]);
    virtiofsd(&fx, "vm2", "1.14.0");
    let (code, f) = doctor(&fx);
    assert_eq!(code, 1);
    one(
        &f,
        "symlinked-source",
        "fail",
        "source /srv/link is a symbolic link (to /srv/real)",
    );
    // What --version says counts: 1.13 follows it.
    virtiofsd(&fx, "vm2", "1.13.3");
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0, "{f:#?}");
    one(&f, "symlinked-source", "warn", "1.14 and later refuse it");
    one(&f, "virtiofsd", "ok", "virtiofsd 1.13.3");
    // A symlink in a parent component is fine; so is a shell-era symlink entry (migrated).
    let fx = healthy();
    fx.mkdir("/srv/real/sub", 0, 0o755);
    fx.symlink("/srv/real", "/srv/link");
    fx.repo("/home/alice/vm2", ALICE);
    fx.symlink_as("/home/alice/vm2", "/var/lib/microvm-workspaces/vm2", ALICE);
    fx.runner(
        "vm2",
        &[
            ("data", b"/srv/link/sub"),
            ("ws", b"/var/lib/microvm-workspaces/vm2"),
        ],
    );
    virtiofsd(&fx, "vm2", "1.14.0");
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0, "{f:#?}");
    one(&f, "symlinked-source", "ok", "");
}

#[test]
fn virtiofsd_not_found_is_said() {
    let fx = healthy();
    std::fs::remove_file(fx.p("/nix/store/0000-microvm-vm1/bin/virtiofsd-run")).unwrap();
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0, "{f:#?}");
    one(
        &f,
        "virtiofsd",
        "warn",
        "could not find the virtiofsd of VMs vm1",
    );
    // A symlinked source is then judged as for 1.14.
    fx.mkdir("/srv/real", 0, 0o755);
    fx.symlink("/srv/real", "/srv/link");
    fx.runner("vm2", &[("data", b"/srv/link")]);
    let (code, f) = doctor(&fx);
    assert_eq!(code, 1);
    one(&f, "symlinked-source", "fail", "/srv/link");
}

#[test]
fn a_runner_not_owned_by_root_fails() {
    let fx = healthy();
    fx.runner("vm2", &[("data", b"/srv/vm2")]);
    let store = fx.p("/nix/store/0000-microvm-vm2");
    Command::new("chown")
        .args(["-R", &ALICE.to_string()])
        .arg(&store)
        .status()
        .unwrap();
    let (code, f) = doctor(&fx);
    assert_eq!(code, 1);
    one(&f, "runner", "fail", "VM vm2");
    no_fail(&f, "private-tmp");
}

#[test]
fn the_sudo_rule_is_looked_for_and_what_could_not_be_read_is_said() {
    let fx = healthy();
    std::fs::write(fx.p("/etc/sudoers"), b"root ALL=(ALL:ALL) ALL\n").unwrap();
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0, "a missing rule stops no VM");
    one(
        &f,
        "sudo",
        "warn",
        "no sudo rule names microvm-link (checked /etc/sudoers and /etc/sudoers.d/*",
    );
    // In sudoers.d; a name with a dot is skipped by sudo, so by doctor too.
    fx.write("/etc/sudoers.d/microvm.link", RULE);
    let (_, f) = doctor(&fx);
    one(&f, "sudo", "warn", "no sudo rule");
    fx.write("/etc/sudoers.d/microvm-link", RULE);
    let (_, f) = doctor(&fx);
    one(
        &f,
        "sudo",
        "ok",
        "/etc/sudoers.d/microvm-link: %wheel may run",
    );
    // A normal user cannot read sudoers (0440): said, not guessed.
    std::fs::set_permissions(fx.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        fx.p("/etc/sudoers.d/microvm-link"),
        std::fs::Permissions::from_mode(0o440),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=4242", "--regid=4242", "--clear-groups", "--"])
        .arg(LINK)
        .args(["doctor", "--json"])
        .env("MICROVM_WORKSPACES_ROOT", fx.root())
        .env_remove("SUDO_UID")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = v["findings"].as_array().unwrap();
    one(f, "sudo", "warn", "could not read /etc/sudoers");
    assert_eq!(out.status.code(), Some(0), "{v:#}");
}

#[test]
fn a_link_record_whose_repo_is_gone_is_reported() {
    let fx = healthy();
    fx.repo("/home/alice/here", ALICE);
    fx.mkdir("/var/lib/microvm-workspaces/.links", 0, 0o755);
    fx.symlink_as(
        "/home/alice/here",
        "/var/lib/microvm-workspaces/.links/vm1",
        ALICE,
    );
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0);
    one(
        &f,
        "link-records",
        "ok",
        "1 link records, every repo present",
    );
    fx.symlink_as(
        "/home/alice/gone",
        "/var/lib/microvm-workspaces/.links/web",
        ALICE,
    );
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0, "the placeholder serves: no VM fails");
    one(
        &f,
        "link-records",
        "warn",
        "/var/lib/microvm-workspaces/web -> /home/alice/gone: the repo is gone",
    );
}

#[test]
fn an_unsealed_placeholder_is_named_until_a_start_seals_it() {
    let fx = healthy();
    let (_, f) = doctor(&fx);
    one(&f, "sealed", "ok", "1 unlinked entries sealed");
    // As an older version left it.
    unseal_tree(&fx.p("/var/lib/microvm-workspaces/vm1"));
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0, "{f:#?}");
    one(
        &f,
        "sealed",
        "warn",
        "not sealed (made before sealing, or a run was killed): /var/lib/microvm-workspaces/vm1",
    );
    fx.prepare_ok("vm1");
    let (_, f) = doctor(&fx);
    one(&f, "sealed", "ok", "1 unlinked entries sealed");
}

#[test]
fn a_stale_vm_is_reported_with_its_reason() {
    let fx = healthy();
    // A new directory in the placeholder's place (made first: a fresh inode number).
    let new = fx.mkdir("/var/lib/microvm-workspaces/new", 0, 0o755);
    let entry = fx.p("/var/lib/microvm-workspaces/vm1");
    unseal_tree(&entry);
    std::fs::remove_dir(&entry).unwrap();
    std::fs::rename(new, &entry).unwrap();
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0, "{f:#?}");
    one(
        &f,
        "stale",
        "warn",
        "VM vm1 is stale (workspace: started on the placeholder; directory now)",
    );
    one(&f, "stale", "warn", "systemctl restart microvm@vm1.service");
}

#[test]
fn pools_say_whether_each_vm_has_its_live_share_and_which_leases_are_gone() {
    let fx = healthy();
    let (_, f) = doctor(&fx);
    assert!(of(&f, "pools", "ok").is_empty(), "no pools, nothing said");
    let live = |vm: &str| format!("/var/lib/microvm-workspaces/.live/{vm}");
    fx.config(&format!(
        r#"{{"vms": {{"p1": {{"shares": [{{"tag": "w", "proto": "virtiofs", "source": "{}"}}]}},
                     "p2": {{"shares": [{{"tag": "w", "proto": "virtiofs", "source": "{}"}}]}}}},
            "pools": {{"agents": ["p1", "p2"]}}}}"#,
        live("p1"),
        live("p2")
    ));
    fx.runner("p1", &[("w", live("p1").as_bytes())]);
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0, "{f:#?}");
    one(
        &f,
        "pools",
        "ok",
        "pool agents: 2 VMs with live workspace shares, 0 leased",
    );
    // A runner that gives p2 its pinned entry instead; a lease of p1 whose worktree is gone;
    // a lease of vm1, in no pool.
    fx.runner("p2", &[("w", b"/var/lib/microvm-workspaces/p2")]);
    fx.mkdir("/var/lib/microvm-workspaces/.leases", 0, 0o755);
    fx.symlink_as(
        "/home/alice/gone",
        "/var/lib/microvm-workspaces/.leases/p1",
        ALICE,
    );
    fx.repo("/home/alice/wt", ALICE);
    fx.symlink_as(
        "/home/alice/wt",
        "/var/lib/microvm-workspaces/.leases/vm1",
        ALICE,
    );
    let (code, f) = doctor(&fx);
    assert_eq!(code, 0, "no VM fails to start: {f:#?}");
    one(
        &f,
        "pools",
        "warn",
        "pool agents: VM p2 has no live workspace share: none of its shares has the source /var/lib/microvm-workspaces/.live/p2",
    );
    one(
        &f,
        "pools",
        "warn",
        "p1 (pool agents) leased by uid 4242 for /home/alice/gone since ",
    );
    one(
        &f,
        "pools",
        "warn",
        "vm1 leased by uid 4242 for /home/alice/wt since ",
    );
    assert!(of(&f, "pools", "ok").is_empty(), "{f:#?}");
}
