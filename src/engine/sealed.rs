//! What a VM's guest sees of ours is sealed (`fs::seal`): after prepare, every placeholder and
//! live-root directory below each of its placeholder or live sources, down to the first mount
//! (a linked repo, a git view), carries the immutable flag. New placeholders are sealed as they
//! are made; this pass seals what an older version made, and what a killed run left lifted.
//! It looks without the lock and takes it only when something needs sealing, so a start whose
//! sources are all sealed still never takes it.

use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};

use crate::engine::entry::Workspace;
use crate::fs::chase::{is_mount_root, list_dir, Node, Tree, Trust, Walk};
use crate::fs::paths::{self, show};
use crate::fs::seal::{self, State};
use crate::model::action::{Act, Action};
use crate::model::config::Config;
use crate::model::record::{Kind, Prepared};

/// How [`seal_served`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing {
    /// Say what it would seal; change nothing.
    DryRun,
    /// Seal; the caller holds the workspace lock.
    Locked,
    /// Seal, taking the lock if something needs it.
    Unlocked,
}

/// Seals what the guest of `vm` sees of ours through `prepared`'s sources. Returns the
/// directories it sealed (would seal, in a dry run).
pub fn seal_served(
    tree: &Tree,
    cfg: &Config,
    vm: &str,
    prepared: &[Prepared],
    how: Sealing,
) -> Result<Vec<Action>> {
    let mut open = Vec::new();
    for p in prepared {
        let live = match p.kind {
            Kind::Placeholder => false,
            Kind::Live => true,
            _ => continue,
        };
        let node = match tree.walk(&p.resolved, Trust::Owners)? {
            Walk::Found(n) if n.is_dir() && n.id() == (p.dev, p.ino) => n,
            // Changed since prepare looked: the next start seals what is there then.
            _ => continue,
        };
        unsealed_below(node, live, &mut open)?;
    }
    let action = |n: Node| Action {
        act: Act::Seal,
        path: n.path,
        detail: String::new(),
    };
    let _lock = match how {
        _ if open.is_empty() => return Ok(Vec::new()),
        Sealing::DryRun => return Ok(open.into_iter().map(action).collect()),
        Sealing::Locked => None,
        Sealing::Unlocked => match Workspace::find(tree, cfg)? {
            Some(ws) => Some(ws.lock()?),
            None => return Ok(Vec::new()),
        },
    };
    let mut done = Vec::new();
    for n in open {
        // Looked at without the lock: a run that held it may have sealed it since.
        if seal::seal(&n).with_context(|| format!("VM {vm}"))? {
            tracing::info!(vm, path = %show(&n.path), action = Act::Seal.as_str(), "sealed {}", show(&n.path));
            done.push(action(n));
        }
    }
    Ok(done)
}

/// Collects `dir` and every directory of ours below it that is not sealed: placeholders, and
/// in a live root its directories of root's (nested live roots, `current`, the room for a git
/// dir). Never crosses a mount, nor enters a temporary name.
fn unsealed_below(dir: Node, live: bool, out: &mut Vec<Node>) -> Result<()> {
    let ours = dir.is_placeholder() || (live && dir.uid() == 0);
    if !ours {
        return Ok(());
    }
    for name in list_dir(&dir)? {
        // A killed run's half-made placeholder: the next change in `dir` removes it, which
        // a seal would forbid.
        if name.as_bytes().starts_with(paths::TMP_PREFIX.as_bytes()) {
            continue;
        }
        let Ok(child) = dir.child(&name) else {
            continue;
        };
        if child.is_dir() && !is_mount_root(std::os::fd::AsFd::as_fd(&child.fd))? {
            unsealed_below(child, live, out)?;
        }
    }
    if seal::state(&dir)? == State::Open {
        out.push(dir);
    }
    Ok(())
}
