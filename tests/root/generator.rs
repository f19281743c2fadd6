//! Golden-file tests for the generator, zram-generator style: `tests/generator/NN-name/` holds
//! an input tree `root/` (taken as MICROVM_WORKSPACES_ROOT), optional `env` (KEY=VALUE lines),
//! `args` (how many output directories to pass; default 1) and `exit` (expected status;
//! default 0), and the expected output tree `expected/` (absent: nothing may be written).
//! `@PREPARE@` in expected files stands for the prepare helper's path.
//!
//! Every generated tree is also loaded by the real `systemd-analyze verify` next to stub
//! templates shaped like microvm.nix's, which must accept it without a word on stderr.
//!
//! The generator runs as root, as systemd runs it: it believes a config only in root-owned
//! files, so as anyone else it refuses the cases' configs and the trees cannot match. Each
//! test checks for root first, also the two that would pass without it (the control of
//! verify, and the argument check), which need the binary or systemd-analyze: the library's
//! tests, the set without root, reach neither.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{require_root, text_tree, Run, GENERATOR};

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/generator");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    assert!(
        v.len() >= 10,
        "golden cases missing under {}",
        dir.display()
    );
    v
}

fn case(name: &str) -> PathBuf {
    cases().into_iter().find(|c| c.ends_with(name)).unwrap()
}

/// The prepare path the generator must write: fixed at build time, else its sibling.
fn expected_prepare() -> String {
    match option_env!("MICROVM_WORKSPACES_PREPARE") {
        Some(p) => p.to_string(),
        None => Path::new(GENERATOR)
            .with_file_name("microvm-workspaces-prepare")
            .display()
            .to_string(),
    }
}

fn run_case(case: &Path, out: &Path) -> std::process::Output {
    // The case's tree, copied by root (so root-owned): the generator believes only root-owned
    // configs, and a checkout is owned by whoever cloned it, not necessarily root.
    let copy = tempfile::tempdir().unwrap();
    let root = copy.path().join("root");
    if case.join("root").is_dir() {
        let cp = Command::new("cp")
            .arg("-r")
            .arg(case.join("root"))
            .arg(&root)
            .status()
            .unwrap();
        assert!(cp.success(), "copying {}", case.display());
    } else {
        std::fs::create_dir(&root).unwrap();
    }
    let nargs: usize = std::fs::read_to_string(case.join("args"))
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(1);
    let mut cmd = Run::new(GENERATOR)
        .env_clear()
        .env("MICROVM_WORKSPACES_ROOT", &root);
    // Without an override the generator reads ROOT/proc/cmdline, not the host's.
    if let Ok(env) = std::fs::read_to_string(case.join("env")) {
        for line in env.lines().filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once('=').unwrap();
            cmd = cmd.env(k, v);
        }
    }
    let dirs = [out.join("normal"), out.join("early"), out.join("late")];
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    cmd.args(dirs.iter().take(nargs)).output()
}

#[test]
fn golden_files() {
    require_root();
    let prepare = expected_prepare();
    let mut failures = Vec::new();
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let out = tempfile::tempdir().unwrap();
        let res = run_case(&case, out.path());
        let want_exit: i32 = std::fs::read_to_string(case.join("exit"))
            .map(|s| s.trim().parse().unwrap())
            .unwrap_or(0);
        if res.status.code() != Some(want_exit) {
            failures.push(format!(
                "{name}: exit {:?}, want {want_exit}; stderr: {}",
                res.status.code(),
                String::from_utf8_lossy(&res.stderr)
            ));
            continue;
        }
        let expected: BTreeMap<PathBuf, String> = text_tree(&case.join("expected"))
            .into_iter()
            .map(|(p, t)| (p, t.replace("@PREPARE@", &prepare)))
            .collect();
        let got = text_tree(&out.path().join("normal"));
        let others =
            text_tree(&out.path().join("early")).len() + text_tree(&out.path().join("late")).len();
        if got != expected || others != 0 {
            let diff = Command::new("diff")
                .arg("-r")
                .arg(case.join("expected"))
                .arg(out.path().join("normal"))
                .output();
            let diff = diff
                .map(|d| String::from_utf8_lossy(&d.stdout).into_owned())
                .unwrap_or_default();
            failures.push(format!(
                "{name}: output differs (early/late files: {others}):\n{diff}\ngot {got:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn generated_output_is_deterministic_and_excl() {
    require_root();
    // Output is written with O_EXCL: a second run into the same directory must fail rather
    // than silently rewrite (systemd hands generators empty directories).
    let case = case("02-config-with-vms");
    let out = tempfile::tempdir().unwrap();
    assert!(run_case(&case, out.path()).status.success());
    let first = text_tree(&out.path().join("normal"));
    let again = run_case(&case, out.path());
    assert!(
        !again.status.success(),
        "a second run over existing output must fail"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("File exists"));
    assert_eq!(first, text_tree(&out.path().join("normal")));
}

const STUB_MICROVM: &str = "[Unit]
Description=MicroVM '%i'
Requires=microvm-virtiofsd@%i.service microvm-set-booted@%i.service
After=network.target microvm-virtiofsd@%i.service microvm-set-booted@%i.service
ConditionPathExists=/var/lib/microvms/%i/current/bin/microvm-run

[Service]
Type=notify
WorkingDirectory=-/var/lib/microvms/%i
# microvm.nix runs <stateDir>/%i/current/bin/microvm-run; a real binary stands in, since
# verify insists that executables exist.
ExecStart=/bin/true
ExecStop=/bin/true
TimeoutSec=150
Restart=always
RestartSec=5s
User=root
Group=root
NotifyAccess=all
LimitNOFILE=1048576
";

const STUB_VIRTIOFSD: &str = "[Unit]
Description=VirtioFS daemons for MicroVM '%i'
Before=microvm@%i.service
After=local-fs.target microvm-set-booted@%i.service
PartOf=microvm@%i.service
ConditionPathExists=/var/lib/microvms/%i/current/bin/virtiofsd-run

[Service]
WorkingDirectory=-/var/lib/microvms/%i
ExecStart=/bin/true
LimitNOFILE=1048576
NotifyAccess=all
PrivateTmp=yes
Restart=always
RestartSec=5s
Type=notify
KillMode=mixed
";

const STUB_SET_BOOTED: &str = "[Unit]
Description=Save MicroVM '%i' booted configuration
Before=microvm@%i.service
PartOf=microvm@%i.service

[Service]
Type=oneshot
RemainAfterExit=true
ExecStart=/bin/true
";

fn verify(units: &Path, names: &[String]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(names)
        .current_dir(units)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", units.display()))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze (package systemd) must be installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn unit_dir_with(generated: &Path) -> tempfile::TempDir {
    let units = tempfile::tempdir().unwrap();
    std::fs::write(units.path().join("microvm@.service"), STUB_MICROVM).unwrap();
    std::fs::write(
        units.path().join("microvm-virtiofsd@.service"),
        STUB_VIRTIOFSD,
    )
    .unwrap();
    std::fs::write(
        units.path().join("microvm-set-booted@.service"),
        STUB_SET_BOOTED,
    )
    .unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", generated.display()))
        .arg(units.path())
        .status()
        .unwrap();
    assert!(status.success());
    units
}

#[test]
fn systemd_analyze_verify_accepts_every_generated_file() {
    require_root();
    let mut checked = 0;
    for case in cases() {
        let out = tempfile::tempdir().unwrap();
        run_case(&case, out.path());
        let generated = text_tree(&out.path().join("normal"));
        if generated.is_empty() {
            continue;
        }
        // Every instance the output names, plus one that only the templates cover.
        let mut names: Vec<String> = vec![
            "microvm@plain.service".into(),
            "microvm-virtiofsd@plain.service".into(),
        ];
        for p in generated.keys() {
            let unit = p
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".d")
                .to_string();
            if !unit.contains("@.") {
                names.push(unit);
            }
        }
        let units = unit_dir_with(&out.path().join("normal"));
        let (ok, stderr) = verify(units.path(), &names);
        let name = case.file_name().unwrap().to_string_lossy();
        assert!(
            ok && stderr.trim().is_empty(),
            "{name}: systemd-analyze verify {names:?}:\n{stderr}"
        );
        checked += names.len();
    }
    assert!(checked >= 10, "only {checked} units verified");
}

#[test]
fn instance_drop_ins_add_to_the_template_drop_in_rather_than_replace_it() {
    require_root();
    // Point the template drop-in's ExecStartPre= at a missing file: verify complains about it
    // for an instance with its own drop-in only if the template drop-in still applies there.
    let case = case("02-config-with-vms");
    let out = tempfile::tempdir().unwrap();
    assert!(run_case(&case, out.path()).status.success());
    let normal = out.path().join("normal");
    for t in ["microvm@", "microvm-virtiofsd@"] {
        let f = normal.join(format!("{t}.service.d/50-microvm-workspaces.conf"));
        let text = std::fs::read_to_string(&f)
            .unwrap()
            .replace(&expected_prepare(), "/nonexistent/prepare");
        std::fs::write(&f, text).unwrap();
        assert!(
            normal.join(format!("{t}vm1.service.d")).is_dir(),
            "the case must have an instance drop-in"
        );
    }
    let units = unit_dir_with(&normal);
    for unit in ["microvm@vm1.service", "microvm-virtiofsd@vm1.service"] {
        let (_, stderr) = verify(units.path(), &[unit.to_string()]);
        assert!(
            stderr.contains("/nonexistent/prepare"),
            "{unit}: the template's ExecStartPre= is hidden: {stderr:?}"
        );
    }
}

#[test]
fn systemd_analyze_verify_does_read_our_drop_ins() {
    require_root();
    // The control for the test above: a broken drop-in in the same layout must be reported,
    // or a clean verify would prove nothing.
    let gen = tempfile::tempdir().unwrap();
    let d = gen.path().join("microvm@.service.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("50-microvm-workspaces.conf"),
        "[Service]\nExecStartPre=+relative/prepare %i\n",
    )
    .unwrap();
    let units = unit_dir_with(gen.path());
    let (_, stderr) = verify(units.path(), &["microvm@vm1.service".to_string()]);
    assert!(
        stderr.contains("50-microvm-workspaces.conf"),
        "verify ignored the drop-in: {stderr:?}"
    );
}

#[test]
fn options_and_relative_paths_write_nothing() {
    require_root();
    let cwd = tempfile::tempdir().unwrap();
    for (args, code, says) in [
        (
            vec!["--help"],
            0,
            "usage: microvm-workspaces-generator NORMAL_DIR",
        ),
        (vec!["--version"], 0, "microvm-workspaces-generator "),
        (vec!["--frobnicate"], 2, "is not an absolute directory"),
        (vec!["out"], 2, "is not an absolute directory"),
        (
            vec!["/tmp/a", "b", "/tmp/c"],
            2,
            "is not an absolute directory",
        ),
    ] {
        let out = Run::new(GENERATOR)
            .env_clear()
            .env("MICROVM_WORKSPACES_ROOT", cwd.path())
            .cwd_real(cwd.path())
            .args(&args)
            .output();
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(says), "{args:?}: {text}");
        assert_eq!(
            std::fs::read_dir(cwd.path()).unwrap().count(),
            0,
            "{args:?} wrote into the working directory"
        );
    }
}
