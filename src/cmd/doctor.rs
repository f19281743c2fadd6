//! `microvm-link doctor`: checks the host and says, for each finding, what to do about it
//! (docs/reference/cli.md#doctor). A finding is `fail` only when it will make a VM fail to start
//! (or see the wrong thing); the exit status is non-zero exactly then.
//!
//! Everything is read as the caller, through the tree (so `--root` works); what cannot be
//! read is said, not guessed. The few things only a running system can answer (`systemctl
//! show`, `virtiofsd --version`, `PATH`) go through [`Host`], so the logic is tested against
//! re-rooted trees with a scripted host. Re-rooted, systemd is not asked: a finding says so.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::engine::entry::{RepoNow, Workspace};
use crate::engine::links::read_record;
use crate::fs::chase::{self, is_symlink, Tree, Trust, Walk};
use crate::fs::paths::{self, show, Root};
use crate::fs::seal;
use crate::host::caller::{self, Caller};
use crate::model::config::{Config, Proto};
use crate::model::names::{SshDest, VmName};
use crate::model::runner::{self, Share};
use crate::{cmd::pool, cmd::status, host::units};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    /// Worth knowing or fixing; no VM fails because of it (or it could not be checked).
    Warn,
    /// Will make a VM fail to start, or show it something other than intended.
    Fail,
}

/// One thing doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Which check: `config`, `generator`, `drop-ins`, `virtiofsd`, `symlinked-source`,
    /// `private-tmp`, `runner`, `sudo`, `link-records`, `pools`, `stale`, `vsock`, `idmap`,
    /// `guest`.
    pub check: &'static str,
    pub severity: Severity,
    pub what: String,
    /// What to do about it (`None` when there is nothing to do).
    pub fix: Option<String>,
}

fn ok(check: &'static str, what: String) -> Finding {
    Finding {
        check,
        severity: Severity::Ok,
        what,
        fix: None,
    }
}

fn warn(check: &'static str, what: String, fix: impl Into<String>) -> Finding {
    Finding {
        check,
        severity: Severity::Warn,
        what,
        fix: Some(fix.into()).filter(|f: &String| !f.is_empty()),
    }
}

fn fail(check: &'static str, what: String, fix: impl Into<String>) -> Finding {
    Finding {
        severity: Severity::Fail,
        ..warn(check, what, fix)
    }
}

/// What only the running system can answer.
pub trait Host {
    /// `ExecStartPre` of `unit` as `systemctl show` reports it; an error when systemd
    /// cannot be asked.
    fn exec_start_pre(&self, unit: &str) -> Result<String>;
    /// The output of `<exe> --version` (`exe` a real path).
    fn version_output(&self, exe: &Path) -> Result<String>;
    /// `virtiofsd` found on `PATH` (a real path).
    fn virtiofsd_on_path(&self) -> Option<PathBuf>;
    /// The running microvm-link (what sudo is asked to run), a real path.
    fn own_exe(&self) -> Option<PathBuf>;
    /// Where `destination` leads as the caller's ssh resolves it (`ssh -G`, run as them).
    fn ssh_target(&self, destination: &SshDest, caller: Caller)
        -> Result<crate::host::ssh::Target>;
    /// From here on, look as `caller` (root acting for someone gives up root).
    fn drop_to(&self, caller: Caller) -> Result<()>;
}

/// The real system: `systemctl`, child processes, `PATH`.
pub struct System;

impl Host for System {
    fn exec_start_pre(&self, unit: &str) -> Result<String> {
        let out = std::process::Command::new(crate::host::systemd::systemctl())
            .args(["show", "-p", "ExecStartPre", "--value", unit])
            .stderr(std::process::Stdio::piped())
            .output()
            .with_context(|| format!("cannot run {}", show(&crate::host::systemd::systemctl())))?;
        if !out.status.success() {
            anyhow::bail!(
                "systemctl show {unit}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn version_output(&self, exe: &Path) -> Result<String> {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let mut cmd = Command::new(exe);
        // Root for someone else (sudo) runs nothing as root that it did not have to: the
        // version is asked as the caller.
        if let Some(ids) = caller::sudo_user() {
            cmd.uid(ids.uid).gid(ids.gid);
        }
        let mut child = cmd
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {}", show(exe)))?;
        // A binary that does not know --version must not hang doctor.
        let t0 = std::time::Instant::now();
        while child.try_wait()?.is_none() {
            if t0.elapsed() > std::time::Duration::from_secs(5) {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("{} --version did not finish in 5 s", show(exe));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn virtiofsd_on_path(&self) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join("virtiofsd"))
            .find(|p| p.is_file())
    }

    fn own_exe(&self) -> Option<PathBuf> {
        std::env::current_exe().ok()
    }

    fn ssh_target(
        &self,
        destination: &SshDest,
        caller: Caller,
    ) -> Result<crate::host::ssh::Target> {
        crate::host::ssh::resolve(destination, crate::host::ssh::as_user(caller).as_ref())
    }

    fn drop_to(&self, caller: Caller) -> Result<()> {
        caller::drop_to(caller)
    }
}

/// Where systemd looks for system generators (systemd.generator(7)); NixOS links them into
/// `/etc/systemd/system-generators`.
pub const GENERATOR_DIRS: [&str; 5] = [
    "/etc/systemd/system-generators",
    "/run/systemd/system-generators",
    "/usr/local/lib/systemd/system-generators",
    "/usr/lib/systemd/system-generators",
    "/lib/systemd/system-generators",
];
/// Where the generator's output lands (the "normal" directory).
pub const GENERATOR_OUT: &str = "/run/systemd/generator";
pub const GENERATOR_NAME: &str = "microvm-workspaces-generator";
const PREPARE_NAME: &str = "microvm-workspaces-prepare";

/// `doctor`, printed (the findings, or with `json` `{"ok": bool, "findings": [...]}`);
/// whether a finding failed (the exit status is 1 then).
pub fn print(root: &Root, caller: Caller, host: &dyn Host, json: bool) -> Result<bool> {
    let found = run(root, caller, host)?;
    let failed = failed(&found);
    match json {
        true => println!(
            "{:#}",
            serde_json::json!({ "ok": !failed, "findings": found })
        ),
        false => print!("{}", render(&found)),
    }
    Ok(failed)
}

/// Runs every check. `caller`: whom doctor speaks for (sudo group membership).
pub fn run(root: &Root, caller: Caller, host: &dyn Host) -> Result<Vec<Finding>> {
    let tree = Tree::open(root)?;
    let mut out = Vec::new();
    // The sudoers files are root's to read; everything after looks at paths a caller can
    // influence (symlinked sources, records, repos), so it looks with the caller's rights.
    let mut sudo = Vec::new();
    check_sudo(root, &tree, caller, host, &mut sudo);
    // Trying an idmapped mount takes root; the workspace dir is root's, not the caller's.
    let mut idmap = Vec::new();
    check_idmap_support(&tree, caller, &mut idmap);
    host.drop_to(caller)?;
    let cfg = check_config(&tree, &mut out);
    let vms = runner::known_vms(&tree, &cfg);
    check_generator(&tree, &cfg, &vms, &mut out);
    check_dropins(root, &vms, &tree, &cfg, host, &mut out);
    let shares = check_runners(&tree, &cfg, &vms, &mut out);
    let versions = check_virtiofsd(root, &tree, &cfg, &shares, host, &mut out);
    check_symlinked_sources(&tree, &cfg, &shares, &versions, &mut out);
    check_private_tmp(&cfg, &shares, &mut out);
    out.append(&mut sudo);
    check_link_records(&tree, &cfg, &mut out);
    check_sealed(&tree, &cfg, &mut out);
    check_pools(&tree, &cfg, &mut out);
    check_stale(&tree, &cfg, root, &mut out);
    check_vsock(&cfg, caller, host, &mut out);
    out.append(&mut idmap);
    check_guests(&cfg, &mut out);
    Ok(out)
}

/// Can the workspace dir's file system make idmapped mounts? (A detached clone is idmapped
/// and dropped; nothing is attached.) A repo on a file system that cannot is refused at link
/// time, naming it.
fn check_idmap_support(tree: &Tree, caller: Caller, out: &mut Vec<Finding>) {
    let Ok(cfg) = Config::load(tree) else { return };
    if !cfg.vms.values().any(|v| v.idmap) && !cfg.vms.is_empty() {
        return;
    }
    if !nix::unistd::Uid::effective().is_root() {
        out.push(warn(
            "idmap",
            "could not try an idmapped mount (that takes root)".into(),
            "run microvm-link doctor through sudo to check that the workspace dir's file system supports idmapped mounts",
        ));
        return;
    }
    let dir = match tree.walk(&cfg.workspace_dir, crate::fs::chase::Trust::RootOwned) {
        Ok(crate::fs::chase::Walk::Found(n)) => n,
        _ => return,
    };
    match crate::fs::idmap::try_idmap(&dir) {
        Ok(()) => out.push(ok(
            "idmap",
            format!(
                "{} can carry idmapped mounts ({})",
                show(&dir.path),
                crate::fs::idmap::fs_type(&dir)
            ),
        )),
        Err(e) => out.push(fail(
            "idmap",
            format!(
                "{} cannot carry idmapped mounts: {}",
                show(&dir.path),
                crate::host::logging::one_line(&e)
            ),
            IDMAP_FIX,
        )),
    }
    // The linked repos (the caller's own, through sudo), whose file systems the link mounts
    // clone: a clone is idmapped and dropped, never attached.
    let Ok(Some(ws)) = Workspace::find(tree, &cfg) else {
        return;
    };
    let Ok(Some(links)) = ws.links() else { return };
    let (mut fine, mut tried) = (0, 0);
    for name in crate::fs::chase::list_dir(&links).unwrap_or_default() {
        let Ok(Some(rec)) = crate::engine::links::read_record(Some(&links), &name) else {
            continue;
        };
        let mapped = ws
            .guest_of(&name)
            .is_ok_and(|g| g.ids != crate::fs::idmap::Guest::Plain);
        if !mapped || !caller.may_use(rec.owner) {
            continue;
        }
        let crate::engine::entry::RepoNow::Found(repo) = ws.repo_now(&rec) else {
            continue;
        };
        tried += 1;
        match crate::fs::idmap::try_idmap(&repo) {
            Ok(()) => fine += 1,
            Err(e) => out.push(fail(
                "idmap",
                format!(
                    "repo {} (linked at {}) cannot carry idmapped mounts: {}; its next mount will fail",
                    show(&repo.path),
                    show(&ws.path().join(&name)),
                    crate::host::logging::one_line(&e)
                ),
                IDMAP_FIX,
            )),
        }
    }
    if tried > 0 && fine == tried {
        out.push(ok(
            "idmap",
            format!("the file systems of {fine} linked repos can carry idmapped mounts"),
        ));
    }
}

const IDMAP_FIX: &str = "use Linux 5.12+ and ext4, xfs, btrfs, tmpfs (6.3+) or ZFS 2.2+ for repos and the workspace dir, or set idmap = false for the VMs (their guests' root is then root on linked repos)";

/// How each configured VM's guest sees linked repos; the unsafe choices say what they cost.
fn check_guests(cfg: &Config, out: &mut Vec<Finding>) {
    for (vm, v) in &cfg.vms {
        let seen = v.seen();
        let view = crate::cmd::status::GuestView::of(seen);
        let warnings = view.warnings(vm);
        if warnings.is_empty() {
            out.push(ok(
                "guest",
                format!(
                    "VM {vm}: {}; git {}",
                    seen.ids,
                    crate::engine::gitview::words(seen.git)
                ),
            ));
        }
        for w in warnings {
            out.push(warn(
                "guest",
                format!("VM {w}"),
                "unless you trust everything that runs in the guest, set idmap = true and git = \"private\" (the defaults)",
            ));
        }
    }
}

/// Does any finding mean a VM will fail?
pub fn failed(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Fail)
}

/// The findings for people: one line each, the fix indented below.
pub fn render(findings: &[Finding]) -> String {
    let width = findings.iter().map(|f| f.check.len()).max().unwrap_or(0);
    let mut s = String::new();
    for f in findings {
        let sev = match f.severity {
            Severity::Ok => "ok",
            Severity::Warn => "WARN",
            Severity::Fail => "FAIL",
        };
        s.push_str(&format!("{sev:<4}  {:<width$}  {}\n", f.check, f.what));
        if let Some(fix) = &f.fix {
            s.push_str(&format!("{:<w$}fix: {fix}\n", "", w = width + 8));
        }
    }
    let fails = findings
        .iter()
        .filter(|f| f.severity == Severity::Fail)
        .count();
    let warns = findings
        .iter()
        .filter(|f| f.severity == Severity::Warn)
        .count();
    let warnings = plural(warns, "warning");
    s.push_str(&match fails {
        0 => format!("nothing found that will make a VM fail ({warnings})\n"),
        n => format!(
            "{} will make a VM fail ({warnings})\n",
            plural(n, "problem")
        ),
    });
    s
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The config file: readable, valid, enabled. A broken one fails every VM start in prepare.
fn check_config(tree: &Tree, out: &mut Vec<Finding>) -> Config {
    let path = Path::new(paths::CONFIG_FILE);
    let text = chase::read_trusted(tree, None, path, 16 << 20);
    let cfg = match text {
        Ok(None) => {
            out.push(ok(
                "config",
                format!(
                    "no {}: defaults; 9p shares and companions are unknown",
                    show(path)
                ),
            ));
            return Config::default();
        }
        Ok(Some(t)) => Config::parse(&t),
        Err(e) => Err(e),
    };
    match cfg {
        Ok(cfg) => {
            out.push(ok(
                "config",
                format!("{} is valid ({} VMs)", show(path), cfg.vms.len()),
            ));
            if !cfg.enable {
                out.push(warn(
                    "config",
                    format!("{} says \"enable\": false: the generator adds no drop-ins and no source is made at start", show(path)),
                    "services.microvm-workspaces.enable = true (or \"enable\": true)",
                ));
            }
            cfg
        }
        Err(e) => {
            out.push(fail(
                "config",
                format!("{}: {}", show(path), crate::host::logging::one_line(&e)),
                "every VM start fails in prepare until it is fixed: correct the file (docs/reference/config.md) or rebuild it (nixos-rebuild switch); it must be root's",
            ));
            Config::default()
        }
    }
}

/// Is a file (or a symlink to one) at `path`?
fn exists(tree: &Tree, path: &Path) -> bool {
    matches!(tree.walk(path, Trust::All), Ok(Walk::Found(_)))
}

/// The generator installed where systemd looks, and its output present (it ran).
fn check_generator(tree: &Tree, cfg: &Config, vms: &[VmName], out: &mut Vec<Finding>) {
    let installed: Vec<PathBuf> = GENERATOR_DIRS
        .iter()
        .map(|d| Path::new(d).join(GENERATOR_NAME))
        .filter(|p| exists(tree, p))
        .collect();
    match installed.first() {
        Some(p) => out.push(ok("generator", format!("installed: {}", show(p)))),
        None => {
            // Without a known VM nothing fails yet.
            let sev = if vms.is_empty() { warn } else { fail };
            out.push(sev(
                "generator",
                format!(
                    "{GENERATOR_NAME} is in none of {}: no VM start runs prepare, and a missing source stops the VM",
                    GENERATOR_DIRS.join(", ")
                ),
                "NixOS: services.microvm-workspaces.enable = true; elsewhere: install it into /etc/systemd/system-generators, then systemctl daemon-reload",
            ));
            return;
        }
    }
    if !cfg.enable {
        return;
    }
    let missing: Vec<PathBuf> = units::TEMPLATES
        .iter()
        .map(|t| {
            Path::new(GENERATOR_OUT)
                .join(format!("{t}.service.d"))
                .join(units::DROPIN_NAME)
        })
        .filter(|p| !exists(tree, p))
        .collect();
    if missing.is_empty() {
        out.push(ok(
            "generator",
            format!("its drop-ins are in {GENERATOR_OUT}"),
        ));
    } else {
        let list: Vec<String> = missing.iter().map(|p| show(p)).collect();
        out.push(fail(
            "generator",
            format!("missing: {} (the generator has not run since it was installed, or it failed)", list.join(", ")),
            "systemctl daemon-reload; if still missing: journalctl -b -g microvm-workspaces (the generator logs to the kernel log)",
        ));
    }
}

/// For every known VM, what systemd will run before `microvm@<vm>` and
/// `microvm-virtiofsd@<vm>`: prepare must be among it.
fn check_dropins(
    root: &Root,
    vms: &[VmName],
    tree: &Tree,
    cfg: &Config,
    host: &dyn Host,
    out: &mut Vec<Finding>,
) {
    if root.is_rerooted() {
        out.push(warn(
            "drop-ins",
            format!(
                "not checked: re-rooted at {}, and systemd runs the host, not that tree",
                show(root.dir())
            ),
            "",
        ));
        return;
    }
    for vm in vms {
        // Without virtiofs shares microvm-virtiofsd@ does not start (its condition fails).
        let virtiofs = runner::shares(tree, cfg, vm)
            .map(|s| s.iter().any(|s| s.proto == Proto::Virtiofs))
            .unwrap_or(true);
        let mut missing = Vec::new();
        for t in units::TEMPLATES {
            if t == "microvm-virtiofsd@" && !virtiofs {
                continue;
            }
            let unit = units::unit_name(t, vm);
            match host.exec_start_pre(&unit) {
                Ok(pre) if pre.contains(PREPARE_NAME) => {}
                Ok(_) => missing.push(unit),
                Err(e) => {
                    out.push(warn(
                        "drop-ins",
                        format!(
                            "could not ask systemd about {unit}: {}",
                            crate::host::logging::one_line(&e)
                        ),
                        "",
                    ));
                    return;
                }
            }
        }
        if missing.is_empty() {
            out.push(ok(
                "drop-ins",
                format!("VM {vm}: prepare runs before it starts (ExecStartPre)"),
            ));
        } else {
            out.push(fail(
                "drop-ins",
                format!(
                    "VM {vm}: ExecStartPre of {} does not run {PREPARE_NAME}: a missing source will stop the VM",
                    missing.join(" and ")
                ),
                format!(
                    "systemctl daemon-reload; then systemctl cat {}: a drop-in of its own named {} replaces ours",
                    missing[0],
                    units::DROPIN_NAME
                ),
            ));
        }
    }
}

/// Every runner's shares; a runner that is not root's fails every start of its VM.
fn check_runners(
    tree: &Tree,
    cfg: &Config,
    vms: &[VmName],
    out: &mut Vec<Finding>,
) -> Vec<(VmName, Vec<Share>)> {
    let mut all = Vec::new();
    let mut bad = 0;
    for vm in vms {
        match runner::shares(tree, cfg, vm) {
            Ok(s) => all.push((vm.clone(), s)),
            Err(e) => {
                bad += 1;
                out.push(fail(
                    "runner",
                    format!("VM {vm}: {}", crate::host::logging::one_line(&e)),
                    format!(
                        "prepare refuses it, so every start of {vm} fails: point {} into the Nix store (root's), e.g. by rebuilding the VM",
                        show(&cfg.state_dir.join(vm).join("current"))
                    ),
                ));
            }
        }
    }
    if bad == 0 {
        out.push(ok(
            "runner",
            format!("{} VMs known; every runner read is root's", vms.len()),
        ));
    }
    all
}

/// A virtiofsd version as (major, minor, patch) from text like `virtiofsd 1.14.0` or a
/// store path `...-virtiofsd-1.14.0/bin/virtiofsd`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    text.split(|c: char| c.is_whitespace() || c == '-' || c == '/' || c == 'v')
        .find_map(|w| {
            let mut it = w.split('.').map(|n| n.parse::<u32>().ok());
            let major = it.next()??;
            let minor = it.next()??;
            let patch = it.next().flatten().unwrap_or(0);
            Some((major, minor, patch))
        })
}

/// Store paths named in `text` (`/nix/store/<hash>-<name>/...`), in order, without repeats.
pub fn store_paths(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, _) in text.match_indices("/nix/store/") {
        let p: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "+._?=/-".contains(*c))
            .collect();
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The first absolute path to a `virtiofsd` named in `text` (a script or a configuration).
pub fn virtiofsd_named(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || "\"'=;()`".contains(c))
        .find(|w| w.starts_with('/') && w.ends_with("/virtiofsd"))
        .map(str::to_string)
}

/// The virtiofsd a VM's runner uses: named in `bin/virtiofsd-run`, or in a store file it
/// names (microvm.nix's supervisord configuration).
fn runner_virtiofsd(tree: &Tree, cfg: &Config, vm: &str) -> Option<PathBuf> {
    // `<stateDir>/<vm>` and `current` are microvm.nix's user's (as in `runner`): what
    // `current` leads to must be root's, and so must everything read below it.
    let current = cfg.state_dir.join(vm).join("current");
    let runner = match tree.walk(&current, Trust::All) {
        Ok(Walk::Found(n)) if n.is_dir() => n,
        _ => return None,
    };
    let read = |start: Option<&chase::Node>, p: &Path| {
        chase::read_trusted(tree, start, p, 1 << 20)
            .ok()
            .flatten()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
    };
    let text = read(Some(&runner), Path::new("bin/virtiofsd-run"))?;
    if let Some(p) = virtiofsd_named(&text) {
        return Some(PathBuf::from(p));
    }
    store_paths(&text)
        .iter()
        .filter_map(|p| read(None, Path::new(p)))
        .find_map(|t| virtiofsd_named(&t))
        .map(PathBuf::from)
}

/// The version of the virtiofsd at inside path `exe`: `--version` if it runs (only a
/// root-owned file is run), else its store path's name.
fn version_of(root: &Root, tree: &Tree, exe: &Path, host: &dyn Host) -> Option<(u32, u32, u32)> {
    let trusted = matches!(tree.walk(exe, Trust::RootOwned), Ok(Walk::Found(n)) if !n.is_dir());
    trusted
        .then(|| host.version_output(&root.real(exe)).ok())
        .flatten()
        .and_then(|t| parse_version(&t))
        .or_else(|| {
            let name = exe.to_string_lossy();
            let at = name.find("-virtiofsd-")?;
            parse_version(&name[at + "-virtiofsd-".len()..])
        })
}

type Version = (u32, u32, u32);

/// The virtiofsd each VM with virtiofs shares will run, and its version.
fn check_virtiofsd(
    root: &Root,
    tree: &Tree,
    cfg: &Config,
    shares: &[(VmName, Vec<Share>)],
    host: &dyn Host,
    out: &mut Vec<Finding>,
) -> Vec<(VmName, Option<Version>)> {
    let users: Vec<&VmName> = shares
        .iter()
        .filter(|(_, s)| s.iter().any(|s| s.proto == Proto::Virtiofs))
        .map(|(vm, _)| vm)
        .collect();
    if users.is_empty() {
        out.push(ok("virtiofsd", "no VM has a virtiofs share".into()));
        return Vec::new();
    }
    // Not in a runner: PATH (not when re-rooted: it is the host's), then Debian's place.
    let on_path = (!root.is_rerooted())
        .then(|| host.virtiofsd_on_path())
        .flatten()
        .or_else(|| {
            let debian = PathBuf::from("/usr/libexec/virtiofsd");
            exists(tree, &debian).then_some(debian)
        });
    // (exe, version, VMs)
    let mut seen: Vec<(PathBuf, Option<Version>, Vec<&str>)> = Vec::new();
    let mut per_vm = Vec::new();
    for vm in users {
        let exe = runner_virtiofsd(tree, cfg, vm).or_else(|| on_path.clone());
        let Some(exe) = exe else {
            per_vm.push((vm.clone(), None));
            continue;
        };
        let v = match seen.iter_mut().find(|(e, _, _)| *e == exe) {
            Some((_, v, vms)) => {
                vms.push(vm.as_str());
                *v
            }
            None => {
                let v = version_of(root, tree, &exe, host);
                seen.push((exe, v, vec![vm.as_str()]));
                v
            }
        };
        per_vm.push((vm.clone(), v));
    }
    for (exe, v, vms) in &seen {
        let what = match v {
            Some((a, b, c)) => format!("virtiofsd {a}.{b}.{c}"),
            None => "virtiofsd of unknown version".into(),
        };
        out.push(ok(
            "virtiofsd",
            format!("{what} at {} (VMs {})", show(exe), vms.join(", ")),
        ));
    }
    let unfound: Vec<&str> = per_vm
        .iter()
        .filter(|(vm, _)| !seen.iter().any(|(_, _, vms)| vms.contains(&vm.as_str())))
        .map(|(vm, _)| vm.as_str())
        .collect();
    if !unfound.is_empty() {
        out.push(warn(
            "virtiofsd",
            format!(
                "could not find the virtiofsd of VMs {} (not in their runner's bin/virtiofsd-run{}, nor /usr/libexec/virtiofsd)",
                unfound.join(", "),
                if root.is_rerooted() { "" } else { ", on PATH" }
            ),
            "symlinked sources below are judged as for virtiofsd 1.14 and later",
        ));
    }
    per_vm
}

/// virtiofsd 1.14 refuses a source whose last component is a symlink. A workspace entry
/// that is one is a shell-era link prepare migrates; anything else fails the start.
fn check_symlinked_sources(
    tree: &Tree,
    cfg: &Config,
    shares: &[(VmName, Vec<Share>)],
    versions: &[(VmName, Option<Version>)],
    out: &mut Vec<Finding>,
) {
    let mut found = false;
    for (vm, list) in shares {
        let version = versions.iter().find(|(v, _)| v == vm).and_then(|(_, v)| *v);
        for s in list.iter().filter(|s| s.proto == Proto::Virtiofs) {
            if s.path.parent() == Some(cfg.workspace_dir.as_path()) {
                continue; // a legacy symlink entry: prepare makes it a record and a mount
            }
            let (Some(parent), Some(name)) = (s.path.parent(), s.path.file_name()) else {
                continue;
            };
            let Ok(Walk::Found(dir)) = tree.walk(parent, Trust::All) else {
                continue;
            };
            let Ok(node) = dir.child(name) else { continue };
            if !is_symlink(&node.st) {
                continue;
            }
            found = true;
            let target = nix::fcntl::readlinkat(&node.fd, "")
                .map(|t| show(Path::new(&t)))
                .unwrap_or_else(|_| "?".into());
            let what = format!(
                "VM {vm}, share {:?}: source {} is a symbolic link (to {target})",
                s.tag,
                show(&s.path)
            );
            let fix = format!("point the share at {target} itself, or link it with microvm-link (a bind mount) instead of a symlink");
            out.push(match version {
                Some(v) if v < (1, 14, 0) => warn(
                    "symlinked-source",
                    format!("{what}; this virtiofsd ({}.{}) follows it, 1.14 and later refuse it", v.0, v.1),
                    fix,
                ),
                _ => fail(
                    "symlinked-source",
                    format!("{what}, which virtiofsd 1.14 and later refuse (BindMountSharedDir: Invalid argument)"),
                    fix,
                ),
            });
        }
    }
    if !found {
        out.push(ok(
            "symlinked-source",
            "no virtiofs source is a symbolic link".into(),
        ));
    }
}

/// `microvm-virtiofsd@` has `PrivateTmp=`: virtiofsd sees an empty /tmp and /var/tmp of its
/// own, so a source there does not exist for it.
fn check_private_tmp(cfg: &Config, shares: &[(VmName, Vec<Share>)], out: &mut Vec<Finding>) {
    let mut found = false;
    for (vm, list) in shares {
        for s in list.iter().filter(|s| s.proto == Proto::Virtiofs) {
            let Some(tmp) = ["/tmp", "/var/tmp"]
                .into_iter()
                .find(|t| s.path.starts_with(t))
            else {
                continue;
            };
            found = true;
            out.push(fail(
                "private-tmp",
                format!(
                    "VM {vm}, share {:?}: source {} is under {tmp}, which {}'s PrivateTmp= replaces with an empty directory",
                    s.tag,
                    show(&s.path),
                    units::unit_name("microvm-virtiofsd@", vm)
                ),
                format!("move the source out of /tmp and /var/tmp (e.g. below {})", show(&cfg.workspace_dir)),
            ));
        }
    }
    if !found {
        out.push(ok(
            "private-tmp",
            "no virtiofs source is under /tmp or /var/tmp".into(),
        ));
    }
}

/// A sudo rule for microvm-link: `/etc/sudoers` and `/etc/sudoers.d/*` (NixOS writes its
/// rules, sudo-rs too, into `/etc/sudoers`) searched for a line naming microvm-link. Those
/// files are root's and mode 0440: a normal user cannot read them, and is told so.
fn check_sudo(root: &Root, tree: &Tree, caller: Caller, host: &dyn Host, out: &mut Vec<Finding>) {
    let mut files = vec![PathBuf::from("/etc/sudoers")];
    let mut unreadable = Vec::new();
    let dropin_dir = Path::new("/etc/sudoers.d");
    if let Ok(Walk::Found(d)) = tree.walk(dropin_dir, Trust::RootOwned) {
        match chase::list_dir(&d) {
            Ok(names) => {
                let mut names: Vec<_> = names
                    .into_iter()
                    .filter(|n| {
                        // sudo skips names with a `.` or ending in `~` (sudoers(5)).
                        let b = n.as_encoded_bytes();
                        !b.contains(&b'.') && !b.ends_with(b"~")
                    })
                    .collect();
                names.sort();
                files.extend(names.iter().map(|n| d.path.join(n)));
            }
            Err(e) => unreadable.push(format!(
                "{} ({})",
                show(dropin_dir),
                crate::host::logging::one_line(&e)
            )),
        }
    }
    let mut rules: Vec<(PathBuf, String, String)> = Vec::new(); // file, who, command
    for f in &files {
        match chase::read_trusted(tree, None, f, 1 << 20) {
            Ok(Some(t)) => rules.extend(
                sudo_rules(&String::from_utf8_lossy(&t))
                    .into_iter()
                    .map(|(who, cmd)| (f.clone(), who, cmd)),
            ),
            Ok(None) => {}
            Err(e) => unreadable.push(format!(
                "{} ({})",
                show(f),
                crate::host::logging::one_line(&e)
            )),
        }
    }
    let checked = "checked /etc/sudoers and /etc/sudoers.d/* for a rule naming microvm-link";
    if rules.is_empty() {
        if unreadable.is_empty() {
            out.push(warn(
                "sudo",
                format!("no sudo rule names microvm-link ({checked}): only root can link"),
                "NixOS: services.microvm-workspaces.linkGroup = \"wheel\"; elsewhere: %GROUP ALL=(root) NOPASSWD: /path/to/microvm-link in /etc/sudoers.d/microvm-link",
            ));
        } else {
            out.push(warn(
                "sudo",
                format!("could not read {} ({checked})", unreadable.join(", ")),
                "run sudo microvm-link doctor to check the sudo rule",
            ));
        }
        return;
    }
    // What sudo is asked to run: microvm-link re-executes its own executable by full path.
    let own = (!root.is_rerooted()).then(|| host.own_exe()).flatten();
    for (file, who, cmd) in rules {
        let mut what = format!("{}: {who} may run {cmd}", show(&file));
        let mut problem = None;
        if let Some(own) = &own {
            let cmd_real = std::fs::canonicalize(&cmd).ok();
            let own_real = std::fs::canonicalize(own).ok();
            if cmd_real.is_none() || cmd_real != own_real {
                problem = Some(format!(
                    "; but this microvm-link is {}, which sudo will not match with it",
                    show(own)
                ));
            }
        }
        if let (Some(group), None, false) = (who.strip_prefix('%'), &problem, root.is_rerooted()) {
            let outside = match caller {
                Caller::Root => false,
                Caller::User(uid) => !caller::Ids::of(uid).in_group(group),
            };
            if outside {
                what.push_str(&format!(
                    "; {caller} is not in group {group} (or the user database does not say so)"
                ));
                out.push(warn("sudo", what, format!("usermod -aG {group} <user>, then log in again (NixOS: users.users.<user>.extraGroups)")));
                continue;
            }
        }
        match problem {
            Some(p) => {
                what.push_str(&p);
                out.push(warn("sudo", what, "rebuild (NixOS) or point the rule at the microvm-link on PATH by its full path"));
            }
            None => out.push(ok("sudo", what)),
        }
    }
    if !unreadable.is_empty() {
        out.push(warn(
            "sudo",
            format!("could not read {}", unreadable.join(", ")),
            "run sudo microvm-link doctor to read every sudoers file",
        ));
    }
}

/// `(who, command)` of every sudoers line naming microvm-link (comments and `Defaults`
/// skipped): `%wheel ALL=(root) NOPASSWD: /nix/store/...-microvm-workspaces/bin/microvm-link`.
pub fn sudo_rules(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with("Defaults") || !line.contains("microvm-link") {
            continue;
        }
        let who = line.split_whitespace().next().unwrap_or("").to_string();
        let cmd = line
            .split(|c: char| c.is_whitespace() || c == ',' || c == '"')
            .find(|w| w.starts_with('/') && w.ends_with("/microvm-link"));
        if let Some(cmd) = cmd {
            out.push((who, cmd.to_string()));
        }
    }
    out
}

/// Are the entries' placeholders sealed (docs/security.md#sealed)? A file system without the
/// flag leaves them writable by a guest's root; one made before sealing is sealed at the next
/// start of a VM that shares it. (As the caller, who cannot read the `trusted.` mark: a root
/// directory of the entry's name that nobody may write to and nothing is mounted on.)
fn check_sealed(tree: &Tree, cfg: &Config, out: &mut Vec<Finding>) {
    let Ok(Some(ws)) = Workspace::find(tree, cfg) else {
        return;
    };
    if seal::state(&ws.node).ok() == Some(seal::State::Unsupported) {
        out.push(warn(
            "sealed",
            format!("the file system of {} has no immutable flag: a guest's root can write into placeholders and live roots", show(ws.path())),
            "keep the workspace dir on ext4, xfs, btrfs or tmpfs (Linux 6.0+)",
        ));
        return;
    }
    let mut open = Vec::new();
    let mut n = 0;
    for name in chase::list_dir(&ws.node).unwrap_or_default() {
        let Ok(e) = ws.node.child(&name) else {
            continue;
        };
        let quiet = e.is_dir() && e.uid() == 0 && e.st.st_mode & 0o222 == 0;
        if name.as_encoded_bytes().starts_with(b".")
            || !quiet
            || chase::is_mount_root(std::os::fd::AsFd::as_fd(&e.fd)).unwrap_or(true)
        {
            continue;
        }
        n += 1;
        if seal::state(&e).ok() == Some(seal::State::Open) {
            open.push(show(&e.path));
        }
    }
    match open.is_empty() {
        true if n == 0 => {}
        true => out.push(ok("sealed", format!("{n} unlinked entries sealed"))),
        false => out.push(warn(
            "sealed",
            format!(
                "not sealed (made before sealing, or a run was killed): {}",
                open.join(", ")
            ),
            "the next start of a VM that shares them seals them; or restart those VMs now",
        )),
    }
}

/// Link records whose repo is gone: the placeholder serves instead of the repo.
fn check_link_records(tree: &Tree, cfg: &Config, out: &mut Vec<Finding>) {
    let ws = match Workspace::find(tree, cfg) {
        Ok(Some(ws)) => ws,
        Ok(None) => {
            out.push(ok(
                "link-records",
                format!(
                    "no workspace dir {} yet: no links",
                    show(&cfg.workspace_dir)
                ),
            ));
            return;
        }
        Err(e) => {
            out.push(fail(
                "link-records",
                crate::host::logging::one_line(&e),
                "the workspace dir, .links and .displaced must be root's and not group- or other-writable; prepare and microvm-link refuse otherwise",
            ));
            return;
        }
    };
    let links = match ws.links() {
        Ok(Some(l)) => l,
        Ok(None) => {
            out.push(ok("link-records", "no link records".into()));
            return;
        }
        Err(e) => {
            out.push(fail(
                "link-records",
                crate::host::logging::one_line(&e),
                "make .links a root-owned 0755 directory",
            ));
            return;
        }
    };
    let mut names = chase::list_dir(&links).unwrap_or_default();
    names.sort();
    let mut n = 0;
    let mut gone = 0;
    for name in names
        .iter()
        .filter(|n| !n.as_encoded_bytes().starts_with(b"."))
    {
        let Ok(Some(rec)) = read_record(Some(&links), name) else {
            continue;
        };
        n += 1;
        let at = ws.path().join(name);
        let entry = paths::show_bytes(name);
        match ws.repo_now(&rec) {
            RepoNow::Found(_) => {}
            gone_now => {
                gone += 1;
                let why = match gone_now {
                    RepoNow::Unusable(why) => format!("the repo cannot be reached safely ({why})"),
                    _ => "the repo is gone".to_string(),
                };
                out.push(warn(
                    "link-records",
                    format!("{} -> {}: {why}; its VMs see the empty placeholder", show(&at), show(&rec.target)),
                    match VmName::try_from(entry.as_str()).ok().and_then(|vm| cfg.pool_of(&vm)) {
                        Some(pool) => format!("end its lease (microvm-link release {entry}), or lease it again from where the worktree is now (microvm-link --pool {pool}); by hand only root links a pool VM"),
                        None => format!("link the repo again from where it is now (microvm-link {entry} --repo PATH), or unlink it (microvm-link unlink {entry})"),
                    },
                ));
            }
        }
    }
    if gone == 0 {
        out.push(ok(
            "link-records",
            format!("{n} link records, every repo present"),
        ));
    }
}

/// Pools: each VM runs with the live share of its own entry (the config says so when read; a
/// runner can differ), and leases whose worktree is gone, or of a VM in no pool any more.
/// Nothing is said on a host without pools or leases.
fn check_pools(tree: &Tree, cfg: &Config, out: &mut Vec<Finding>) {
    let (pools, stray) = match (
        pool::collect(tree, cfg, None),
        pool::stray_leases(tree, cfg),
    ) {
        (Ok(p), Ok(s)) => (p, s),
        (Err(e), _) | (_, Err(e)) => {
            out.push(warn(
                "pools",
                format!(
                    "cannot read the leases: {}",
                    crate::host::logging::one_line(&e)
                ),
                "make .leases a root-owned 0755 directory",
            ));
            return;
        }
    };
    for p in &pools {
        let mut fine = true;
        if let Err(e) = pool::check_live_shares(tree, cfg, &p.pool) {
            fine = false;
            out.push(warn(
                "pools",
                crate::host::logging::one_line(&e),
                format!("give the VM a share whose source is its live root (NixOS guest module: services.microvm-workspaces.guest.shares.<share>.entry = the VM's name), or take it out of pools.{}", p.pool),
            ));
        }
        for l in p.vms.iter().filter_map(|v| v.lease.as_ref()) {
            if l.worktree_gone {
                fine = false;
                out.push(warn(
                    "pools",
                    format!(
                        "{}, but its worktree is gone (a moved one may still be what the VM shows)",
                        l.words()
                    ),
                    format!(
                        "the next microvm-link --pool {} ends it; or microvm-link release {}",
                        p.pool, l.vm
                    ),
                ));
            }
        }
        if fine {
            let leased = p.vms.iter().filter(|v| v.lease.is_some()).count();
            out.push(ok(
                "pools",
                format!(
                    "pool {}: {} VMs with live workspace shares, {leased} leased",
                    p.pool,
                    p.vms.len()
                ),
            ));
        }
    }
    for l in &stray {
        out.push(warn(
            "pools",
            format!("{}, a VM in no pool now", l.words()),
            format!(
                "microvm-link release {} when its worktree is done with it",
                l.vm
            ),
        ));
    }
}

/// VMs (running, or not known to be stopped) that see something other than at their start.
fn check_stale(tree: &Tree, cfg: &Config, root: &Root, out: &mut Vec<Finding>) {
    let rows = match status::collect(tree, cfg, root, None) {
        Ok(rows) => rows,
        Err(e) => {
            out.push(warn(
                "stale",
                format!("could not tell: {}", crate::host::logging::one_line(&e)),
                "see microvm-link status",
            ));
            return;
        }
    };
    let mut any = false;
    for r in rows.iter().filter(|r| r.stale && r.running != Some(false)) {
        any = true;
        let why: Vec<String> = r
            .shares
            .iter()
            .filter(|s| s.stale)
            .map(|s| format!("{}: {}", s.tag, s.stale_because.clone().unwrap_or_default()))
            .collect();
        out.push(warn(
            "stale",
            format!("VM {} is stale ({})", r.vm, why.join("; ")),
            format!(
                "systemctl restart {} (or link with --restart-stale)",
                units::unit_name("microvm@", &r.vm)
            ),
        ));
    }
    if !any {
        out.push(ok("stale", "no running VM is stale".into()));
    }
    // Sources a linked repo could not serve at the last start (docs/design.md#fallback).
    for r in &rows {
        for s in r
            .shares
            .iter()
            .filter(|s| s.kind == Some(crate::model::record::Kind::Fallback))
        {
            out.push(warn(
                "fallback",
                format!(
                    "VM {} share {} ({}) got a placeholder at its last start: {}",
                    r.vm,
                    s.tag,
                    s.path,
                    s.showed_at_start.clone().unwrap_or_default()
                ),
                format!("make {} a directory in the linked repo (not a file, not a symlink out of it), then restart {}; the journal of its start says what was there", s.path, units::unit_name("microvm@", &r.vm)),
            ));
        }
    }
}

/// VMs reached at `vsock/<cid>` (the NixOS module's default for a VM with a vsock CID) need
/// the host's ssh to know that name: systemd 256+ ships `systemd-ssh-proxy` and an ssh_config
/// snippet (`Host unix/* vsock/*`) that sends it through the proxy. Without it ssh would look
/// `vsock/3` up as a host name.
fn check_vsock(cfg: &Config, caller: Caller, host: &dyn Host, out: &mut Vec<Finding>) {
    for (vm, v) in &cfg.vms {
        let (dest, chosen) = match (&v.ssh, &v.ssh_default) {
            (Some(d), _) => (d, true),
            (None, Some(d)) => (d, false),
            (None, None) => continue,
        };
        if !dest.starts_with("vsock/") {
            continue;
        }
        let fix = "use systemd 256 or later on the host with its ssh_config snippet for vsock/* (NixOS 25.05+: programs.ssh.systemd-ssh-proxy.enable, on by default), or set services.microvm-workspaces.ssh.destination";
        match host.ssh_target(dest, caller) {
            Ok(t) if t.proxied => out.push(ok(
                "vsock",
                format!("VM {vm}: ssh reaches {dest} through a proxy"),
            )),
            Ok(_) => {
                let what = format!("VM {vm}: the host's ssh has no proxy for {dest}, so it cannot reach the guest over vsock");
                out.push(match chosen {
                    true => fail("vsock", what, fix),
                    false => warn("vsock", what, fix),
                });
            }
            Err(e) => out.push(warn(
                "vsock",
                format!(
                    "VM {vm}: could not ask ssh about {dest}: {}",
                    crate::host::logging::one_line(&e)
                ),
                fix,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_output_or_store_names() {
        assert_eq!(parse_version("virtiofsd 1.14.0\n"), Some((1, 14, 0)));
        assert_eq!(parse_version("virtiofsd backend 1.10.1"), Some((1, 10, 1)));
        assert_eq!(parse_version("1.13.3/bin/virtiofsd"), Some((1, 13, 3)));
        assert_eq!(parse_version("v1.14"), Some((1, 14, 0)));
        assert_eq!(parse_version("usage: virtiofsd [options]"), None);
    }

    #[test]
    fn store_paths_are_found_in_scripts() {
        let t = "#!/nix/store/aa-bash/bin/bash\nexec /nix/store/bb-supervisor/bin/supervisord --configuration /nix/store/cc-vm1.conf\n'/nix/store/aa-bash/bin/bash'";
        assert_eq!(
            store_paths(t),
            [
                "/nix/store/aa-bash/bin/bash",
                "/nix/store/bb-supervisor/bin/supervisord",
                "/nix/store/cc-vm1.conf"
            ]
        );
    }

    #[test]
    fn virtiofsd_is_found_where_runners_name_it() {
        // microvm.nix's supervisord configuration, and the e2e suite's virtiofsd-run.
        assert_eq!(
            virtiofsd_named("[program:virtiofsd-ws]\ncommand=/nix/store/cc-virtiofsd-1.14.0/bin/virtiofsd --socket-path=ws.sock\n"),
            Some("/nix/store/cc-virtiofsd-1.14.0/bin/virtiofsd".into())
        );
        assert_eq!(
            virtiofsd_named("    /usr/libexec/virtiofsd --socket-path=\"$sock\" \\\n"),
            Some("/usr/libexec/virtiofsd".into())
        );
        assert_eq!(virtiofsd_named("start_virtiofsd ws /x\n"), None);
    }

    #[test]
    fn sudo_rules_naming_microvm_link_are_picked_out() {
        let t = "# %wheel ALL=(root) NOPASSWD: /old/bin/microvm-link\n\
                 Defaults env_keep+=microvm-link\n\
                 root ALL=(ALL:ALL) SETENV: ALL\n\
                 %wheel  ALL=(root) NOPASSWD: /nix/store/x-microvm-workspaces/bin/microvm-link\n\
                 alice ALL=(root) NOPASSWD: /usr/bin/true, /usr/local/bin/microvm-link\n";
        assert_eq!(
            sudo_rules(t),
            [
                (
                    "%wheel".to_string(),
                    "/nix/store/x-microvm-workspaces/bin/microvm-link".to_string()
                ),
                (
                    "alice".to_string(),
                    "/usr/local/bin/microvm-link".to_string()
                )
            ]
        );
        assert!(sudo_rules("%wheel ALL=(ALL) ALL\n").is_empty());
    }

    /// A host whose systemd answers from a table.
    struct Scripted(Vec<(&'static str, Result<&'static str, &'static str>)>);

    impl Host for Scripted {
        fn exec_start_pre(&self, unit: &str) -> Result<String> {
            match self.0.iter().find(|(u, _)| *u == unit) {
                Some((_, Ok(v))) => Ok(v.to_string()),
                Some((_, Err(e))) => Err(anyhow::anyhow!("{e}")),
                None => Ok(String::new()),
            }
        }
        fn version_output(&self, _: &Path) -> Result<String> {
            anyhow::bail!("not here")
        }
        fn virtiofsd_on_path(&self) -> Option<PathBuf> {
            None
        }
        fn own_exe(&self) -> Option<PathBuf> {
            None
        }
        fn drop_to(&self, _: Caller) -> Result<()> {
            Ok(())
        }
        fn ssh_target(&self, destination: &SshDest, _: Caller) -> Result<crate::host::ssh::Target> {
            // "vsock/1" has the proxy (systemd 256+), any other vsock/ name does not.
            let proxy = if destination == "vsock/1" {
                "/usr/lib/systemd/systemd-ssh-proxy %h %p"
            } else {
                "none"
            };
            crate::host::ssh::parse_g(
                destination,
                &format!("hostname {destination}\nproxycommand {proxy}\n"),
            )
        }
    }

    #[test]
    fn a_vsock_destination_needs_the_hosts_ssh_proxy() {
        let cfg = Config::parse(
            br#"{"vms": {"a": {"sshDefault": "vsock/1"}, "b": {"sshDefault": "vsock/2"},
                         "c": {"ssh": "vsock/3"}, "d": {"sshDefault": "d"}}}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        check_vsock(&cfg, Caller::Root, &Scripted(vec![]), &mut out);
        let got: Vec<(Severity, &str)> =
            out.iter().map(|f| (f.severity, f.what.as_str())).collect();
        assert_eq!(
            got,
            [
                (Severity::Ok, "VM a: ssh reaches vsock/1 through a proxy"),
                (Severity::Warn, "VM b: the host's ssh has no proxy for vsock/2, so it cannot reach the guest over vsock"),
                (Severity::Fail, "VM c: the host's ssh has no proxy for vsock/3, so it cannot reach the guest over vsock"),
            ]
        );
    }

    const PRE: &str = "{ path=/nix/store/x/bin/microvm-workspaces-prepare ; argv[]=/nix/store/x/bin/microvm-workspaces-prepare vm ; ignore_errors=no }";

    fn dropins(host: &Scripted, root: &Root) -> Vec<Finding> {
        // A VM only the config knows (no runner anywhere on this host): both units count.
        let cfg = Config::parse(
            br#"{"vms": {"mvw-doctor-test": {"shares": [{"tag": "ws", "proto": "virtiofs", "source": "/srv/ws"}]}}}"#,
        )
        .unwrap();
        let tree = Tree::open(&Root::host()).unwrap();
        let mut out = Vec::new();
        check_dropins(
            root,
            &["mvw-doctor-test".parse().unwrap()],
            &tree,
            &cfg,
            host,
            &mut out,
        );
        out
    }

    #[test]
    fn drop_ins_must_put_prepare_before_both_units() {
        let both = Scripted(vec![
            ("microvm@mvw-doctor-test.service", Ok(PRE)),
            ("microvm-virtiofsd@mvw-doctor-test.service", Ok(PRE)),
        ]);
        let f = dropins(&both, &Root::host());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Ok, "{f:?}");

        let one = Scripted(vec![("microvm@mvw-doctor-test.service", Ok(PRE))]);
        let f = dropins(&one, &Root::host());
        assert_eq!(f[0].severity, Severity::Fail, "{f:?}");
        assert!(f[0]
            .what
            .contains("microvm-virtiofsd@mvw-doctor-test.service"));
        assert!(f[0].fix.as_ref().unwrap().contains("daemon-reload"));

        let down = Scripted(vec![(
            "microvm-virtiofsd@mvw-doctor-test.service",
            Err("System has not been booted with systemd"),
        )]);
        let f = dropins(&down, &Root::host());
        assert_eq!(f[0].severity, Severity::Warn, "{f:?}");
        assert!(f[0].what.contains("could not ask systemd"));
    }

    #[test]
    fn re_rooted_systemd_is_not_asked_and_it_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::from_args(Some(dir.path())).unwrap();
        let f = dropins(&Scripted(vec![]), &root);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Warn);
        assert!(f[0].what.starts_with("not checked: re-rooted"), "{f:?}");
    }

    #[test]
    fn the_report_has_each_fix_and_a_verdict() {
        let f = vec![
            ok("config", "fine".into()),
            fail("private-tmp", "under /tmp".into(), "move it"),
            warn("sudo", "no rule".into(), "add one"),
        ];
        let r = render(&f);
        assert!(r.contains("FAIL  private-tmp  under /tmp\n"), "{r}");
        assert!(r.contains("fix: move it"), "{r}");
        assert!(
            r.ends_with("1 problem will make a VM fail (1 warning)\n"),
            "{r}"
        );
        assert!(failed(&f));
        assert!(!failed(&f[..1]));
        let j = serde_json::to_value(&f[1]).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"check": "private-tmp", "severity": "fail", "what": "under /tmp", "fix": "move it"})
        );
    }
}
