//! Applying a plan (engine::plan): each operation in order, under the workspace lock, on
//! descriptors held since observing (engine::observe). Every operation first checks that
//! what it acts on is still what was seen (a placeholder is still one, a mount root has the
//! same identity, a directory to move aside still has the owner the policy allowed), so a
//! change made meanwhile fails the run instead of being acted upon.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::engine::entry::{Displaced, RepoNow, Workspace};
use crate::engine::gitview::{self, Place};
use crate::engine::leases::{end_lease, write_lease};
use crate::engine::links::{remove_record, write_record, Record};
use crate::engine::observe::Held;
use crate::engine::plan::Op;
use crate::fs::chase::{is_mount_root, Node, Trust, Walk};
use crate::fs::idmap::unmount;
use crate::fs::paths::{self, show};
use crate::fs::{dirs, placeholder, seal};
use crate::model::config::user_label;

/// What applying did besides the operations themselves.
#[derive(Debug, Default)]
pub struct Applied {
    /// The operations done, in order (a dry run's plan is exactly this list).
    pub done: Vec<Op>,
    pub displaced: Vec<Displaced>,
}

/// Labels for the journal lines of applied operations.
#[derive(Debug, Default, Clone)]
pub struct Log {
    pub vm: String,
    pub tag: String,
}

/// Applies `ops` in order. Stops at the first that fails; what was done stays done (each
/// operation leaves the workspace consistent: an entry exists at every instant, a mount
/// never stands without its record), and a failed mount puts the earlier record back.
pub fn apply(
    ws: &Workspace,
    held: &mut Held,
    ops: &[Op],
    log: &Log,
    out: &mut Applied,
) -> Result<()> {
    for op in ops {
        let a = op.action();
        tracing::info!(vm = %log.vm, tag = %log.tag, path = %show(&a.path), action = a.act.as_str(),
            "{} {} {}", a.act.as_str(), show(&a.path), a.detail);
        one(ws, held, op, out).map_err(|e| match out.displaced.last() {
            // What was moved aside stays there: say so, or the caller never hears of it.
            Some(d) if Path::new(&d.from) == op.path() => {
                e.context(format!("moved {} aside to {} first", d.from, d.to))
            }
            _ => e,
        })?;
        out.done.push(op.clone());
    }
    Ok(())
}

/// Runs `f`, which makes something in `dir`, with `dir`'s seal lifted meanwhile if it is a
/// directory of ours (a placeholder, or below `.live`): never anyone else's seal.
fn in_dir<T>(ws: &Workspace, dir: &Node, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match dir.is_placeholder() || below_live(ws, &dir.path) {
        true => seal::opened(dir, f),
        false => f(),
    }
}

/// Is `path` strictly below `<workspaceDir>/.live`?
fn below_live(ws: &Workspace, path: &Path) -> bool {
    path.strip_prefix(ws.path().join(paths::LIVE))
        .is_ok_and(|r| r.components().next().is_some())
}

/// The directory holding `path`, as held.
fn parent<'h>(held: &'h Held, path: &'h Path) -> Result<(&'h Node, &'h OsStr)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        bail!("{} has no parent", show(path));
    };
    let node = held.get(dir).with_context(|| {
        format!(
            "{}: its directory {} was not looked at",
            show(path),
            show(dir)
        )
    })?;
    Ok((node, name))
}

fn open(held: &Held, path: &Path) -> Result<Node> {
    let (dir, name) = parent(held, path)?;
    dir.child(name)
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("cannot open {}", show(path)))
}

fn one(ws: &Workspace, held: &mut Held, op: &Op, out: &mut Applied) -> Result<()> {
    match op {
        Op::RootDir { path, .. } => {
            let n = match below_live(ws, path) {
                // Guests see it (a live root, its parents, a room for a git dir): made in a
                // parent whose seal is lifted meanwhile, and sealed as it is made.
                true => {
                    let up = path.parent().context("a live root has a parent")?;
                    let dir = match held.get(up) {
                        Some(d) => d.try_clone()?,
                        None => match ws.tree.walk(up, Trust::Owners)? {
                            Walk::Found(d) if d.is_dir() => d,
                            _ => bail!("{}: its directory is not there", show(path)),
                        },
                    };
                    let n = in_dir(ws, &dir, || dirs::ensure_root_dir(ws.tree, path))?;
                    seal::seal(&n)?;
                    n
                }
                false => dirs::ensure_root_dir(ws.tree, path)?,
            };
            held.keep(n);
        }
        Op::Placeholder { path, spec, .. } => {
            let (dir, name) = parent(held, path)?;
            let n = in_dir(ws, dir, || {
                if dir.uid() == 0 {
                    // A placeholder is built under a temporary name in its directory; a run
                    // killed doing so left one behind here, where only this step ever looks
                    // (the leaf is still missing). We hold the lock: such names are leftovers.
                    dirs::remove_leftovers(dir)?;
                }
                placeholder::create(dir, name, *spec)
            })?;
            held.keep(n);
        }
        Op::Mkdir { path, uid, gid } => {
            let (dir, name) = parent(held, path)?;
            let n = dirs::mkdir_as(dir, name, *uid, *gid)?;
            held.keep(n);
        }
        Op::Migrate { at, target, owner } => {
            let name = write_record_of(ws, held, at, target, *owner)?;
            ws.replace_symlink(name)?;
            held.keep(ws.node.child(name)?);
        }
        Op::ReplaceSymlink { at } => {
            let name = at.file_name().context("an entry has a name")?;
            ws.replace_symlink(name)?;
            held.keep(ws.node.child(name)?);
        }
        Op::MoveAside { at, owner } => {
            let name = at.file_name().context("an entry has a name")?;
            let entry = ws.node.child(name)?;
            if !entry.is_dir()
                || entry.is_placeholder()
                || is_mount_root(entry.fd.as_fd())?
                || entry.uid() != *owner
            {
                bail!("{} changed meanwhile; not moving it aside", show(at));
            }
            // `.displaced` first, so that failing to make it (a full disk) changes nothing.
            ws.displaced_dir()?;
            let old = placeholder::swap_in(&ws.node, name, ws.spec)?;
            let to = ws.move_aside(&old, name)?;
            // The report says it to the caller; the journal keeps it (info, not a second
            // line on the caller's terminal).
            tracing::info!(path = %show(at), "moved the directory {} of {} aside to {}", show(at), user_label(*owner), show(&to));
            out.displaced.push(Displaced {
                from: show(at),
                to: show(&to),
                owner: *owner,
            });
            held.keep(ws.node.child(name)?);
        }
        Op::WriteRecord {
            at, target, owner, ..
        } => {
            write_record_of(ws, held, at, target, *owner)?;
        }
        Op::RemoveRecord { at } => {
            let links = records_dir(ws, held)?;
            remove_record(links, at.file_name().context("an entry has a name")?)?;
        }
        Op::WriteLease {
            at,
            worktree,
            owner,
            ..
        } => {
            let (dir, name) = parent(held, at)?;
            write_lease(dir, name, worktree, *owner)?;
        }
        Op::RemoveLease { at, .. } => {
            let (dir, name) = parent(held, at)?;
            end_lease(dir, name)?;
        }
        Op::Unmount { at, id, .. } => {
            let n = open(held, at)?;
            if n.id() != *id || !is_mount_root(n.fd.as_fd())? {
                bail!("{} changed meanwhile; not unmounting it", show(at));
            }
            unmount(&n)?;
            held.keep(open(held, at)?);
        }
        Op::Mount {
            at,
            entry,
            repo,
            repo_id,
            ids,
            git,
            live,
        } => {
            let target = open(held, at)?;
            if !target.is_placeholder() || is_mount_root(target.fd.as_fd())? {
                bail!("{} is not a placeholder under its mount", show(at));
            }
            // A live view's git dir goes beside it, in its live root.
            let place = match *live {
                true => Place::Live(parent(held, at)?.0),
                false => Place::Entry,
            };
            let r = held
                .get(repo)
                .with_context(|| format!("{} was not looked at", show(repo)))?;
            if repo_id.is_some_and(|id| r.id() != id) {
                bail!("{} changed meanwhile; not mounting it", show(repo));
            }
            if let Err(e) = gitview::mount(ws.tree, &ws.node, entry, r, &target, ids, *git, place) {
                rollback(ws, held, at, out);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Writes the link record of the entry at `at`; returns the entry's name.
fn write_record_of<'a>(
    ws: &Workspace,
    held: &Held,
    at: &'a Path,
    target: &Path,
    owner: u32,
) -> Result<&'a OsStr> {
    let name = at.file_name().context("an entry has a name")?;
    let record = Record {
        target: target.to_path_buf(),
        owner,
    };
    write_record(records_dir(ws, held)?, name, &record)?;
    Ok(name)
}

/// The records' directory (`.links`), held since it was looked at (or made by this plan).
fn records_dir<'h>(ws: &Workspace, held: &'h Held) -> Result<&'h Node> {
    held.get(&ws.path().join(crate::fs::paths::LINKS))
        .context("the records' directory was not looked at")
}

/// A link's mount failed: its record goes back to what it was, and so does the mount (no
/// record names what is not mounted because mounting it failed).
fn rollback(ws: &Workspace, held: &Held, at: &Path, out: &Applied) {
    let Some(Op::WriteRecord { before, .. }) = out
        .done
        .iter()
        .rev()
        .find(|o| matches!(o, Op::WriteRecord { at: a, .. } if a == at))
    else {
        return;
    };
    let Ok(links) = records_dir(ws, held) else {
        return;
    };
    let Some(name) = at.file_name() else { return };
    let _ = match before {
        Some((target, owner)) => write_record(
            links,
            name,
            &Record {
                target: target.clone(),
                owner: *owner,
            },
        ),
        None => remove_record(links, name),
    };
    if let Some((target, owner)) = before {
        let rec = Record {
            target: target.clone(),
            owner: *owner,
        };
        if let (RepoNow::Found(old), Ok(entry)) = (ws.repo_now(&rec), ws.node.child(name)) {
            if let Ok(ids) = ws.ids_for(name, &old) {
                let git = ws.guest_of(name).map(|g| g.git).unwrap_or_default();
                let _ = gitview::mount(
                    ws.tree,
                    &ws.node,
                    name,
                    &old,
                    &entry,
                    &ids,
                    git,
                    Place::Entry,
                );
            }
        }
    }
}
