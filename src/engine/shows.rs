//! What a share source shows, in words (docs/reference/cli.md#status): a placeholder, a linked
//! repo (and whose), a directory, or nothing. Prepare records it at each start; `status`
//! says it again for now, and why a share is stale.

use std::path::Path;

use crate::engine::entry::Workspace;
use crate::fs::chase::{Tree, Trust, Walk};
use crate::fs::paths::show;
use crate::model::config::Config;
use crate::model::record::Shows;
use crate::model::workspace::entry_of;

/// The repo linked into the workspace entry `path` passes through, with the uid that linked
/// it: only when the entry shows that repo right now (a record alone is not a link).
pub fn linked_repo(tree: &Tree, cfg: &Config, path: &Path) -> Option<(String, u32)> {
    let name = entry_of(&cfg.workspace_dir, path)?;
    let rec = Workspace::find(tree, cfg).ok()??.shows_repo(name)?;
    Some((show(&rec.target), rec.owner))
}

/// What a live root shows: what `<workspaceDir>/<name>/<path>` shows (its `current`).
fn live_shows(tree: &Tree, cfg: &Config, path: &Path) -> Option<Shows> {
    let (name, rel) = crate::model::workspace::live_of(&cfg.workspace_dir, path)?.ok()?;
    let pinned = cfg.workspace_dir.join(name).join(rel);
    Some(match linked_repo(tree, cfg, &pinned) {
        Some((path, owner)) => Shows::Repo { path, owner },
        None => Shows::Placeholder,
    })
}

/// What the source at `path` shows now, and its `device:inode` (`None`: missing), resolved
/// as staleness resolves it (`Trust::All`). Only root can read the placeholder mark; for
/// anybody else a directory nobody may write to counts as one (display only, as in
/// `Workspace::view`).
pub fn now(tree: &Tree, cfg: &Config, path: &Path) -> (Shows, Option<(u64, u64)>) {
    let node = match tree.walk(path, Trust::All) {
        Ok(Walk::Found(n)) if n.is_dir() => n,
        _ => return (Shows::Missing, None),
    };
    let shows = if let Some(live) = live_shows(tree, cfg, path) {
        live
    } else if let Some((path, owner)) = linked_repo(tree, cfg, path) {
        Shows::Repo { path, owner }
    } else if node.is_placeholder()
        || (!nix::unistd::Uid::effective().is_root() && node.st.st_mode & 0o222 == 0)
    {
        Shows::Placeholder
    } else {
        Shows::Directory
    };
    (shows, Some(node.id()))
}
