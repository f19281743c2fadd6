//! What a VM's guest sees of ours is sealed (`fs::seal`): after prepare, each of its sources
//! that is a placeholder or a live root is swept (`seal::sweep`): every directory there,
//! down to the first mount (a linked repo, a git view), is sealed, and anything else, which
//! only a guest can have written, is quarantined. New placeholders and live-root directories
//! are sealed as they are made; this pass seals what an older version made, what a killed
//! run left lifted, and deals with what a guest wrote meanwhile. It looks without the lock
//! and takes it only when something needs doing, so a start whose sources are all sealed
//! still never takes it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::engine::entry::Workspace;
use crate::fs::chase::{Node, Tree, Trust, Walk};
use crate::fs::paths::{self, show};
use crate::fs::seal::{self, Sweep};
use crate::model::action::{Act, Action};
use crate::model::config::Config;
use crate::model::record::{Kind, Prepared};

/// How [`seal_served`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing {
    /// Say what it would do; change nothing.
    DryRun,
    /// The caller holds the workspace lock.
    Locked,
    /// Takes the workspace lock if something needs doing.
    LockIfNeeded,
}

/// A source to sweep: `id` is what prepare found there, if it looked.
pub struct Served {
    pub path: PathBuf,
    pub id: Option<(u64, u64)>,
}

/// The sources among `prepared` that are ours: placeholders and live roots.
pub fn served(prepared: &[Prepared]) -> Vec<Served> {
    prepared
        .iter()
        .filter(|p| matches!(p.kind, Kind::Placeholder | Kind::Live))
        .map(|p| Served {
            path: p.resolved.clone(),
            id: Some((p.dev, p.ino)),
        })
        .collect()
}

/// Seals (and sweeps) what the guest of `vm` sees of ours through `sources`. Returns what it
/// sealed and quarantined (would, in a dry run), each once.
pub fn seal_served(
    tree: &Tree,
    cfg: &Config,
    vm: &str,
    sources: &[Served],
    how: Sealing,
) -> Result<Vec<Action>> {
    let roots = roots(tree, cfg, sources);
    let look = sweep_all(&roots, Sweep::Look).with_context(|| format!("VM {vm}"))?;
    if look.is_empty() || how == Sealing::DryRun {
        return Ok(look);
    }
    // Under the lock: our own changes lift seals only while holding it. (No workspace dir:
    // the sources are placeholders elsewhere, and nobody holds a lock to lift them.)
    let ws = match how {
        Sealing::LockIfNeeded => Workspace::find(tree, cfg)?,
        _ => None,
    };
    let _lock = ws.as_ref().map(|ws| ws.lock()).transpose()?;
    let done = sweep_all(&roots, Sweep::Act).with_context(|| format!("VM {vm}"))?;
    for a in &done {
        match a.act {
            Act::Quarantine | Act::RemovePlanted => {
                tracing::warn!(vm, path = %show(&a.path), action = a.act.as_str(), "{a}: a guest made it where a seal was missing")
            }
            _ => {
                tracing::info!(vm, path = %show(&a.path), action = a.act.as_str(), "sealed {}", show(&a.path))
            }
        }
    }
    Ok(done)
}

/// The sources to sweep, each once and each ours: a placeholder, or below `.live` (a live
/// root), still what prepare found there. A source nested in another is swept with it.
fn roots(tree: &Tree, cfg: &Config, sources: &[Served]) -> Vec<Node> {
    // As the walk resolves it (a symlink in the configured path), like the sources.
    let ws = match tree.walk(&cfg.workspace_dir, Trust::Owners) {
        Ok(Walk::Found(n)) => n.path,
        _ => cfg.workspace_dir.clone(),
    };
    let live = ws.join(paths::LIVE);
    let mut roots: Vec<Node> = Vec::new();
    for s in sources {
        let node = match tree.walk(&s.path, Trust::Owners) {
            Ok(Walk::Found(n)) if n.is_dir() && s.id.is_none_or(|id| n.id() == id) => n,
            // Changed since prepare looked, or not there yet (a dry run): the next start
            // sweeps what is there then.
            _ => continue,
        };
        let ours = node.is_placeholder() || below(&node.path, &live);
        if ours && !roots.iter().any(|r| below_or_at(&node.path, &r.path)) {
            roots.retain(|r| !below_or_at(&r.path, &node.path));
            roots.push(node);
        }
    }
    roots
}

fn sweep_all(roots: &[Node], how: Sweep) -> Result<Vec<Action>> {
    let mut out = Vec::new();
    for r in roots {
        let swept = seal::sweep(r, how)?;
        let action = |act, path| Action {
            act,
            path,
            detail: String::new(),
        };
        out.extend(
            swept
                .quarantined
                .into_iter()
                .map(|p| action(Act::Quarantine, p)),
        );
        out.extend(
            swept
                .removed
                .into_iter()
                .map(|p| action(Act::RemovePlanted, p)),
        );
        out.extend(swept.sealed.into_iter().map(|p| action(Act::Seal, p)));
    }
    Ok(out)
}

/// Is `path` strictly below `dir`?
fn below(path: &Path, dir: &Path) -> bool {
    path.strip_prefix(dir)
        .is_ok_and(|r| r.components().next().is_some())
}

fn below_or_at(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}
