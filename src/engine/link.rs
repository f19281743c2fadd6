//! microvm-link's relink: observe every changed entry, plan each (engine::plan: a link, an
//! unlink, the sudo-boundary policy first), then apply the plans under the workspace lock.

use std::ffi::OsStr;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::engine::apply::{apply, Applied, Log};
use crate::engine::entry::{Change, Relinked, Workspace};
use crate::engine::gitdir;
use crate::engine::guests::Guests;
use crate::engine::observe::{self, Held, WantOf};
use crate::engine::plan::{self, Intent, Op};
use crate::engine::policy;
use crate::fs::chase::{Node, Tree, Trust, Walk};
use crate::fs::paths::show;
use crate::host::caller::Caller;
use crate::model::config::Config;
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
    let _lock = match (&ws, dry_run) {
        (Some(ws), false) => Some(ws.lock()?),
        _ => None,
    };
    let mut held = Held::default();
    let mut plans = Vec::new();
    for (c, repo) in changes.iter().zip(&repos) {
        let name = OsStr::new(&c.name);
        let (want, intent) = match repo {
            Some(r) => (WantOf::Repo(r), Intent::Link(caller)),
            None => (WantOf::Nothing, Intent::Unlink(caller)),
        };
        let facts = match &ws {
            Some(ws) => ws.observe_entry(name, want, &mut held)?,
            None => observe::absent_entry(tree, cfg, &guests, name, want)?,
        };
        let mut p = plan::entry(&facts, &intent)?;
        // `.links` is made once, by the first change that needs it.
        p.ops.retain(|o| match o {
            Op::RootDir { path, .. } => !plans.iter().any(|(_, q): &(&Change, plan::EntryPlan)| {
                q.ops.contains(&Op::RootDir {
                    path: path.clone(),
                    what: "",
                })
            }),
            _ => true,
        });
        plans.push((c, p));
    }
    let mut applied = Applied::default();
    for (c, p) in &plans {
        out.steps.extend(p.summary.iter().map(|s| s.line(dry_run)));
        match &ws {
            Some(ws) if !dry_run => {
                for w in &p.warnings {
                    tracing::warn!("{w}");
                }
                apply(ws, &mut held, &p.ops, &Log::default(), &mut applied)?;
                // A live root that cannot follow is left as it is: the link stands.
                for l in &p.live {
                    if let Err(e) = apply(ws, &mut held, &l.ops, &Log::default(), &mut applied) {
                        tracing::warn!(path = %show(&l.root), "live root {} left as it is: {}", show(&l.root), crate::host::logging::one_line(&e));
                    }
                }
            }
            _ => {
                out.steps.extend(p.all_ops().map(|o| format!("would {o}")));
                out.ops.extend(p.all_ops().cloned());
            }
        }
        if p.changed {
            out.changed += 1;
            out.changed_names.push(c.name.to_string());
        }
    }
    out.displaced = applied.displaced;
    out.ops.append(&mut applied.done);
    Ok(out)
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
