//! microvm-link's relink: observe every changed entry, plan each (engine::plan: a link, an
//! unlink, the sudo-boundary policy first), then apply the plans under the workspace lock.
//! A pool's lease ([`lease`]) and its release ([`release`]) go the same way, their lease
//! records planned and applied with the link under the same lock.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::engine::apply::{apply, Applied, Log};
use crate::engine::entry::{Change, Relinked, Workspace};
use crate::engine::facts::{LeaseFacts, Slot};
use crate::engine::gitdir;
use crate::engine::guests::Guests;
use crate::engine::leases::{read_lease, remove_lease};
use crate::engine::observe::{self, Held, WantOf};
use crate::engine::plan::{self, EntryPlan, Intent, Op};
use crate::engine::policy;
use crate::engine::pool::{self, Choice, Released};
use crate::fs::chase::{Node, Tree, Trust, Walk};
use crate::fs::paths::{self, show};
use crate::host::caller::Caller;
use crate::model::config::Config;
use crate::model::names::{PoolName, VmName};
use crate::model::workspace::inside_workspace;

/// Links and unlinks `changes` for `caller`: every target resolved and checked and every
/// entry observed and planned first (every refusal comes before any change); then, unless
/// `dry_run`, each plan applied under the workspace lock. `<workspaceDir>/<name>` exists at
/// every instant: the placeholder, with or without a repo mounted on it. A user's real
/// directory in the way is moved aside, never deleted. A missing workspace dir is made first
/// (planned as such in a dry run, its entries planned as missing).
pub fn relink(
    tree: &Tree,
    cfg: &Config,
    changes: &[Change],
    caller: Caller,
    dry_run: bool,
) -> Result<Relinked> {
    let guests = Guests::of(cfg);
    let repos = check_targets(tree, &cfg.workspace_dir, &guests, changes, caller)?;
    let mut run = Session::open(tree, cfg, dry_run)?;
    let plans = run.plan(changes, &repos, caller)?;
    run.apply(changes, &plans, &[], &[])?;
    Ok(run.out)
}

/// A lease asked of pool `pool` (its VMs in order) for the worktree `worktree` (checked: a
/// directory of the caller's, outside the workspace dir).
pub struct LeaseAsk<'a> {
    pub pool: &'a PoolName,
    pub vms: &'a [VmName],
    pub worktree: &'a Node,
}

/// What a lease's choice means for the entries: the changes to make (link the chosen VM to
/// the worktree, unlink those of the released leases), or a refusal.
pub type ChangesFor<'a> = dyn FnMut(&Choice, &[Released]) -> Result<Vec<Change>> + 'a;

/// Called under the lock once everything is planned, before anything is written, with whose
/// work the chosen VM's guest may still hold (for a new lease: [`pool::previous_holder`]):
/// a guest that must be fresh is stopped here, before the worktree is shown to it. An error
/// refuses the lease.
pub type BeforeWrite<'a> = dyn FnMut(&Choice, Option<(u32, i64)>) -> Result<()> + 'a;

/// What a lease call did (or, in a dry run, would do).
#[derive(Debug)]
pub struct Leased {
    pub vm: VmName,
    /// A lease recorded now (else the worktree's own, found again).
    pub new: bool,
    pub owner: u32,
    pub worktree: PathBuf,
    /// When the lease was taken (unix seconds; now for a new one).
    pub since: i64,
    /// Leases of the pool whose worktree was gone, ended by this call.
    pub released: Vec<Released>,
    /// The changes made for it (link the VM to the worktree, unlink VMs of released leases).
    pub changes: Vec<Change>,
    pub relinked: Relinked,
}

/// Leases a VM of `ask.pool` for `ask.worktree`, holding the workspace lock from looking at
/// the leases to recording the new one, so two callers never get one VM: observe every VM's
/// lease and link, choose (engine::pool: the worktree's own lease, else the first free VM,
/// else a refusal naming every holder), ask `changes_for` what that means for the entries
/// (it may refuse: checks of what the change affects), plan them, call `before_write`, and
/// apply the lease record first, then the link, then the end of every lease whose worktree
/// is gone. A dry run plans the same from what it sees, without the lock.
pub fn lease(
    tree: &Tree,
    cfg: &Config,
    ask: &LeaseAsk,
    caller: Caller,
    dry_run: bool,
    changes_for: &mut ChangesFor,
    before_write: &mut BeforeWrite,
) -> Result<Leased> {
    let mut run = Session::open(tree, cfg, dry_run)?;
    let slots = match &run.ws {
        Some(ws) => ws.observe_pool(ask.vms, &mut run.held)?,
        None => ask
            .vms
            .iter()
            .map(|vm| Slot {
                vm: vm.clone(),
                lease: None,
                link: None,
                last: None,
            })
            .collect(),
    };
    let worktree = &ask.worktree.path;
    let decision = pool::choose(ask.pool, &slots, caller.uid(), worktree);
    let choice = decision.choice.clone()?;
    let own = slots.iter().find(|s| s.vm == *choice.vm());
    let previous = match choice {
        Choice::Take(_) => own.and_then(|s| pool::previous_holder(s, now())),
        Choice::Own(_) => None,
    };
    let changes = changes_for(&choice, &decision.released)?;
    let repos = check_targets(tree, &cfg.workspace_dir, &run.guests, &changes, caller)?;
    let plans = run.plan(&changes, &repos, caller)?;
    let leases = cfg.workspace_dir.join(paths::LEASES);
    let mut before = Vec::new();
    if let Choice::Take(vm) = &choice {
        if run.held.get(&leases).is_none() {
            before.push(Op::RootDir {
                path: leases.clone(),
                what: "",
            });
        }
        before.push(Op::WriteLease {
            at: leases.join(vm),
            worktree: worktree.clone(),
            owner: caller.uid(),
            pool: ask.pool.clone(),
        });
    }
    let after: Vec<Op> = decision
        .released
        .iter()
        .filter(|r| &r.vm != choice.vm())
        .map(|r| Op::RemoveLease {
            at: leases.join(&r.vm),
            why: "its worktree is gone",
        })
        .collect();
    before_write(&choice, previous)?;
    if let Err(e) = run.apply(&changes, &plans, &before, &[]) {
        // The link failed after the new lease was written: the lease goes too (a lease
        // without its link would hold the VM for nobody).
        if run
            .out
            .ops
            .iter()
            .any(|o| matches!(o, Op::WriteLease { .. }))
        {
            if let Some(dir) = run.held.get(&leases) {
                let _ = remove_lease(dir, OsStr::new(choice.vm().as_str()));
            }
        }
        return Err(e);
    }
    // The lease and its link stand; a gone lease that cannot be ended now is ended by a
    // later call.
    if let Err(e) = run.apply(&[], &[], &after, &[]) {
        tracing::warn!(
            "a lease whose worktree is gone was left: {}",
            crate::host::logging::one_line(&e)
        );
    }
    let since = match (&choice, own.and_then(|s| s.lease.as_ref())) {
        (Choice::Own(_), Some(l)) => l.since,
        _ => now(),
    };
    Ok(Leased {
        vm: choice.vm().clone(),
        new: matches!(choice, Choice::Take(_)),
        owner: caller.uid(),
        worktree: worktree.clone(),
        since,
        released: decision.released,
        changes,
        relinked: run.out,
    })
}

/// Ends the lease of pool VM `vm` for `caller` (only its holder or root, or anyone once its
/// worktree is gone: `policy::may_release`): the `changes` that unlink it are applied, then
/// the lease record removed, under the lock. `expect`: the worktree the caller found the
/// lease for (a lease of anything else now is refused). `None` when `vm` is not leased.
pub fn release(
    tree: &Tree,
    cfg: &Config,
    vm: &VmName,
    expect: Option<&Path>,
    changes: &[Change],
    caller: Caller,
    dry_run: bool,
) -> Result<Option<(LeaseFacts, Relinked)>> {
    let guests = Guests::of(cfg);
    let repos = check_targets(tree, &cfg.workspace_dir, &guests, changes, caller)?;
    let mut run = Session::open(tree, cfg, dry_run)?;
    let Some(ws) = &run.ws else { return Ok(None) };
    let dir = ws.leases()?;
    let Some(lease) = read_lease(dir.as_ref(), OsStr::new(vm.as_str()))? else {
        return Ok(None);
    };
    let facts = ws.lease_facts(&lease);
    if let Some(wt) = expect.filter(|wt| *wt != facts.worktree) {
        bail!(
            "{vm} is no longer leased for {}: its lease is for {} now",
            show(wt),
            show(&facts.worktree)
        );
    }
    policy::may_release(vm, &facts, caller)?;
    let at = ws.path().join(paths::LEASES).join(vm);
    if let Some(d) = dir {
        run.held.keep(d);
    }
    let plans = run.plan(changes, &repos, caller)?;
    let after = [Op::RemoveLease {
        at,
        why: "released",
    }];
    run.apply(changes, &plans, &[], &after)?;
    Ok(Some((facts, run.out)))
}

/// Now, in unix seconds.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One relink: the workspace dir (found, or made; in a dry run perhaps not there yet), its
/// lock (not in a dry run), what was observed, and what was done.
struct Session<'t> {
    tree: &'t Tree,
    cfg: &'t Config,
    guests: Guests,
    ws: Option<Workspace<'t>>,
    dry_run: bool,
    held: Held,
    out: Relinked,
    _lock: Option<OwnedFd>,
}

impl<'t> Session<'t> {
    fn open(tree: &'t Tree, cfg: &'t Config, dry_run: bool) -> Result<Session<'t>> {
        let mut out = Relinked::default();
        let ws = match Workspace::find(tree, cfg)? {
            Some(ws) => Some(ws),
            None => {
                let made = Op::RootDir {
                    path: cfg.workspace_dir.clone(),
                    what: "",
                };
                out.steps.push(match dry_run {
                    true => format!("would {made}"),
                    false => made.to_string(),
                });
                out.ops.push(made);
                match dry_run {
                    true => None,
                    false => Some(Workspace::ensure(tree, cfg)?),
                }
            }
        };
        let lock = match (&ws, dry_run) {
            (Some(ws), false) => Some(ws.lock()?),
            _ => None,
        };
        Ok(Session {
            tree,
            cfg,
            guests: Guests::of(cfg),
            ws,
            dry_run,
            held: Held::default(),
            out,
            _lock: lock,
        })
    }

    /// Every change observed and planned (a refusal before anything is applied).
    fn plan(
        &mut self,
        changes: &[Change],
        repos: &[Option<Node>],
        caller: Caller,
    ) -> Result<Vec<EntryPlan>> {
        let mut plans = Vec::new();
        for (c, repo) in changes.iter().zip(repos) {
            let name = OsStr::new(&c.name);
            let (want, intent) = match repo {
                Some(r) => (WantOf::Repo(r), Intent::Link(caller)),
                None => (WantOf::Nothing, Intent::Unlink(caller)),
            };
            let facts = match &self.ws {
                Some(ws) => ws.observe_entry(name, want, &mut self.held)?,
                None => observe::absent_entry(self.tree, self.cfg, &self.guests, name, want)?,
            };
            let mut p = plan::entry(&facts, &intent)?;
            // `.links` is made once, by the first change that needs it.
            p.ops.retain(|o| match o {
                Op::RootDir { path, .. } => !plans.iter().any(|q: &EntryPlan| {
                    q.ops.contains(&Op::RootDir {
                        path: path.clone(),
                        what: "",
                    })
                }),
                _ => true,
            });
            plans.push(p);
        }
        Ok(plans)
    }

    /// `before`, each plan in order, then `after`: applied, or in a dry run listed. What was
    /// done is in `out.ops` even when a step fails.
    fn apply(
        &mut self,
        changes: &[Change],
        plans: &[EntryPlan],
        before: &[Op],
        after: &[Op],
    ) -> Result<()> {
        let dry_run = self.dry_run;
        let mut applied = Applied::default();
        let res = (|| -> Result<()> {
            self.ops(before, &mut applied)?;
            for (c, p) in changes.iter().zip(plans) {
                self.out
                    .steps
                    .extend(p.summary.iter().map(|s| s.line(dry_run)));
                if !dry_run {
                    for w in &p.warnings {
                        tracing::warn!("{w}");
                    }
                }
                self.ops(&p.ops, &mut applied)?;
                // A live root that cannot follow is left as it is: the link stands.
                for l in &p.live {
                    if let Err(e) = self.ops(&l.ops, &mut applied) {
                        let why = crate::host::logging::one_line(&e);
                        tracing::warn!(path = %show(&l.root), "live root {} left as it is: {why}", show(&l.root));
                    }
                }
                if p.changed {
                    self.out.changed += 1;
                    self.out.changed_names.push(c.name.to_string());
                }
            }
            self.ops(after, &mut applied)
        })();
        self.out.displaced.append(&mut applied.displaced);
        self.out.ops.append(&mut applied.done);
        res
    }

    fn ops(&mut self, ops: &[Op], applied: &mut Applied) -> Result<()> {
        match &self.ws {
            Some(ws) if !self.dry_run => apply(ws, &mut self.held, ops, &Log::default(), applied),
            _ => {
                self.out
                    .steps
                    .extend(ops.iter().map(|o| format!("would {o}")));
                self.out.ops.extend(ops.iter().cloned());
                Ok(())
            }
        }
    }
}

/// Every target resolved and owner-checked before anything changes. The node checked here is
/// the one mounted (by descriptor): the owner check must be on it, not on an earlier look at
/// the same path, which a user can swap in between.
fn check_targets(
    tree: &Tree,
    workspace_dir: &Path,
    guests: &Guests,
    changes: &[Change],
    caller: Caller,
) -> Result<Vec<Option<Node>>> {
    let mut repos = Vec::new();
    for c in changes {
        repos.push(match &c.target {
            None => None,
            Some(t) => match tree.walk(t, Trust::Owners)? {
                // Not even root's: a link into an entry, a live root or a mount of ours would
                // point the tool at itself (and outlive every repo of its maker).
                Walk::Found(n) if n.path.starts_with(workspace_dir) => {
                    return Err(inside_workspace(&n.path, workspace_dir))
                }
                Walk::Found(n) if n.is_dir() => {
                    policy::may_link(&n.path, n.uid(), caller)?;
                    guests.check_mappable(OsStr::new(&c.name), &n)?;
                    check_git_file(tree, workspace_dir, &n)?;
                    Some(n)
                }
                _ => bail!("{} is not a directory", show(t)),
            },
        });
    }
    Ok(repos)
}

/// A repo whose `.git` is a file (a worktree, a submodule) is linked only if root may follow
/// it (docs/security.md#git-file): the git dir and common dir it names must be the repo
/// owner's, outside the workspace dir, reached through nobody else's symlinks.
fn check_git_file(tree: &Tree, workspace_dir: &Path, repo: &Node) -> Result<()> {
    if let gitdir::DotGit::File(f) = gitdir::find(tree, repo)? {
        gitdir::follow(tree, repo, f, workspace_dir)
            .with_context(|| format!("repo {}", show(&repo.path)))?;
    }
    Ok(())
}
