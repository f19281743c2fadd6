//! The workspace dir's layout, as names: which workspace entry a share source passes through
//! (`<workspaceDir>/<name>/...`, or a live root `<workspaceDir>/.live/<name>/...`), and the
//! refusal of a repo inside it. Pure functions of paths.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::fs::paths::{self, show, LIVE_CURRENT};
use crate::model::names::EntryName;

/// The live root a share source names: `<workspaceDir>/.live/<name>[/<path>]` gives the
/// entry name and the path below it. `Err` for a live source that is not valid (an entry
/// name that is not one, or `current` or `.microvm-git` in the path, which would be
/// ambiguous).
pub fn live_of(workspace_dir: &Path, source: &Path) -> Option<Result<(OsString, PathBuf)>> {
    let rest = source.strip_prefix(workspace_dir.join(paths::LIVE)).ok()?;
    let mut parts = rest.components();
    let name = match parts.next() {
        Some(std::path::Component::Normal(n)) => n.to_os_string(),
        _ => {
            return Some(Err(anyhow!(
                "{} names no workspace entry below {}",
                show(source),
                paths::LIVE
            )))
        }
    };
    let rel: PathBuf = parts.as_path().to_path_buf();
    let check = || -> Result<()> {
        let n = name.to_str().with_context(|| {
            format!("live source {}: the entry name is not UTF-8", show(source))
        })?;
        EntryName::try_from(n).with_context(|| format!("live source {}", show(source)))?;
        if let Some(c) = rel
            .components()
            .find(|c| c.as_os_str() == LIVE_CURRENT || c.as_os_str() == paths::GIT_ROOM)
        {
            bail!(
                "live source {} has a component named {}, which would be ambiguous",
                show(source),
                show(Path::new(c.as_os_str()))
            );
        }
        Ok(())
    };
    Some(check().map(|()| (name, rel)))
}

/// The name of the workspace entry a path passes through, if it lies under the workspace dir.
pub fn entry_of<'p>(workspace_dir: &Path, path: &'p Path) -> Option<&'p OsStr> {
    let name = path.strip_prefix(workspace_dir).ok()?.components().next()?;
    match name {
        std::path::Component::Normal(n) if !n.as_encoded_bytes().starts_with(b".") => Some(n),
        _ => None,
    }
}

/// The entry a share source goes through: `<workspaceDir>/<name>/...` (pinned) or the live
/// root `<workspaceDir>/.live/<name>/...`.
pub fn entry_name_of(workspace_dir: &Path, path: &Path) -> Option<OsString> {
    entry_of(workspace_dir, path)
        .map(OsStr::to_os_string)
        .or_else(|| live_of(workspace_dir, path)?.ok().map(|(n, _)| n))
}

/// The refusal of a repo path inside the workspace dir `ws` (checked before anything else
/// about it: through an idmapped entry its owner is the guest's uid, not the linker's).
pub fn inside_workspace(repo: &Path, ws: &Path) -> anyhow::Error {
    anyhow!(
        "{} is inside the workspace dir {}: a repo is never an entry, a live root or a mount made by microvm-link",
        show(repo),
        show(ws)
    )
}
