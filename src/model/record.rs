//! The runtime record `/run/microvm-workspaces/<vm>.json`: what each share's source resolved
//! to when the VM last started (docs/reference/runtime-record.md).
//!
//! Only prepare writes it; microvm-link, when it ensures other VMs' sources, leaves their
//! records alone or their staleness would be hidden.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode;

use crate::fs::chase::{self, Tree, Trust, Walk};
use crate::fs::dirs;
use crate::fs::failpoint::step;
use crate::fs::paths::{self, show, tmp_name};
use crate::model::config::user_label;
use crate::model::names::VmName;
use crate::model::runner::Share;

/// What a source was at this start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A directory that is not ours: left exactly as it is.
    Existing,
    /// One of our placeholders (found or created).
    Placeholder,
    /// Created just now, with the owner's credentials, inside a user's tree.
    CreatedInRepo,
    /// A live root: it follows every link change of its entry (docs/design.md#live-links).
    Live,
    /// The repo linked at its entry cannot serve it (a file there, a symlink out of the
    /// repo): a placeholder serves it, in this VM's namespace only (docs/design.md#fallback).
    Fallback,
}

/// One share after preparing: where its source resolved.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub share: Share,
    pub resolved: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub kind: Kind,
    /// What it shows, as prepare left it (what `status` later says the VM started on).
    pub shows: Shows,
}

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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VmRecord {
    pub vm: String,
    /// Seconds since the epoch when prepare ran.
    pub prepared_at: u64,
    pub shares: Vec<ShareRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShareRecord {
    pub tag: String,
    pub source: String,
    /// The absolute source path prepare worked on.
    pub path: String,
    /// Where it resolved (symlinks followed).
    pub resolved: String,
    pub device: u64,
    pub inode: u64,
    pub kind: Kind,
    /// What it showed, in words' terms (docs/reference/cli.md#status). Absent in records written
    /// before it existed: they still read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shows: Option<Shows>,
}

impl VmRecord {
    pub fn new(vm: &str, prepared: &[Prepared]) -> VmRecord {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        VmRecord {
            vm: vm.to_string(),
            prepared_at: now,
            shares: prepared
                .iter()
                .map(|p| ShareRecord {
                    tag: p.share.tag.clone(),
                    source: p.share.source.clone(),
                    // The path is read back to compute staleness, so it is stored as is
                    // (sources are UTF-8, checked when read); `resolved` is for people.
                    path: p.share.path.to_string_lossy().into_owned(),
                    resolved: show(&p.resolved),
                    device: p.dev,
                    inode: p.ino,
                    kind: p.kind,
                    shows: Some(p.shows.clone()),
                })
                .collect(),
        }
    }
}

pub fn record_path(vm: &str) -> PathBuf {
    Path::new(paths::RUNTIME_DIR).join(format!("{vm}.json"))
}

/// `vm`'s record as a file, under `root`: its mtime is when the VM last started (prepare
/// writes it anew at every start).
pub fn start_record(root: &paths::Root, vm: &str) -> Option<std::fs::Metadata> {
    std::fs::metadata(root.real(&record_path(vm))).ok()
}

/// Writes the record atomically: a new file under a temporary name in the runtime dir (a
/// trusted place), then renamed over the old record, all through the directory's descriptor.
pub fn write(tree: &Tree, rec: &VmRecord) -> Result<()> {
    let dir = dirs::ensure_root_dir(tree, Path::new(paths::RUNTIME_DIR))?;
    let path = record_path(&rec.vm);
    dirs::remove_dead_tmp_files(&dir);
    let tmp = tmp_name();
    // World-readable like the rest of /run: `microvm-link status` runs as a normal user too.
    let fd = openat(
        &dir.fd,
        &*tmp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .with_context(|| format!("cannot write in {}", show(&dir.path)))?;
    let mut text = serde_json::to_vec_pretty(rec)?;
    text.push(b'\n');
    // One write: serde_json emits token by token (this was about 80 system calls per share).
    let written = std::fs::File::from(fd)
        .write_all(&text)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            Ok(renameat(
                &dir.fd,
                &*tmp,
                &dir.fd,
                Path::new(path.file_name().expect("a file name")),
            )?)
        });
    if let Err(e) = written {
        let _ = nix::unistd::unlinkat(&dir.fd, &*tmp, nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(e).with_context(|| format!("cannot write {}", show(&path)));
    }
    step("write the runtime record");
    Ok(())
}

/// The record of `vm`, if there is one; only a root-owned file is believed.
pub fn read(tree: &Tree, vm: &str) -> Result<Option<VmRecord>> {
    let path = record_path(vm);
    match chase::read_trusted(tree, None, &path, 16 << 20)? {
        Some(t) => serde_json::from_slice(&t)
            .map(Some)
            .with_context(|| format!("runtime record {}", show(&path))),
        None => Ok(None),
    }
}

/// VMs that have a runtime record.
pub fn recorded_vms(tree: &Tree) -> Vec<VmName> {
    RuntimeDir::open(tree).vms()
}

/// The runtime dir, walked once ([`Trust::RootOwned`]) for reading many records (a link's
/// stale list reads every VM's); none when it is missing or not root's.
pub struct RuntimeDir(Option<chase::Node>);

impl RuntimeDir {
    /// Only a trusted place (root's, writable by nobody else, as the writer makes it) is
    /// taken: only root makes entries there.
    pub fn open(tree: &Tree) -> RuntimeDir {
        RuntimeDir(
            match tree.walk(Path::new(paths::RUNTIME_DIR), Trust::RootOwned) {
                Ok(Walk::Found(n)) if n.is_dir() && dirs::check_trusted_place(&n).is_ok() => {
                    Some(n)
                }
                _ => None,
            },
        )
    }

    /// VMs that have a record, sorted.
    pub fn vms(&self) -> Vec<VmName> {
        let Some(dir) = &self.0 else {
            return Vec::new();
        };
        let mut vms: Vec<VmName> = chase::list_dir(dir)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| VmName::try_from(n.to_str()?.strip_suffix(".json")?).ok())
            .collect();
        vms.sort();
        vms
    }

    /// `vm`'s record, as [`read`] reads it.
    pub fn read(&self, tree: &Tree, vm: &str) -> Result<Option<VmRecord>> {
        let Some(dir) = &self.0 else {
            return Ok(None);
        };
        let name = format!("{vm}.json");
        match chase::read_trusted_in(tree, dir, std::ffi::OsStr::new(&name), 16 << 20)? {
            Some(t) => serde_json::from_slice(&t)
                .map(Some)
                .with_context(|| format!("runtime record {}", show(&record_path(vm)))),
            None => Ok(None),
        }
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
