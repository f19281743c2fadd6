//! microvm-link's flow (docs/reference/cli.md#microvm-link): who asks, which entries change, the
//! relink, the sources of every VM through the changed entries, the restart, and the other
//! running VMs left stale. [`link`] and [`unlink`] share it and return a typed [`Outcome`].

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd::pool::{self, LeaseReport, LeaseView, ReleasedLease};
use crate::cmd::status::{self, VmStatus};
use crate::engine::entry::{Change, Relinked, Workspace};
use crate::engine::link::LeaseAsk;
use crate::engine::policy;
use crate::engine::pool::{Choice, Released};
use crate::fs::chase::{Node, Tree, Trust, Walk};
use crate::fs::paths::{self, show, Root};
use crate::host::caller::{self, Caller};
use crate::model::action::Action;
use crate::model::config::Config;
use crate::model::names::{EntryName, PoolName, SshDest, VmName};
use crate::model::workspace::{self, entry_name_of, live_of};
use crate::{
    engine::prepare, host::logging, host::ssh, host::systemd, host::units, model::record,
    model::runner,
};

/// How long a restart may take before we stop waiting (microvm.nix's default start timeout).
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(150);

/// A VM left out (its sources could not be ensured: a runner that is not root's), and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub vm: String,
    pub why: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped VM {}: {}", self.vm, self.why)
    }
}

/// Every VM's shares, as read once by [`affected`].
type AllShares = BTreeMap<VmName, Vec<runner::Share>>;

/// A VM and its shares through the changed entries.
type Affected = (String, Vec<runner::Share>);

/// Everything one run of microvm-link works with.
pub struct Env {
    pub root: Root,
    pub tree: Tree,
    pub cfg: Config,
    /// Who asked (see [`caller::invoking_user`]).
    pub caller: Caller,
}

impl Env {
    pub fn open(root: Option<&Path>, user_flag: Option<&str>) -> Result<Env> {
        let caller = caller::invoking_user(user_flag)?;
        let root = Root::from_args(root)?;
        let tree = Tree::open(&root)?;
        let cfg = Config::load(&tree)?;
        Ok(Env {
            root,
            tree,
            cfg,
            caller,
        })
    }

    /// `vm` is known (a runner or a config entry).
    pub fn known_vm(&self, vm: &VmName) -> Result<()> {
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
            return Err(workspace::inside_workspace(
                &node.path,
                &self.cfg.workspace_dir,
            ));
        }
        if !self.caller.may_use(node.uid()) {
            bail!(
                "repo {} is owned by uid {}, not by you ({}); you may only link your own repos",
                show(&node.path),
                node.uid(),
                self.caller
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
pub fn derive_vm_name(repo: &Path) -> Result<VmName> {
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
    VmName::try_from(name.trim_matches('-')).with_context(|| {
        format!(
            "from the repo directory {}; name the VM explicitly",
            show(repo)
        )
    })
}

/// The VM for `repo` when none is named: the one named after its directory
/// ([`derive_vm_name`]); for a worktree or a submodule checkout (`.git` a file) whose own name
/// is no VM, the one named after its main repo (the directory holding the git dir its `.git`
/// file leads to); else an error naming both.
pub fn vm_for(env: &Env, repo: &Node) -> Result<VmName> {
    let own = derive_vm_name(&repo.path);
    if let Ok(vm) = &own {
        if env.known_vm(vm).is_ok() {
            return Ok(vm.clone());
        }
    }
    let main = match crate::engine::gitdir::find(&env.tree, repo)? {
        crate::engine::gitdir::DotGit::File(f) => {
            let gf = crate::engine::gitdir::follow(&env.tree, repo, f, &env.cfg.workspace_dir)
                .with_context(|| format!("repo {}", show(&repo.path)))?;
            crate::engine::gitdir::main_repo(&gf.common.path)
        }
        // Not a worktree: its own name, and the error saying which VMs there are.
        _ => {
            let vm = own?;
            env.known_vm(&vm)?;
            return Ok(vm);
        }
    };
    let of_main = derive_vm_name(&main);
    if let Ok(vm) = &of_main {
        if env.known_vm(vm).is_ok() {
            return Ok(vm.clone());
        }
    }
    let name = |n: &Result<VmName>| match n {
        Ok(v) => v.to_string(),
        Err(_) => "(none: not a valid name)".to_string(),
    };
    let known = runner::known_vms(&env.tree, &env.cfg);
    bail!(
        "no VM for {}: neither {} (after its directory) nor {} (after its main repo {}) is a known VM (known VMs: {}); name the VM",
        show(&repo.path),
        name(&own),
        name(&of_main),
        show(&main),
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )
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
    pub ssh: Option<SshDest>,
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
        destination: SshDest,
    },
    Ready {
        target: ssh::Target,
        secs: f64,
    },
    Failed {
        destination: SshDest,
        why: String,
    },
    /// A destination nobody chose (the module's default) gave no answer: said, not a failure.
    Unanswered {
        destination: SshDest,
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

/// How long a destination nobody chose is waited for (docs/reference/cli.md#ssh-wait): long enough
/// for a VM that boots quickly and runs sshd, short against a 150 s restart budget.
pub const DEFAULT_DESTINATION_WAIT: Duration = Duration::from_secs(15);

/// The SSH destination of `vm`: `--ssh`, else the config's `ssh` (both chosen by someone),
/// else its `sshDefault` (the module's guess).
pub fn ssh_destination(
    env: &Env,
    vm: &VmName,
    given: Option<&SshDest>,
) -> Option<ssh::Destination> {
    let chosen = |name: &SshDest| ssh::Destination {
        name: name.clone(),
        chosen: true,
    };
    let v = env.cfg.vm(vm);
    given
        .map(chosen)
        .or_else(|| v.and_then(|v| v.ssh.as_ref()).map(chosen))
        .or_else(|| {
            v.and_then(|v| v.ssh_default.as_ref())
                .map(|name| ssh::Destination {
                    name: name.clone(),
                    chosen: false,
                })
        })
}

/// Waits for `vm`'s SSH banner, resolving the destination as the invoking user's ssh does.
/// A destination someone chose is waited for up to `--ssh-timeout` and fails the run when it
/// stays silent; a default one is waited for briefly (not at all when its name does not
/// resolve) and never fails it.
pub fn wait_for_ssh(env: &Env, vm: &VmName, opts: &Options) -> SshWait {
    let given = opts.ssh.as_ref();
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
    let user = ssh::as_user(env.caller);
    let target = match ssh::resolve(&dest.name, user.as_ref()) {
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
    match ssh::wait_for_banner(&target, user.as_ref(), timeout, opts.progress, !dest.chosen) {
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
    pub vm: VmName,
    /// Who asked.
    #[serde(skip)]
    pub caller: Caller,
    pub repo: Option<String>,
    pub dry_run: bool,
    pub changes: Vec<Change>,
    #[serde(flatten)]
    pub relinked: Relinked,
    pub ensured: Vec<String>,
    /// VMs whose sources could not be ensured (a runner that is not root's), and why.
    pub skipped: Vec<Skipped>,
    pub link_ms: f64,
    pub restart: Restart,
    #[serde(serialize_with = "stale_json")]
    pub stale: Vec<VmStatus>,
    /// Stale VMs `--restart-stale` restarted.
    pub restarted_stale: Vec<RestartedStale>,
    /// Stale VMs `--restart-stale` left alone for this caller, and why.
    pub stale_kept: Vec<StaleKept>,
    /// Running VMs that see the change now through live shares.
    pub live: Vec<LiveVm>,
    pub ssh: SshWait,
    /// `--pool`: the lease (new, or the worktree's own found again).
    pub lease: Option<LeaseReport>,
    /// Leases this run ended (`release`; a lease call ends those whose worktree is gone).
    pub released: Vec<ReleasedLease>,
    /// The VM was (re)started for its new holder: its guest ran someone else's work.
    pub fresh_guest: Option<FreshGuest>,
}

/// A stale VM `--restart-stale` restarted, and how that ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RestartedStale {
    pub vm: VmName,
    pub restart: Restart,
}

/// A stale VM `--restart-stale` left alone for this caller, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StaleKept {
    pub vm: VmName,
    pub why: String,
}

/// A running VM that sees the change now through live shares, and those shares' tags.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LiveVm {
    pub vm: String,
    pub tags: Vec<String>,
}

/// A stale VM in the `--json` report: whether it runs, and its stale shares' tags.
#[derive(Debug, serde::Serialize)]
struct StaleVm<'a> {
    vm: &'a VmName,
    running: Option<bool>,
    tags: Vec<String>,
}

fn stale_json<S: serde::Serializer>(stale: &[VmStatus], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(stale.iter().map(|v| StaleVm {
        vm: &v.vm,
        running: v.running,
        tags: stale_tags(v),
    }))
}

fn stale_tags(s: &VmStatus) -> Vec<String> {
    s.shares
        .iter()
        .filter(|x| x.stale)
        .map(|x| x.tag.clone())
        .collect()
}

impl Outcome {
    /// Prints it: a warning line per skipped VM on stderr, then the report (one line per
    /// fact) or, with `json`, the outcome as JSON on stdout.
    pub fn print(&self, json: bool) -> Result<()> {
        for s in &self.skipped {
            eprintln!("microvm-link: warning: {s}");
        }
        match json {
            true => println!("{}", serde_json::to_string_pretty(self)?),
            false => self.lines().iter().for_each(|l| println!("{l}")),
        }
        Ok(())
    }

    /// Success unless a restart this run asked for failed.
    pub fn success(&self) -> bool {
        !self.restart.failed()
            && !self.restarted_stale.iter().any(|r| r.restart.failed())
            && !matches!(self.ssh, SshWait::Failed { .. })
    }

    /// The report for people, one line per fact.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        // What was in the way first: it was moved before anything was linked.
        for d in &self.relinked.displaced {
            let whose = match d.owner == self.caller.uid() {
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
        out.extend(self.released.iter().map(|r| r.line(self.dry_run)));
        out.extend(self.lease.iter().map(|l| l.line(self.dry_run)));
        out.extend(self.relinked.steps.iter().chain(&self.ensured).cloned());
        if let Some(f) = &self.fresh_guest {
            let who = crate::model::config::user_name(f.uid);
            let vm = &self.vm;
            out.push(match (&self.restart, f.stopped) {
                _ if f.no_restart => format!(
                    "warning: {vm} ran {who}'s work since its start and is not restarted (--no-restart): what runs there for them sees this worktree, writing as you"
                ),
                _ if self.dry_run => format!(
                    "{vm} ran {who}'s work since its start: would be stopped before the link and started afresh"
                ),
                (Restart::Active { .. }, true) => format!(
                    "{vm} ran {who}'s work since its start: stopped before the link and started afresh, so that nothing of it meets this worktree"
                ),
                (Restart::Active { .. }, false) => format!(
                    "{vm} ran {who}'s work since its start: restarted, so that nothing of it meets this worktree"
                ),
                (_, true) => format!(
                    "{vm} ran {who}'s work since its start: stopped before the link; its start is below"
                ),
                (_, false) => format!(
                    "warning: {vm} ran {who}'s work since its start and was not restarted: what runs there for them sees this worktree, writing as you"
                ),
            });
        }
        out.extend(self.restart.line(&self.vm));
        out.extend(self.ssh.line(&self.vm));
        for LiveVm { vm, tags } in self.live.iter().filter(|l| l.vm != self.vm) {
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
            let kept = self.stale_kept.iter().find(|k| k.vm == s.vm);
            match self.restarted_stale.iter().find(|r| r.vm == s.vm) {
                Some(r) => out.push(format!(
                    "{} was stale ({tags}): {}",
                    s.vm,
                    r.restart.line(&s.vm).unwrap_or_default()
                )),
                None if kept.is_some() => out.push(format!(
                    "stale: {} still sees the old directory for {tags}; not restarted for you: {}",
                    s.vm,
                    kept.map(|k| k.why.as_str()).unwrap_or_default()
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
pub fn link_changes(env: &Env, vm: &VmName, repo: &Path) -> Vec<Change> {
    let mut out = vec![Change {
        name: EntryName::from(vm.clone()),
        target: Some(repo.to_path_buf()),
    }];
    for (name, rel) in env.cfg.companions.get(vm).into_iter().flatten() {
        let target = paths::normalize(&repo.join(rel));
        let usable = match env.tree.walk(&target, Trust::Owners) {
            Ok(Walk::Found(n)) => n.is_dir() && env.caller.may_use(n.uid()),
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
pub fn unlink_changes(env: &Env, vm: &VmName) -> Vec<Change> {
    std::iter::once(EntryName::from(vm.clone()))
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
pub fn link(env: &Env, vm: Option<VmName>, repo: Option<&Path>, opts: Options) -> Result<Outcome> {
    let repo = env.repo(repo)?;
    let vm = match vm {
        Some(v) => v,
        None => vm_for(env, &repo)?,
    };
    env.known_vm(&vm)?;
    policy::may_link_by_hand(&vm, env.cfg.pool_of(&vm).map(|p| p.as_str()), env.caller)?;
    let mut changes = link_changes(env, &vm, &repo.path);
    if opts.if_needed && linked_to(env, &vm, &repo)? {
        changes.clear();
    }
    run(env, &vm, Some(show(&repo.path)), changes, opts)
}

/// Does entry `vm` show `repo` now (its record names it, and the very directory is mounted)?
fn linked_to(env: &Env, vm: &str, repo: &Node) -> Result<bool> {
    let Some(ws) = Workspace::find(&env.tree, &env.cfg)? else {
        return Ok(false);
    };
    Ok(ws.shows_repo(OsStr::new(vm)).is_some_and(|rec| {
        rec.target == repo.path
            && ws
                .node
                .child(OsStr::new(vm))
                .is_ok_and(|e| e.id() == repo.id())
    }))
}

/// Unlinks `vm`: its placeholder (and its companions') serve again.
pub fn unlink(env: &Env, vm: &VmName, opts: Options) -> Result<Outcome> {
    env.known_vm(vm)?;
    policy::may_link_by_hand(vm, env.cfg.pool_of(vm).map(|p| p.as_str()), env.caller)?;
    let changes = unlink_changes(env, vm);
    run(env, vm, None, changes, opts)
}

/// Leases a VM of `pool` for the worktree `repo` (default: the repo around the working
/// directory; see [`Env::repo`]) and links it there: the worktree's own lease if it holds
/// one, else the pool's first free VM, chosen and recorded under the workspace lock
/// (`engine::link::lease`); leases of the pool whose worktree is gone end on the way. A
/// running VM sees the worktree through its live share at once (no restart); a stopped one
/// is started. As `--if-needed`: a VM that shows the worktree already is not linked again.
pub fn lease(env: &Env, pool: &PoolName, repo: Option<&Path>, opts: Options) -> Result<Outcome> {
    let t0 = Instant::now();
    let vms = pool::vms_of(&env.cfg, pool)?;
    pool::check_live_shares(&env.tree, &env.cfg, pool)?;
    let repo = env.repo(repo)?;
    let ask = LeaseAsk {
        pool,
        vms,
        worktree: &repo,
    };
    let mut checked = Checked::default();
    let mut fresh = None;
    let mut stopped: Option<VmName> = None;
    let mut changes_for = |choice: &Choice, released: &[Released]| -> Result<Vec<Change>> {
        let vm = choice.vm();
        let mut changes = match linked_to(env, vm, &repo)? {
            true => Vec::new(),
            false => link_changes(env, vm, &repo.path),
        };
        for r in released.iter().filter(|r| &r.vm != vm) {
            changes.extend(unlink_changes(env, &r.vm));
        }
        // Checked under the lock, before anything changes.
        checked = check_affected(env, &changes)?;
        Ok(changes)
    };
    // A guest that must be fresh is stopped before the worktree is shown to it: what ran
    // there must never see it, not even for the seconds of a restart.
    let mut before_write = |choice: &Choice, previous: Option<(u32, i64)>| -> Result<()> {
        if let Choice::Take(vm) = choice {
            fresh = fresh_guest(env, vm, env.caller.uid(), previous);
            if let Some(f) = fresh.as_mut() {
                f.no_restart = opts.no_restart;
                if !opts.dry_run && !opts.no_restart {
                    f.stopped = stop_for_fresh_guest(env, vm)?;
                    stopped = f.stopped.then(|| vm.clone());
                }
            }
        }
        Ok(())
    };
    let leased = crate::engine::link::lease(
        &env.tree,
        &env.cfg,
        &ask,
        env.caller,
        opts.dry_run,
        &mut changes_for,
        &mut before_write,
    );
    // Stopped for a fresh guest, then the lease failed: say that it stays stopped.
    let leased = match (leased, stopped) {
        (Err(e), Some(vm)) => {
            return Err(e.context(format!(
                "{vm} was stopped for a fresh guest and is left stopped (the next lease starts it)"
            )))
        }
        (leased, _) => leased?,
    };
    let view = |vm: &VmName, l: &crate::engine::facts::LeaseFacts| LeaseView::of(&env.cfg, vm, l);
    let report = LeaseReport {
        lease: view(
            &leased.vm,
            &crate::engine::facts::LeaseFacts {
                worktree: leased.worktree.clone(),
                owner: leased.owner,
                since: leased.since,
                gone: false,
            },
        ),
        new: leased.new,
    };
    let released = leased
        .released
        .iter()
        .map(|r| ReleasedLease {
            lease: view(&r.vm, &r.lease),
            why: Some("its worktree is gone".into()),
        })
        .collect();
    let opts = Options {
        if_needed: true,
        ..opts
    };
    let done = Done {
        vm: &leased.vm,
        repo: Some(show(&repo.path)),
        changes: leased.changes,
        relinked: leased.relinked,
        checked,
        fresh,
    };
    let mut out = finish(env, done, opts, t0);
    out.lease = Some(report);
    out.released = released;
    Ok(out)
}

/// Ends a lease: of `vm`, or (none given) the caller's lease for the worktree around the
/// working directory. Only its holder or root may, or anyone once its worktree is gone
/// (`policy::may_release`). The VM is unlinked (its placeholder serves, seen at once through
/// its live share; it keeps running) and the lease record removed, under the lock.
pub fn release(env: &Env, vm: Option<VmName>, opts: Options) -> Result<Outcome> {
    let t0 = Instant::now();
    let (vm, expect) = match vm {
        Some(vm) => {
            env.known_vm(&vm)?;
            (vm, None)
        }
        None => {
            let repo = env.repo(None)?;
            let mut own = pool::own_leases(&env.tree, &env.cfg, env.caller.uid(), &repo.path)?;
            match own.len() {
                0 => bail!(
                    "no VM is leased for {} by you; name the VM to release (microvm-link status lists the leases)",
                    show(&repo.path)
                ),
                1 => (own.remove(0).0, Some(repo.path)),
                _ => bail!(
                    "{} holds several leases ({}); name the VM to release",
                    show(&repo.path),
                    own.iter()
                        .map(|(vm, _)| vm.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let changes = unlink_changes(env, &vm);
    let checked = check_affected(env, &changes)?;
    let done = crate::engine::link::release(
        &env.tree,
        &env.cfg,
        &vm,
        expect.as_deref(),
        &changes,
        env.caller,
        opts.dry_run,
    )?;
    let Some((facts, relinked)) = done else {
        // Nothing changes: only the shares are of use (the stale list).
        let checked = Checked {
            shares: checked.shares,
            ..Checked::default()
        };
        let done = Done::of(&vm, None, Vec::new(), Relinked::default(), checked);
        let mut out = finish(env, done, opts, t0);
        out.restart = Restart::NotAsked;
        out.relinked
            .steps
            .push(format!("{vm} is not leased; nothing to release"));
        return Ok(out);
    };
    let lease = LeaseView::of(&env.cfg, &vm, &facts);
    let mut out = finish(
        env,
        Done::of(&vm, None, changes, relinked, checked),
        opts,
        t0,
    );
    out.released.push(ReleasedLease {
        lease,
        why: facts.gone.then(|| "its worktree is gone".into()),
    });
    Ok(out)
}

fn run(
    env: &Env,
    vm: &VmName,
    repo: Option<String>,
    changes: Vec<Change>,
    opts: Options,
) -> Result<Outcome> {
    let t0 = Instant::now();
    // Everything that can be checked is checked before anything changes.
    let checked = check_affected(env, &changes)?;
    let caller = env.caller;
    let relinked =
        crate::engine::link::relink(&env.tree, &env.cfg, &changes, caller, opts.dry_run)?;
    Ok(finish(
        env,
        Done::of(vm, repo, changes, relinked, checked),
        opts,
        t0,
    ))
}

/// What a relink did, for [`finish`]: the VM, its repo, the changes and their outcome, what
/// [`check_affected`] found and planned, and whether the VM needs a fresh guest.
struct Done<'a> {
    vm: &'a VmName,
    repo: Option<String>,
    changes: Vec<Change>,
    relinked: Relinked,
    checked: Checked,
    fresh: Option<FreshGuest>,
}

impl<'a> Done<'a> {
    fn of(
        vm: &'a VmName,
        repo: Option<String>,
        changes: Vec<Change>,
        relinked: Relinked,
        checked: Checked,
    ) -> Self {
        Done {
            vm,
            repo,
            changes,
            relinked,
            checked,
            fresh: None,
        }
    }
}

/// After the relink: ensure what it affects, restart (or not), wait for SSH, report stale VMs.
fn finish(env: &Env, done: Done, opts: Options, t0: Instant) -> Outcome {
    let Done {
        vm,
        repo,
        changes,
        relinked,
        checked,
        fresh,
    } = done;
    // The runners were read once, by the check: they are not what a link changes.
    let Checked {
        shares,
        affected,
        mut skipped,
        planned,
    } = checked;
    // A dry run says what the check planned as if the change were made: what the act ensures.
    let ensured = match opts.dry_run {
        true => planned
            .iter()
            .flat_map(|(vm, steps)| steps.iter().map(move |a| format!("would, for {vm}: {a}")))
            .collect(),
        false => ensure_affected(env, &affected, &mut skipped),
    };
    let link_ms = t0.elapsed().as_secs_f64() * 1000.0;
    // systemd is asked once, about every VM this link looks at (issue 19).
    let records = record::RuntimeDir::open(&env.tree);
    let running = ask_running(env, vm, &affected, &records);
    let live = live_views(env, &affected, &running);
    let own_live = live.iter().find(|(v, _)| v == vm);
    let fresh = fresh.filter(|f| f.stopped || is_running(&running, vm));
    let restart = if opts.no_restart || opts.dry_run {
        Restart::NotAsked
    } else if fresh.is_some() {
        // A new holder of a pool VM that ran someone else's work: a fresh guest.
        restart_vm(env, vm, false, opts.progress)
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
    let stale = stale_others(env, vm, &shares, &running, &records);
    let mut restarted_stale = Vec::new();
    let mut stale_kept = Vec::new();
    if opts.restart_stale && !opts.dry_run {
        for s in &stale {
            match stale_by_others(env, &relinked.changed_names, s) {
                None => restarted_stale.push(RestartedStale {
                    vm: s.vm.clone(),
                    restart: restart_vm(env, &s.vm, false, opts.progress),
                }),
                Some(why) => stale_kept.push(StaleKept {
                    vm: s.vm.clone(),
                    why,
                }),
            }
        }
    }
    Outcome {
        caller: env.caller,
        vm: vm.clone(),
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
        live: live
            .into_iter()
            .map(|(vm, tags)| LiveVm { vm, tags })
            .collect(),
        ssh,
        lease: None,
        released: Vec::new(),
        fresh_guest: fresh,
    }
}

/// A pool VM leased to a new holder whose guest has run someone else's work since its start
/// (`engine::pool::previous_holder`): restarted, so that nothing left of it meets the new
/// holder's worktree, which the guest writes as its holder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FreshGuest {
    /// Whose work it ran.
    pub uid: u32,
    /// Stopped before the link (then started): it never showed the worktree to that work.
    pub stopped: bool,
    /// Left running as it is (`--no-restart`).
    #[serde(skip)]
    pub no_restart: bool,
}

/// Whether the new lease of `vm` for `owner` needs a fresh guest: its previous holder was
/// someone else, and that ended after the VM's current start (its runtime record's mtime).
fn fresh_guest(
    env: &Env,
    vm: &VmName,
    owner: u32,
    previous: Option<(u32, i64)>,
) -> Option<FreshGuest> {
    let (uid, ended) = previous.filter(|(uid, _)| *uid != owner)?;
    let fresh = FreshGuest {
        uid,
        stopped: false,
        no_restart: false,
    };
    // When the start cannot be told, the guest is taken to have run that work.
    let started = record::start_record(&env.root, vm)
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64);
    match started {
        Some(started) if ended < started => None,
        _ => Some(fresh),
    }
}

/// Stops `vm` for a fresh guest, unless systemd says it is not running; `false` when it was
/// not (or, re-rooted, there is no systemd of that tree to ask).
fn stop_for_fresh_guest(env: &Env, vm: &VmName) -> Result<bool> {
    if env.root.is_rerooted() {
        return Ok(false);
    }
    let unit = units::unit_name("microvm@", vm);
    let state = systemd::unit_states(std::slice::from_ref(&unit));
    if let Some(Some(s)) = state.as_ref().and_then(|s| s.first()) {
        if matches!(
            s.active,
            systemd::ActiveState::Inactive | systemd::ActiveState::Failed
        ) {
            return Ok(false);
        }
    }
    systemd::stop(&unit)
        .with_context(|| format!("cannot stop {vm} for a fresh guest; nothing was leased"))?;
    Ok(true)
}

/// Why `--restart-stale` leaves `s` alone for this caller: a stale share of it passes
/// through an entry that someone else links, or that this run did not change (only they, or
/// root, restart VMs for their links). `None`: the caller may restart it.
fn stale_by_others(env: &Env, changed: &[String], s: &VmStatus) -> Option<String> {
    if env.caller.is_root() {
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
        match crate::engine::links::read_record(links.as_ref(), &name) {
            Ok(Some(rec)) if env.caller.may_use(rec.owner) => {}
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

fn is_stale(env: &Env, vm: &VmName) -> bool {
    // Whether it runs plays no part in `stale`: systemd is not asked.
    status::status_with(&env.tree, &env.cfg, vm, None).is_ok_and(|s| s.stale)
}

/// Whether `microvm@<vm>` runs, of everything a link looks at: `vm`, the VMs with shares
/// through the changed entries, and every VM with a runtime record (the stale list), in one
/// `systemctl show`. Re-rooted, systemd is not asked.
fn ask_running(
    env: &Env,
    vm: &str,
    affected: &[Affected],
    records: &record::RuntimeDir,
) -> status::Running {
    let mut vms: Vec<String> = affected.iter().map(|(v, _)| v.clone()).collect();
    vms.push(vm.to_string());
    vms.extend(records.vms().iter().map(|v| v.to_string()));
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
                .filter(|s| matches!(live_of(&env.cfg.workspace_dir, &s.path), Some(Ok(_))))
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
        .filter(|s| !matches!(live_of(&env.cfg.workspace_dir, &s.path), Some(Ok(_))))
        .count()
}

/// Shares of every known VM that pass through a changed entry; VMs whose shares cannot be
/// read (a runner that is not root's) come back apart, to be skipped with a warning.
fn affected(env: &Env, changed: &[Change]) -> (AllShares, Vec<Affected>, Vec<Skipped>) {
    let names: Vec<&OsStr> = changed.iter().map(|c| OsStr::new(&c.name)).collect();
    let mut all = BTreeMap::new();
    let mut vms = Vec::new();
    let mut skipped = Vec::new();
    // Each VM's runner read once (a name without one has no shares but the config's); kept
    // for the stale list.
    for vm in runner::candidates(&env.tree, &env.cfg) {
        match runner::shares(&env.tree, &env.cfg, &vm) {
            Ok(shares) => {
                let through: Vec<_> = shares
                    .iter()
                    .filter(|s| {
                        entry_name_of(&env.cfg.workspace_dir, &s.path)
                            .is_some_and(|n| names.contains(&n.as_os_str()))
                    })
                    .cloned()
                    .collect();
                if !through.is_empty() {
                    vms.push((vm.to_string(), through));
                }
                all.insert(vm, shares);
            }
            Err(e) => {
                let why = logging::one_line(&e);
                tracing::warn!(vm = vm.as_str(), "skipping VM {vm}: {why}");
                skipped.push(Skipped {
                    vm: vm.to_string(),
                    why,
                });
            }
        }
    }
    (all, vms, skipped)
}

/// What [`check_affected`] found before a link: every known VM's shares (for the stale
/// list), those through the changed entries, the VMs skipped, and each affected VM's planned
/// steps (a dry run prints them as what the link would ensure).
#[derive(Default)]
struct Checked {
    shares: AllShares,
    affected: Vec<Affected>,
    skipped: Vec<Skipped>,
    planned: Vec<(String, Vec<Action>)>,
}

/// Before relinking: every source [`ensure_affected`] will have to make afterwards, planned
/// as if `changed` were done, so that one that cannot be made fails the link before it
/// changes anything.
fn check_affected(env: &Env, changed: &[Change]) -> Result<Checked> {
    let (shares, affected, skipped) = affected(env, changed);
    let assume: Vec<(String, Option<PathBuf>)> = changed
        .iter()
        .map(|c| (c.name.to_string(), c.target.clone()))
        .collect();
    let mut planned = Vec::new();
    let mut carry = prepare::Carry::default();
    for (vm, through) in &affected {
        let steps = prepare::plan_assuming(&env.tree, &env.cfg, vm, through, &assume, &mut carry)?;
        planned.push((vm.clone(), steps));
    }
    Ok(Checked {
        shares,
        affected,
        skipped,
        planned,
    })
}

/// After relinking: the sources of every known VM that pass through a changed entry are
/// ensured at once (so `nixfiles/hosts/microvms/<host>` appears in the real repo). Other
/// VMs' runtime records are left alone, or their staleness would be hidden. A VM that cannot
/// be ensured is skipped with a warning: one bad VM does not stop the link of another.
fn ensure_affected(env: &Env, affected: &[Affected], skipped: &mut Vec<Skipped>) -> Vec<String> {
    let mut steps = Vec::new();
    for (vm, shares) in affected {
        match prepare::prepare_shares(&env.tree, &env.cfg, vm, shares, false) {
            Ok(out) => steps.extend(out.actions.iter().map(|a| format!("for {vm}: {a}"))),
            Err(e) => {
                let why = logging::one_line(&e);
                tracing::warn!(vm, "skipping VM {vm}: {why}");
                skipped.push(Skipped {
                    vm: vm.clone(),
                    why,
                });
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
fn stale_others(
    env: &Env,
    vm: &str,
    shares: &AllShares,
    running: &status::Running,
    records: &record::RuntimeDir,
) -> Vec<VmStatus> {
    records
        .vms()
        .into_iter()
        .filter(|other| other != vm)
        // Only a VM that is stale gets its whole status (words, its entry): the cost of the
        // others is the record, the runner and one walk per share.
        .filter(|other| match shares.get(other) {
            Some(current) => status::is_stale_vm(&env.tree, &env.cfg, records, other, current),
            None => {
                let current = runner::shares(&env.tree, &env.cfg, other).unwrap_or_default();
                status::is_stale_vm(&env.tree, &env.cfg, records, other, &current)
            }
        })
        .filter_map(|other| {
            status::status_with(&env.tree, &env.cfg, &other, running.of(&other)).ok()
        })
        .filter(|s| s.stale && s.running != Some(false))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::entry::{EntryView, State};
    use crate::model::config::GitMode;

    fn vm(n: &str) -> VmName {
        VmName::try_from(n).unwrap()
    }

    /// Every list in `microvm-link --json` is of objects with named fields, never of tuples.
    #[test]
    fn the_json_report_names_every_field() {
        let stale = VmStatus {
            vm: vm("web"),
            running: Some(true),
            workspace: EntryView {
                state: State::Linked,
                target: None,
            },
            shares: Vec::new(),
            stale: true,
            guest: status::GuestView {
                idmap: true,
                uid: Some(1000),
                git: GitMode::Private,
            },
        };
        let out = Outcome {
            vm: vm("vm1"),
            caller: Caller::Root,
            repo: Some("/home/alice/vm1".into()),
            dry_run: false,
            changes: Vec::new(),
            relinked: Relinked::default(),
            ensured: Vec::new(),
            skipped: vec![Skipped {
                vm: "evil".into(),
                why: "runner is not root's".into(),
            }],
            link_ms: 1.0,
            restart: Restart::NotAsked,
            stale: vec![stale],
            restarted_stale: vec![RestartedStale {
                vm: vm("web"),
                restart: Restart::Skipped {
                    why: "re-rooted".into(),
                },
            }],
            stale_kept: vec![StaleKept {
                vm: vm("db"),
                why: "linked by uid 4343".into(),
            }],
            live: vec![LiveVm {
                vm: "testvm".into(),
                tags: vec!["nixfiles".into()],
            }],
            ssh: SshWait::NotAsked,
            lease: None,
            released: Vec::new(),
            fresh_guest: None,
        };
        let v = serde_json::to_value(&out).unwrap();
        assert_eq!(v["vm"], "vm1");
        assert_eq!(
            v["skipped"],
            serde_json::json!([{"vm": "evil", "why": "runner is not root's"}])
        );
        assert_eq!(
            v["restartedStale"],
            serde_json::json!([{"vm": "web", "restart": {"result": "skipped", "why": "re-rooted"}}])
        );
        assert_eq!(
            v["staleKept"],
            serde_json::json!([{"vm": "db", "why": "linked by uid 4343"}])
        );
        assert_eq!(
            v["live"],
            serde_json::json!([{"vm": "testvm", "tags": ["nixfiles"]}])
        );
        assert_eq!(
            v["stale"],
            serde_json::json!([{"vm": "web", "running": true, "tags": []}])
        );
        assert_eq!(
            out.skipped[0].to_string(),
            "skipped VM evil: runner is not root's"
        );
    }
}
