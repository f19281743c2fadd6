//! microvm-link's flow (docs/design.md#microvm-link): who asks, which entries change, the
//! relink, the sources of every VM through the changed entries, the restart, and the other
//! running VMs left stale. [`link`] and [`unlink`] share it and return a typed [`Outcome`].

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd::status::{self, VmStatus};
use crate::engine::entry::{self, entry_name_of, live_of, Change, Relinked, Workspace};
use crate::fs::chase::{Node, Tree, Trust, Walk};
use crate::fs::paths::{self, show, Root};
use crate::model::config::Config;
use crate::{
    engine::prepare, host::logging, host::ssh, host::systemd, host::units, model::record,
    model::runner,
};

/// How long a restart may take before we stop waiting (microvm.nix's default start timeout).
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(150);

/// Who asked. Through sudo (real uid root, `SUDO_UID` set and not 0): the sudo user, who may
/// not name another with `--user`. Root itself: root, or whoever `--user` names. `SUDO_UID`
/// is believed only when the real uid is root too (a set-uid copy must not let the caller
/// claim to be anyone).
pub fn invoking_user(user_flag: Option<&str>) -> Result<u32> {
    let real = nix::unistd::getuid();
    let sudo = match std::env::var("SUDO_UID") {
        Ok(v) if real.is_root() => Some(
            v.parse::<u32>()
                .with_context(|| format!("SUDO_UID {v:?} is not a number"))?,
        ),
        Ok(_) => {
            bail!("SUDO_UID is set but the real user is uid {real}, not root; refusing to trust it")
        }
        Err(_) => None,
    };
    match (sudo, user_flag) {
        (Some(uid), Some(_)) if uid != 0 => {
            bail!("--user is refused through sudo (SUDO_UID={uid}): only root itself may act for another user")
        }
        (Some(uid), None) => Ok(uid),
        (_, Some(u)) if real.is_root() => match u.parse::<u32>() {
            Ok(n) => Ok(n),
            Err(_) => match nix::unistd::User::from_name(u) {
                Ok(Some(user)) => Ok(user.uid.as_raw()),
                _ => bail!("--user {u:?}: no such user"),
            },
        },
        (_, Some(_)) => bail!("--user needs root itself"),
        (None, None) => Ok(real.as_raw()),
    }
}

/// Re-executes through sudo unless already root (the NixOS module can allow a group to do so
/// without a password). Re-rooting and acting for someone else are root's own: through sudo
/// they would be refused (`paths::Root::from_args`, [`invoking_user`]), so say so first.
pub fn become_root(root_flag: bool, user_flag: bool) -> Result<()> {
    use std::os::unix::process::CommandExt;
    if nix::unistd::Uid::effective().is_root() {
        return Ok(());
    }
    if root_flag || std::env::var_os(paths::ROOT_ENV).is_some_and(|r| !r.is_empty()) {
        bail!(
            "--root and {} need root itself; through sudo they are refused",
            paths::ROOT_ENV
        );
    }
    if user_flag {
        bail!("--user needs root itself; through sudo it is refused");
    }
    // Set on the re-execution below. The real sudo drops it (env_reset) and makes us root;
    // seeing it while still not root means `sudo` ran us unprivileged: going round again
    // would loop for ever.
    const VIA_SUDO: &str = "MICROVM_LINK_VIA_SUDO";
    let (mut cmd, sudo) = sudo_command();
    if std::env::var_os(VIA_SUDO).is_some() {
        bail!(
            "{sudo} ran microvm-link again as uid {}, not as root; check that {sudo} is the real sudo and allows you to run microvm-link",
            nix::unistd::Uid::effective()
        );
    }
    let exe = std::env::current_exe().context("cannot find microvm-link's own executable")?;
    let err = cmd
        .env(VIA_SUDO, "1")
        .arg("--")
        .arg(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    bail!("microvm-link needs root and could not run {sudo}: {err}")
}

/// NixOS's setuid wrappers: sudo (and sudo-rs) is there, and only there, on a NixOS host.
const WRAPPER_SUDO: &str = "/run/wrappers/bin/sudo";

/// `sudo` for a user asking for root, found when it runs (one package for every host): a
/// packager's fixed path if built with one, else NixOS's wrapper, else sudo from PATH. With
/// no terminal to ask a password on (sudo asks on /dev/tty, not stdin), `-n`: a refusal is at
/// once and says so, never a hang.
pub fn sudo_command() -> (std::process::Command, String) {
    let sudo = option_env!("MICROVM_WORKSPACES_SUDO")
        .map(str::to_string)
        .unwrap_or_else(|| match Path::new(WRAPPER_SUDO).exists() {
            true => WRAPPER_SUDO.to_string(),
            false => "sudo".to_string(),
        });
    let mut cmd = std::process::Command::new(&sudo);
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty");
    if tty.is_err() {
        cmd.arg("-n");
    }
    (cmd, sudo)
}

/// Gives up root for good and becomes `uid` (with its primary and supplementary groups), for
/// commands that only look (`status`, `doctor`) at paths a caller can influence: a symlink in
/// their repo must not make root reveal what lies where they cannot look. A no-op unless
/// root is acting for someone else (`uid` not 0).
pub fn drop_to(uid: u32) -> Result<()> {
    use nix::unistd::{getgrouplist, setgid, setgroups, setuid, Gid, Uid, User};
    if uid == 0 || !Uid::effective().is_root() {
        return Ok(());
    }
    let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
    let gid = user.as_ref().map_or(Gid::from_raw(uid), |u| u.gid);
    let groups = user
        .as_ref()
        .and_then(|u| {
            let name = std::ffi::CString::new(u.name.as_bytes()).ok()?;
            getgrouplist(&name, gid).ok()
        })
        .unwrap_or_else(|| vec![gid]);
    setgroups(&groups)
        .and_then(|_| setgid(gid))
        .and_then(|_| setuid(Uid::from_raw(uid)))
        .with_context(|| format!("cannot drop to uid {uid}"))
}

/// A VM left out, and why.
pub type Skipped = (String, String);

/// A VM and its shares through the changed entries.
type Affected = (String, Vec<runner::Share>);

/// Directories root looks programs up in when acting for someone through sudo.
pub const SAFE_PATH: &str =
    "/run/wrappers/bin:/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Root acting for a user through sudo: what the caller chose for this process is not what
/// root should use. sudo keeps the caller's PATH unless sudoers sets `secure_path` (NixOS's
/// does not), so systemctl, ssh or virtiofsd would be looked up where the caller says; and
/// the caller's umask would shape what root creates. Call first, while single-threaded.
pub fn harden() {
    if !nix::unistd::Uid::effective().is_root() {
        return;
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    if paths::sudo_uid().is_some() {
        std::env::set_var("PATH", SAFE_PATH);
    }
}

/// Everything one run of microvm-link works with.
pub struct Env {
    pub root: Root,
    pub tree: Tree,
    pub cfg: Config,
    /// Who asked (see [`invoking_user`]).
    pub user: u32,
}

impl Env {
    pub fn open(root: Option<&Path>, user_flag: Option<&str>) -> Result<Env> {
        let user = invoking_user(user_flag)?;
        let root = Root::from_args(root)?;
        let tree = Tree::open(&root)?;
        let cfg = Config::load(&tree)?;
        Ok(Env {
            root,
            tree,
            cfg,
            user,
        })
    }

    /// A VM name that is valid and known (a runner or a config entry).
    pub fn known_vm(&self, vm: &str) -> Result<()> {
        paths::check_name("VM", vm)?;
        runner::check_known(&self.tree, &self.cfg, vm)
    }

    /// The repo at `repo` (a real path; default: the repo around the working directory),
    /// checked to be a directory the invoking user owns. The node returned is the one that
    /// gets mounted.
    pub fn repo(&self, repo: Option<&Path>) -> Result<Node> {
        let cwd = std::env::current_dir().context("cannot read the working directory")?;
        let real = match repo {
            Some(r) => paths::normalize(&cwd.join(r)),
            None => repo_root(&cwd),
        };
        let inside = self.root.inside(&real).with_context(|| {
            format!(
                "repo {} is outside the root {}",
                show(&real),
                show(self.root.dir())
            )
        })?;
        let node = match self.tree.walk(&inside, Trust::Owners)? {
            Walk::Found(n) if n.is_dir() => n,
            _ => bail!("repo {} is not a directory", show(&inside)),
        };
        // Checked first, but only in a workspace dir that is a trusted place (finding it says
        // why not): through an idmapped entry the owner seen is the guest's uid.
        if node.path.starts_with(&self.cfg.workspace_dir)
            && Workspace::find(&self.tree, &self.cfg)?.is_some()
        {
            return Err(entry::inside_workspace(&node.path, &self.cfg.workspace_dir));
        }
        if self.user != 0 && node.uid() != self.user {
            bail!(
                "repo {} is owned by uid {}, not by you (uid {}); you may only link your own repos",
                show(&node.path),
                node.uid(),
                self.user
            );
        }
        Ok(node)
    }
}

/// The repo root for a working directory: the nearest ancestor holding `.git` (a directory,
/// or a file as in worktrees and submodules), else the directory itself.
pub fn repo_root(start: &Path) -> PathBuf {
    start
        .ancestors()
        .find(|d| d.join(".git").symlink_metadata().is_ok())
        .unwrap_or(start)
        .to_path_buf()
}

/// The VM name for a repo: its directory name with every run of characters outside
/// `[A-Za-z0-9._-]` replaced by `-`, and leading and trailing `-` trimmed.
pub fn derive_vm_name(repo: &Path) -> Result<String> {
    let base = repo
        .file_name()
        .with_context(|| format!("cannot derive a VM name from {}; name the VM", show(repo)))?;
    let mut name = String::new();
    for ch in String::from_utf8_lossy(base.as_encoded_bytes()).chars() {
        if ch.is_ascii_alphanumeric() || "._-".contains(ch) {
            name.push(ch);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_matches('-').to_string();
    paths::check_name("derived VM", &name).with_context(|| {
        format!(
            "from the repo directory {}; name the VM explicitly",
            show(repo)
        )
    })?;
    Ok(name)
}

/// What the caller asked for besides the change itself.
#[derive(Debug, Clone)]
pub struct Options {
    pub dry_run: bool,
    pub no_restart: bool,
    pub restart_stale: bool,
    /// Show restart progress on the terminal.
    pub progress: bool,
    /// After a (re)start, do not wait for the VM's SSH destination to answer.
    pub no_wait: bool,
    /// Link and (re)start only what is not so already (`microvm-link shell`).
    pub if_needed: bool,
    /// The SSH destination to wait for, instead of the config's.
    pub ssh: Option<String>,
    /// How long to wait for its banner.
    pub ssh_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            dry_run: false,
            no_restart: false,
            restart_stale: false,
            progress: false,
            no_wait: false,
            if_needed: false,
            ssh: None,
            ssh_timeout: Duration::from_secs(120),
        }
    }
}

/// Waiting for the VM's SSH destination after its (re)start.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum SshWait {
    /// Not waited for: no (re)start to wait after, or `--no-wait`.
    NotAsked,
    /// The VM has no destination.
    NoDestination,
    /// Reached through a ProxyCommand or ProxyJump: no banner to probe from here (as
    /// `shell`, which then lets ssh itself connect).
    Proxied {
        destination: String,
    },
    Ready {
        target: ssh::Target,
        secs: f64,
    },
    Failed {
        destination: String,
        why: String,
    },
    /// A destination nobody chose (the module's default) gave no answer: said, not a failure.
    Unanswered {
        destination: String,
        why: String,
    },
}

impl SshWait {
    pub fn line(&self, vm: &str) -> Option<String> {
        match self {
            SshWait::NotAsked => None,
            SshWait::NoDestination => Some(format!(
                "not waiting for SSH: {vm} has no destination; set vms.{vm}.ssh (NixOS: services.microvm-workspaces.ssh) or pass --ssh DEST"
            )),
            SshWait::Proxied { destination } => Some(format!(
                "not waiting for SSH: {destination} is reached through a proxy, which cannot be probed from here"
            )),
            SshWait::Ready { target, secs } => Some(format!(
                "ssh {} ({}:{}) answered after {secs:.1} s",
                target.destination, target.host, target.port
            )),
            SshWait::Failed { destination, why } => {
                Some(format!("ssh {destination}: {why}"))
            }
            SshWait::Unanswered { destination, why } => Some(format!(
                "not waiting for SSH: {destination} (the default destination, nobody chose it) gave no answer ({why}); the link is done. To wait for SSH, set services.microvm-workspaces.ssh.destination or vms.{vm}.ssh, or pass --ssh DEST"
            )),
        }
    }
}

/// How long a destination nobody chose is waited for (docs/design.md#ssh-wait): long enough
/// for a VM that boots quickly and runs sshd, short against a 150 s restart budget.
pub const DEFAULT_DESTINATION_WAIT: Duration = Duration::from_secs(15);

/// The SSH destination of `vm`: `--ssh`, else the config's `ssh` (both chosen by someone),
/// else its `sshDefault` (the module's guess).
pub fn ssh_destination(env: &Env, vm: &str, given: Option<&str>) -> Option<ssh::Destination> {
    let chosen = |name: &str| ssh::Destination {
        name: name.to_string(),
        chosen: true,
    };
    let v = env.cfg.vms.get(vm);
    given
        .map(chosen)
        .or_else(|| v.and_then(|v| v.ssh.as_deref()).map(chosen))
        .or_else(|| {
            v.and_then(|v| v.ssh_default.as_deref())
                .map(|name| ssh::Destination {
                    name: name.to_string(),
                    chosen: false,
                })
        })
}

/// Waits for `vm`'s SSH banner, resolving the destination as the invoking user's ssh does.
/// A destination someone chose is waited for up to `--ssh-timeout` and fails the run when it
/// stays silent; a default one is waited for briefly (not at all when its name does not
/// resolve) and never fails it.
pub fn wait_for_ssh(env: &Env, vm: &str, opts: &Options) -> SshWait {
    let given = opts.ssh.as_deref();
    let Some(dest) = ssh_destination(env, vm, given) else {
        return SshWait::NoDestination;
    };
    let failed = |e: anyhow::Error| match dest.chosen {
        true => SshWait::Failed {
            destination: dest.name.clone(),
            why: logging::one_line(&e),
        },
        false => SshWait::Unanswered {
            destination: dest.name.clone(),
            why: logging::one_line(&e),
        },
    };
    let target = match ssh::resolve(&dest.name, ssh::as_user(env.user)) {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    if target.proxied {
        return SshWait::Proxied {
            destination: dest.name,
        };
    }
    let timeout = match dest.chosen {
        true => opts.ssh_timeout,
        false => opts.ssh_timeout.min(DEFAULT_DESTINATION_WAIT),
    };
    // A default that does not resolve is not waited for at all (asked as the caller).
    match ssh::wait_for_banner(
        &target,
        ssh::as_user(env.user),
        timeout,
        opts.progress,
        !dest.chosen,
    ) {
        Ok(d) => SshWait::Ready {
            target,
            secs: d.as_secs_f64(),
        },
        Err(e) => failed(e),
    }
}

/// A restart of `microvm@<vm>` and how it ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Restart {
    /// Not asked for (`--no-restart`, `--dry-run`).
    NotAsked,
    /// Not possible here (re-rooted: there is no systemd of that tree to ask).
    Skipped {
        why: String,
    },
    /// Not needed: the VM runs and sees the change through live shares.
    NotNeeded {
        why: String,
    },
    /// `--if-needed`, and nothing was: already linked, running and seeing it (said nothing).
    Unchanged,
    /// No share of the VM passes through what changed: a restart would show it nothing new.
    Unaffected {
        why: String,
    },
    Active {
        unit: String,
        secs: f64,
    },
    Failed {
        unit: String,
        secs: f64,
        state: String,
    },
}

impl Restart {
    pub fn failed(&self) -> bool {
        matches!(self, Restart::Failed { .. })
    }

    /// One line for people; `None` when nothing was asked.
    pub fn line(&self, vm: &str) -> Option<String> {
        match self {
            Restart::NotAsked | Restart::Unchanged => None,
            Restart::Skipped { why } => Some(format!("not restarting {vm}: {why}")),
            Restart::NotNeeded { why } => Some(format!("{vm} sees it now: {why}; not restarted")),
            Restart::Unaffected { why } => Some(format!("not restarting {vm}: {why}")),
            Restart::Active { unit, secs } => {
                Some(format!("restarted {unit}: active after {secs:.1} s"))
            }
            Restart::Failed { unit, secs, state } => Some(format!(
                "restarted {unit}: failed after {secs:.1} s ({state}); see journalctl -u {unit}"
            )),
        }
    }
}

/// What a link or unlink did.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub vm: String,
    /// Who asked (0: root).
    #[serde(skip)]
    pub caller: u32,
    pub repo: Option<String>,
    pub dry_run: bool,
    pub changes: Vec<Change>,
    #[serde(flatten)]
    pub relinked: Relinked,
    pub ensured: Vec<String>,
    /// VMs whose sources could not be ensured (a runner that is not root's), and why.
    pub skipped: Vec<(String, String)>,
    pub link_ms: f64,
    pub restart: Restart,
    #[serde(serialize_with = "stale_json")]
    pub stale: Vec<VmStatus>,
    pub restarted_stale: Vec<(String, Restart)>,
    /// Stale VMs `--restart-stale` left alone for this caller, and why.
    pub stale_kept: Vec<(String, String)>,
    /// Running VMs that see the change now through live shares: (VM, tags).
    pub live: Vec<(String, Vec<String>)>,
    pub ssh: SshWait,
}

fn stale_json<S: serde::Serializer>(stale: &[VmStatus], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(stale.len()))?;
    for v in stale {
        seq.serialize_element(
            &serde_json::json!({"vm": v.vm, "running": v.running, "tags": stale_tags(v)}),
        )?;
    }
    seq.end()
}

fn stale_tags(s: &VmStatus) -> Vec<String> {
    s.shares
        .iter()
        .filter(|x| x.stale)
        .map(|x| x.tag.clone())
        .collect()
}

impl Outcome {
    /// Success unless a restart this run asked for failed.
    pub fn success(&self) -> bool {
        !self.restart.failed()
            && !self.restarted_stale.iter().any(|(_, r)| r.failed())
            && !matches!(self.ssh, SshWait::Failed { .. })
    }

    /// The report for people, one line per fact.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        // What was in the way first: it was moved before anything was linked.
        for d in &self.relinked.displaced {
            let whose = match d.owner == self.caller {
                true => "your directory".to_string(),
                false => format!(
                    "the directory of {}",
                    crate::model::config::user_label(d.owner)
                ),
            };
            out.push(format!(
                "moved {whose} {} aside to {} (only root can read it there; nothing was deleted)",
                d.from, d.to
            ));
        }
        out.extend(self.relinked.steps.iter().chain(&self.ensured).cloned());
        out.extend(self.restart.line(&self.vm));
        out.extend(self.ssh.line(&self.vm));
        for (vm, tags) in self.live.iter().filter(|(v, _)| *v != self.vm) {
            // A VM with pinned shares left stale as well is not done: the stale line follows.
            let done = match self.stale.iter().any(|s| s.vm == *vm) {
                true => "",
                false => "; no restart needed",
            };
            out.push(format!(
                "{vm} sees it now through its live shares ({}){done}",
                tags.join(", ")
            ));
        }
        for s in &self.stale {
            let tags = stale_tags(s).join(", ");
            let kept = self.stale_kept.iter().find(|(v, _)| *v == s.vm);
            match self.restarted_stale.iter().find(|(v, _)| *v == s.vm) {
                Some((_, r)) => out.push(format!(
                    "{} was stale ({tags}): {}",
                    s.vm,
                    r.line(&s.vm).unwrap_or_default()
                )),
                None if kept.is_some() => out.push(format!(
                    "stale: {} still sees the old directory for {tags}; not restarted for you: {}",
                    s.vm,
                    kept.map(|(_, why)| why.as_str()).unwrap_or_default()
                )),
                None => out.push(format!(
                    "stale: {} still sees the old directory for {tags}; restart it (systemctl restart {}) or use --restart-stale",
                    s.vm,
                    units::unit_name("microvm@", &s.vm)
                )),
            }
        }
        out
    }
}

/// The changes linking `vm` to `repo` implies: the VM's own entry, and each companion
/// (linked when the repo has that relative path as a directory owned by `user`, else turned
/// back into a placeholder).
pub fn link_changes(env: &Env, vm: &str, repo: &Path) -> Vec<Change> {
    let mut out = vec![Change {
        name: vm.to_string(),
        target: Some(repo.to_path_buf()),
    }];
    for (name, rel) in env.cfg.companions.get(vm).into_iter().flatten() {
        let target = paths::normalize(&repo.join(rel));
        let usable = match env.tree.walk(&target, Trust::Owners) {
            Ok(Walk::Found(n)) => n.is_dir() && (env.user == 0 || n.uid() == env.user),
            _ => false,
        };
        out.push(Change {
            name: name.clone(),
            target: usable.then_some(target),
        });
    }
    out
}

/// The changes unlinking `vm` implies: its entry and its companions, back to placeholders.
pub fn unlink_changes(env: &Env, vm: &str) -> Vec<Change> {
    std::iter::once(vm.to_string())
        .chain(
            env.cfg
                .companions
                .get(vm)
                .into_iter()
                .flatten()
                .map(|(n, _)| n.clone()),
        )
        .map(|name| Change { name, target: None })
        .collect()
}

/// Links `vm` (default: named after the repo) to `repo` (default: the repo around the
/// working directory; see [`Env::repo`]).
pub fn link(env: &Env, vm: Option<&str>, repo: Option<&Path>, opts: Options) -> Result<Outcome> {
    let repo = env.repo(repo)?;
    let vm = match vm {
        Some(v) => v.to_string(),
        None => derive_vm_name(&repo.path)?,
    };
    env.known_vm(&vm)?;
    if let Some(d) = &opts.ssh {
        crate::model::config::check_ssh_destination(d).context("--ssh")?;
    }
    let mut changes = link_changes(env, &vm, &repo.path);
    if opts.if_needed && linked_to(env, &vm, &repo)? {
        changes.clear();
    }
    run(env, &vm, Some(show(&repo.path)), changes, opts)
}

/// Is entry `vm` linked to `repo` now?
fn linked_to(env: &Env, vm: &str, repo: &Node) -> Result<bool> {
    let Some(ws) = Workspace::find(&env.tree, &env.cfg)? else {
        return Ok(false);
    };
    let view = ws.view(vm)?;
    Ok(view.state == crate::engine::entry::State::Linked && view.target == Some(show(&repo.path)))
}

/// Unlinks `vm`: its placeholder (and its companions') serve again.
pub fn unlink(env: &Env, vm: &str, opts: Options) -> Result<Outcome> {
    env.known_vm(vm)?;
    let changes = unlink_changes(env, vm);
    run(env, vm, None, changes, opts)
}

fn run(
    env: &Env,
    vm: &str,
    repo: Option<String>,
    changes: Vec<Change>,
    opts: Options,
) -> Result<Outcome> {
    let t0 = Instant::now();
    let (affected, mut skipped) = affected(env, &changes);
    // Everything that can be checked is checked before anything changes.
    check_affected(env, &affected, &changes)?;
    let relinked = if opts.dry_run {
        match Workspace::find(&env.tree, &env.cfg)? {
            Some(ws) => ws.plan_relink(&changes, env.user)?,
            None => Relinked {
                changed: changes.iter().filter(|c| c.target.is_some()).count(),
                steps: vec![format!(
                    "would create {} and link there",
                    show(&env.cfg.workspace_dir)
                )],
                displaced: Vec::new(),
                changed_names: Vec::new(),
            },
        }
    } else {
        Workspace::ensure(&env.tree, &env.cfg)?.relink(&changes, env.user)?
    };
    let ensured = ensure_affected(env, &affected, opts.dry_run, &mut skipped);
    let link_ms = t0.elapsed().as_secs_f64() * 1000.0;
    // systemd is asked once, about every VM this link looks at (issue 19).
    let running = ask_running(env, vm, &affected);
    let live = live_views(env, &affected, &running);
    let own_live = live.iter().find(|(v, _)| v == vm);
    let restart = if opts.no_restart || opts.dry_run {
        Restart::NotAsked
    } else if let Some((_, tags)) = own_live.filter(|_| pinned_through(env, vm, &affected) == 0) {
        // Every share of the VM through the changed entries is live, and it runs: it sees
        // the change already.
        Restart::NotNeeded {
            why: format!("live shares {}", tags.join(", ")),
        }
    } else if relinked.changed == 0 && !opts.if_needed {
        // Nothing changed (an unlink of what is not linked): nothing to restart for.
        Restart::NotNeeded {
            why: "nothing changed".into(),
        }
    } else if !changes.is_empty() && !affected.iter().any(|(v, _)| v == vm) {
        // No share of the VM passes through a changed entry: a restart (or a start, with
        // --if-needed) would show it nothing of the change, and anyone could restart any VM by
        // naming it. (With no changes, --if-needed found the entry linked already: below.)
        Restart::Unaffected {
            why: format!(
                "no share of {vm} passes through {}",
                changes
                    .iter()
                    .map(|c| show(&env.cfg.workspace_dir.join(&c.name)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    } else if relinked.changed == 0 && is_running(&running, vm) && !is_stale(env, vm) {
        // `--if-needed`, already linked, running and seeing it: leave it be.
        Restart::Unchanged
    } else {
        restart_vm(env, vm, false, opts.progress)
    };
    let ssh = match restart {
        Restart::Active { .. } if !opts.no_wait => wait_for_ssh(env, vm, &opts),
        _ => SshWait::NotAsked,
    };
    let stale = stale_others(env, vm, &running);
    let mut restarted_stale = Vec::new();
    let mut stale_kept = Vec::new();
    if opts.restart_stale && !opts.dry_run {
        for s in &stale {
            match stale_by_others(env, &relinked.changed_names, s) {
                None => restarted_stale
                    .push((s.vm.clone(), restart_vm(env, &s.vm, false, opts.progress))),
                Some(why) => stale_kept.push((s.vm.clone(), why)),
            }
        }
    }
    Ok(Outcome {
        caller: env.user,
        vm: vm.to_string(),
        repo,
        dry_run: opts.dry_run,
        changes,
        relinked,
        ensured,
        skipped,
        link_ms,
        restart,
        stale,
        restarted_stale,
        stale_kept,
        live,
        ssh,
    })
}

/// Why `--restart-stale` leaves `s` alone for this caller: a stale share of it passes
/// through an entry that someone else links, or that this run did not change (only they, or
/// root, restart VMs for their links). `None`: the caller may restart it.
fn stale_by_others(env: &Env, changed: &[String], s: &VmStatus) -> Option<String> {
    if env.user == 0 {
        return None;
    }
    let unreadable = || Some("the workspace dir cannot be read".to_string());
    let Ok(Some(ws)) = Workspace::find(&env.tree, &env.cfg) else {
        return unreadable();
    };
    let Ok(links) = ws.links() else {
        return unreadable();
    };
    for share in s.shares.iter().filter(|x| x.stale) {
        let Some(name) = entry_name_of(&env.cfg.workspace_dir, Path::new(&share.path)) else {
            return Some(format!(
                "its share {} is outside the workspace dir",
                share.tag
            ));
        };
        if changed.iter().any(|c| OsStr::new(c) == name) {
            continue;
        }
        match crate::engine::entry::read_record(links.as_ref(), &name) {
            Ok(Some(rec)) if rec.owner == env.user => {}
            Ok(Some(rec)) => {
                return Some(format!(
                    "its share {} passes through {}, linked by {}",
                    share.tag,
                    show(&env.cfg.workspace_dir.join(&name)),
                    crate::model::config::user_label(rec.owner)
                ))
            }
            _ => {
                return Some(format!(
                    "its share {} went stale through {}, which this run did not change",
                    share.tag,
                    show(&env.cfg.workspace_dir.join(&name))
                ))
            }
        }
    }
    None
}

fn is_stale(env: &Env, vm: &str) -> bool {
    // Whether it runs plays no part in `stale`: systemd is not asked.
    status::status_with(&env.tree, &env.cfg, vm, None).is_ok_and(|s| s.stale)
}

/// Whether `microvm@<vm>` runs, of everything a link looks at: `vm`, the VMs with shares
/// through the changed entries, and every VM with a runtime record (the stale list), in one
/// `systemctl show`. Re-rooted, systemd is not asked.
fn ask_running(env: &Env, vm: &str, affected: &[Affected]) -> status::Running {
    let mut vms: Vec<String> = affected.iter().map(|(v, _)| v.clone()).collect();
    vms.push(vm.to_string());
    vms.extend(record::recorded_vms(&env.tree));
    vms.sort();
    vms.dedup();
    status::Running::ask(&env.root, &vms)
}

fn is_running(running: &status::Running, vm: &str) -> bool {
    running.of(vm) == Some(true)
}

/// Running VMs with live shares through the changed entries, and those shares' tags.
fn live_views(
    env: &Env,
    affected: &[Affected],
    running: &status::Running,
) -> Vec<(String, Vec<String>)> {
    affected
        .iter()
        .filter(|(vm, _)| is_running(running, vm))
        .filter_map(|(vm, shares)| {
            let tags: Vec<String> = shares
                .iter()
                .filter(|s| live_of(&env.cfg.workspace_dir, &s.path).is_some())
                .map(|s| s.tag.clone())
                .collect();
            (!tags.is_empty()).then(|| (vm.clone(), tags))
        })
        .collect()
}

/// How many of `vm`'s shares through the changed entries are pinned (not live).
fn pinned_through(env: &Env, vm: &str, affected: &[Affected]) -> usize {
    affected
        .iter()
        .filter(|(v, _)| v == vm)
        .flat_map(|(_, shares)| shares)
        .filter(|s| live_of(&env.cfg.workspace_dir, &s.path).is_none())
        .count()
}

/// Shares of every known VM that pass through a changed entry; VMs whose shares cannot be
/// read (a runner that is not root's) come back apart, to be skipped with a warning.
fn affected(env: &Env, changed: &[Change]) -> (Vec<Affected>, Vec<Skipped>) {
    let names: Vec<&OsStr> = changed.iter().map(|c| OsStr::new(&c.name)).collect();
    let mut vms = Vec::new();
    let mut skipped = Vec::new();
    for vm in runner::known_vms(&env.tree, &env.cfg) {
        match runner::shares(&env.tree, &env.cfg, &vm) {
            Ok(shares) => {
                let shares: Vec<_> = shares
                    .into_iter()
                    .filter(|s| {
                        entry_name_of(&env.cfg.workspace_dir, &s.path)
                            .is_some_and(|n| names.contains(&n.as_os_str()))
                    })
                    .collect();
                if !shares.is_empty() {
                    vms.push((vm, shares));
                }
            }
            Err(e) => {
                let why = logging::one_line(&e);
                tracing::warn!(vm, "skipping VM {vm}: {why}");
                skipped.push((vm, why));
            }
        }
    }
    (vms, skipped)
}

/// Before relinking: every source [`ensure_affected`] will have to make afterwards, planned
/// as if `changed` were done, so that one that cannot be made fails the link before it
/// changes anything.
fn check_affected(env: &Env, affected: &[Affected], changed: &[Change]) -> Result<()> {
    let assume: Vec<(String, Option<PathBuf>)> = changed
        .iter()
        .map(|c| (c.name.clone(), c.target.clone()))
        .collect();
    for (vm, shares) in affected {
        prepare::plan_assuming(&env.tree, &env.cfg, vm, shares, &assume)?;
    }
    Ok(())
}

/// After relinking: the sources of every known VM that pass through a changed entry are
/// ensured at once (so `nixfiles/hosts/microvms/<host>` appears in the real repo). Other
/// VMs' runtime records are left alone, or their staleness would be hidden. A VM that cannot
/// be ensured is skipped with a warning: one bad VM does not stop the link of another.
fn ensure_affected(
    env: &Env,
    affected: &[Affected],
    dry_run: bool,
    skipped: &mut Vec<Skipped>,
) -> Vec<String> {
    let mut steps = Vec::new();
    for (vm, shares) in affected {
        match prepare::prepare_shares(&env.tree, &env.cfg, vm, shares, dry_run) {
            Ok(out) => steps.extend(
                out.actions
                    .iter()
                    .map(|a| format!("{}{vm}: {a}", if dry_run { "would, for " } else { "for " })),
            ),
            Err(e) => {
                let why = logging::one_line(&e);
                tracing::warn!(vm, "skipping VM {vm}: {why}");
                skipped.push((vm.clone(), why));
            }
        }
    }
    steps
}

/// Restarts `microvm@<vm>` and waits until it is active or failed.
fn restart_vm(env: &Env, vm: &str, skip: bool, progress: bool) -> Restart {
    if skip {
        return Restart::NotAsked;
    }
    if env.root.is_rerooted() {
        return Restart::Skipped {
            why: format!("re-rooted at {}", show(env.root.dir())),
        };
    }
    let unit = units::unit_name("microvm@", vm);
    let t0 = Instant::now();
    // A restart that cannot be waited for is a result to report, not a reason to skip the
    // rest (the stale list, the JSON).
    let state = systemd::restart_and_wait(&unit, RESTART_TIMEOUT, progress)
        .unwrap_or_else(|e| logging::one_line(&e));
    let secs = t0.elapsed().as_secs_f64();
    if state == "active" {
        Restart::Active { unit, secs }
    } else {
        Restart::Failed { unit, secs, state }
    }
}

/// Other VMs, running (or, when systemd cannot be asked, recorded), whose recorded sources
/// no longer resolve to what they did at their start.
fn stale_others(env: &Env, vm: &str, running: &status::Running) -> Vec<VmStatus> {
    record::recorded_vms(&env.tree)
        .into_iter()
        .filter(|other| other != vm)
        .filter_map(|other| {
            status::status_with(&env.tree, &env.cfg, &other, running.of(&other)).ok()
        })
        .filter(|s| s.stale && s.running != Some(false))
        .collect()
}
