//! What a share source shows, in words (docs/design.md#status): a placeholder, a linked
//! repo (and whose), a directory, or nothing. Prepare records it at each start; `status`
//! says it again for now, and why a share is stale.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chase::{Tree, Trust, Walk};
use crate::config::Config;
use crate::entry::{entry_of, user_label, Workspace};
use crate::paths::show;
use crate::prepare::{Kind, Prepared};

/// What a share source shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "is", rename_all = "kebab-case")]
pub enum Shows {
    /// One of our placeholders.
    Placeholder,
    /// A repo linked into a workspace entry the source passes through (`path` as shown,
    /// `owner` the uid that linked it).
    Repo { path: String, owner: u32 },
    /// Any other directory.
    Directory,
    /// Nothing, or not a directory.
    Missing,
    /// A placeholder in the VM's own namespace: the repo linked (by `owner`) at its entry
    /// could not serve the source (docs/design.md#fallback).
    Fallback { owner: u32 },
}

impl Shows {
    /// `placeholder`, `repo /home/alice/nixfiles`, `directory`, `missing`.
    pub fn words(&self) -> String {
        match self {
            Shows::Placeholder => "placeholder".into(),
            Shows::Repo { path, .. } => format!("repo {path}"),
            Shows::Directory => "directory".into(),
            Shows::Missing => "missing".into(),
            Shows::Fallback { owner } => format!(
                "placeholder ({}'s linked repo cannot serve it)",
                owner_name(*owner)
            ),
        }
    }

    /// As the subject of a sentence: "the placeholder", "alice's repo /home/alice/x".
    fn phrase(&self, with_path: bool) -> String {
        match self {
            Shows::Placeholder => "the placeholder".into(),
            Shows::Repo { path, owner } if with_path => {
                format!("{}'s repo {path}", owner_name(*owner))
            }
            Shows::Repo { owner, .. } => format!("{}'s repo", owner_name(*owner)),
            Shows::Directory => "a directory".into(),
            Shows::Missing => "nothing".into(),
            Shows::Fallback { .. } => "a placeholder of its own".into(),
        }
    }
}

/// "alice", or "uid 4242" when the user database does not know the uid.
pub fn owner_name(uid: u32) -> String {
    let label = user_label(uid);
    match label.split_once(" (uid ") {
        Some((name, _)) => name.to_string(),
        None => label,
    }
}

/// The repo linked into the workspace entry `path` passes through, with the uid that linked
/// it: only when the entry shows that repo right now (a record alone is not a link).
pub fn linked_repo(tree: &Tree, cfg: &Config, path: &Path) -> Option<(String, u32)> {
    let name = entry_of(&cfg.workspace_dir, path)?;
    let rec = Workspace::find(tree, cfg).ok()??.shows_repo(name)?;
    Some((show(&rec.target), rec.owner))
}

/// What a live root shows: what `<workspaceDir>/<name>/<path>` shows (its `current`).
fn live_shows(tree: &Tree, cfg: &Config, path: &Path) -> Option<Shows> {
    let (name, rel) = crate::entry::live_of(&cfg.workspace_dir, path)?.ok()?;
    let pinned = cfg.workspace_dir.join(name).join(rel);
    Some(match linked_repo(tree, cfg, &pinned) {
        Some((path, owner)) => Shows::Repo { path, owner },
        None => Shows::Placeholder,
    })
}

/// What a share showed as prepare left it (for the runtime record).
pub fn at_start(tree: &Tree, cfg: &Config, p: &Prepared) -> Shows {
    if p.kind == Kind::Placeholder {
        return Shows::Placeholder;
    }
    if p.kind == Kind::Fallback {
        let owner = linked_repo(tree, cfg, &p.share.path).map_or(0, |(_, o)| o);
        return Shows::Fallback { owner };
    }
    if let Some(live) = live_shows(tree, cfg, &p.share.path) {
        return live;
    }
    match linked_repo(tree, cfg, &p.share.path) {
        Some((path, owner)) => Shows::Repo { path, owner },
        None => Shows::Directory,
    }
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

/// Why a share is stale, in one line: what it started on, and what is there now.
/// `at_start` is `None` for records written before prepare recorded words.
pub fn why_stale(at_start: Option<&Shows>, now: &Shows) -> String {
    let Some(start) = at_start else {
        return match now {
            Shows::Missing => "the source is gone since the VM started".into(),
            _ => format!(
                "the source shows another directory than at start ({} now)",
                now.words()
            ),
        };
    };
    let started = format!("started on {}", start.phrase(true));
    match (start, now) {
        (_, Shows::Missing) => format!("{started}; the source is gone now"),
        (Shows::Repo { path: a, .. }, Shows::Repo { path: b, .. }) if a == b => {
            format!("{started}; it was replaced since by another directory at the same path")
        }
        (Shows::Placeholder, Shows::Placeholder) => {
            "started on a placeholder that was replaced since".into()
        }
        (Shows::Directory, Shows::Directory) => {
            "started on a directory that was replaced since".into()
        }
        (Shows::Repo { .. }, Shows::Placeholder) => {
            format!("{started}; unlinked since, the placeholder serves now")
        }
        (Shows::Placeholder, Shows::Repo { .. }) => {
            format!(
                "started on the placeholder; {} is linked now",
                now.phrase(false)
            )
        }
        (_, Shows::Repo { .. }) => format!("{started}; {} is linked now", now.phrase(true)),
        _ => format!("{started}; {} now", now.words()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(path: &str, owner: u32) -> Shows {
        Shows::Repo {
            path: path.into(),
            owner,
        }
    }

    #[test]
    fn words_are_the_documented_ones() {
        assert_eq!(Shows::Placeholder.words(), "placeholder");
        assert_eq!(
            repo("/home/alice/nixfiles", 0).words(),
            "repo /home/alice/nixfiles"
        );
        assert_eq!(Shows::Directory.words(), "directory");
        assert_eq!(Shows::Missing.words(), "missing");
    }

    #[test]
    fn the_reason_names_what_was_and_what_is() {
        let root = owner_name(0);
        assert_eq!(root, "root");
        assert_eq!(
            why_stale(Some(&Shows::Placeholder), &repo("/home/alice/x", 0)),
            "started on the placeholder; root's repo is linked now"
        );
        assert_eq!(
            why_stale(Some(&repo("/r/a", 0)), &repo("/r/b", 0)),
            "started on root's repo /r/a; root's repo /r/b is linked now"
        );
        assert_eq!(
            why_stale(Some(&repo("/r/a", 0)), &Shows::Placeholder),
            "started on root's repo /r/a; unlinked since, the placeholder serves now"
        );
        assert_eq!(
            why_stale(Some(&repo("/r/a", 0)), &repo("/r/a", 0)),
            "started on root's repo /r/a; it was replaced since by another directory at the same path"
        );
        assert_eq!(
            why_stale(Some(&Shows::Directory), &Shows::Missing),
            "started on a directory; the source is gone now"
        );
        assert_eq!(
            why_stale(Some(&Shows::Directory), &Shows::Placeholder),
            "started on a directory; placeholder now"
        );
        assert!(why_stale(None, &Shows::Directory).contains("directory now"));
    }

    #[test]
    fn an_unknown_uid_is_named_by_number() {
        assert_eq!(owner_name(4_000_000_000), "uid 4000000000");
    }

    #[test]
    fn the_record_form_is_tagged() {
        let j = serde_json::to_value(repo("/h/a", 7)).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"is": "repo", "path": "/h/a", "owner": 7})
        );
        let back: Shows = serde_json::from_value(serde_json::json!({"is": "placeholder"})).unwrap();
        assert_eq!(back, Shows::Placeholder);
    }
}
