//! Links: a workspace entry `<workspaceDir>/<name>` showing a repo.
//!
//! A link is two things (DESIGN.md section 4): a *record* `<workspaceDir>/.links/<name>`, a
//! symlink to the repo (owned by the user who linked it, so `ls -l` says who), which survives
//! reboots; and a *bind mount* of the repo onto `<workspaceDir>/<name>`, which is always a
//! real directory (a placeholder is the mountpoint). virtiofsd 1.14 refuses a source whose last
//! component is a symlink, so the record is never what a VM is given.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::fsafe::{self, is_mount_root, Node, Trust, Walk};
use crate::paths::{self, show};
use crate::prepare::Ctx;

/// A link record: where it points and who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub target: PathBuf,
    pub owner: u32,
}

/// What a workspace entry is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    /// Nothing there.
    Missing,
    /// A placeholder (with or without a record whose repo is gone).
    Placeholder,
    /// The recorded repo is mounted there.
    Linked,
    /// A directory that is not ours (a user's directory, or a mount without a record).
    Directory,
    /// A symlink from the shell era, not yet migrated.
    Legacy(PathBuf),
}

/// Reads `.links/<name>`; `None` when there is no record.
pub fn read_record(links: Option<&Node>, name: &OsStr) -> Result<Option<Record>> {
    let Some(links) = links else { return Ok(None) };
    let node = match links.child(name) {
        Ok(n) => n,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => {
            return Err(anyhow!(e))
                .with_context(|| format!("cannot open record {}", show(&links.path.join(name))))
        }
    };
    let target = nix::fcntl::readlinkat(&node.fd, "")
        .with_context(|| format!("record {} is not a symbolic link", show(&node.path)))?;
    Ok(Some(Record {
        target: PathBuf::from(target),
        owner: node.st.st_uid,
    }))
}

/// Writes `.links/<name>` atomically: symlink under a temporary name, owned by `owner`, then
/// renamed over the old record.
pub fn write_record(links: &Node, name: &OsStr, rec: &Record) -> Result<()> {
    let tmp = fsafe::tmp_name();
    let at = links.path.join(name);
    nix::unistd::symlinkat(&rec.target, &links.fd, &*tmp)
        .with_context(|| format!("cannot write record {}", show(&at)))?;
    let done = nix::unistd::fchownat(
        &links.fd,
        &*tmp,
        Some(nix::unistd::Uid::from_raw(rec.owner)),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .and_then(|_| nix::fcntl::renameat(&links.fd, &*tmp, &links.fd, name));
    if let Err(e) = done {
        let _ = nix::unistd::unlinkat(&links.fd, &*tmp, nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(anyhow!(e)).with_context(|| format!("cannot write record {}", show(&at)));
    }
    Ok(())
}

pub fn remove_record(links: &Node, name: &OsStr) -> Result<()> {
    match nix::unistd::unlinkat(&links.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(anyhow!(e))
            .with_context(|| format!("cannot remove record {}", show(&links.path.join(name)))),
    }
}

/// Bind-mounts `repo` onto `target`, both named by descriptor so no path can be swapped.
pub fn bind(repo: &Node, target: &Node) -> Result<()> {
    mount(
        Some(&repo.proc_path()),
        &target.proc_path(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "cannot bind-mount {} on {}",
            show(&repo.path),
            show(&target.path)
        )
    })
}

/// Detaches the mount at `real` (lazily, so a busy mount goes when its last user does).
pub fn unmount(real: &Path, shown: &Path) -> Result<()> {
    match umount2(real, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(anyhow!(e)).with_context(|| format!("cannot unmount {}", show(shown))),
    }
}

/// The name of the workspace entry a path passes through, if it lies under the workspace dir.
pub fn entry_of<'p>(workspace_dir: &Path, path: &'p Path) -> Option<&'p OsStr> {
    let name = path.strip_prefix(workspace_dir).ok()?.components().next()?;
    match name {
        std::path::Component::Normal(n) if !n.as_encoded_bytes().starts_with(b".") => Some(n),
        _ => None,
    }
}

impl Ctx<'_> {
    /// Makes workspace entry `name` agree with its record: migrates a legacy symlink, makes
    /// sure a placeholder is the mountpoint, mounts the recorded repo (or unmounts a repo that
    /// is gone). In a dry run it only plans, and remembers where the entry would lead.
    pub fn ensure_entry(&mut self, name: &OsStr) -> Result<EntryState> {
        let Some(ws) = self.workspace()? else {
            return Ok(EntryState::Missing);
        };
        let links = self.links_dir(&ws)?;
        let mut record = read_record(links.as_ref(), name)?;
        let at = ws.path.join(name);
        let mut entry = match ws.child(name) {
            Ok(n) => Some(n),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(anyhow!(e)).with_context(|| format!("cannot open {}", show(&at))),
        };

        if let Some(e) = entry.as_ref().filter(|e| !e.is_dir()) {
            let kind = e.st.st_mode & nix::libc::S_IFMT;
            if kind != nix::libc::S_IFLNK {
                bail!("{} exists but is not a directory", show(&at));
            }
            // The shell-era layout: a symlink right in the workspace dir. Becomes a record and
            // a placeholder in its place (atomically), then mounted like any link.
            let target = PathBuf::from(nix::fcntl::readlinkat(&e.fd, "")?);
            let target = paths::normalize(&ws.path.join(target));
            let rec = Record {
                target: target.clone(),
                owner: e.st.st_uid,
            };
            self.act(
                "migrate",
                &at,
                format!(
                    "legacy symlink to {} becomes a record and a placeholder",
                    show(&target)
                ),
            );
            if self.dry_run {
                record = Some(rec);
                entry = None;
                self.plan_placeholder(&at);
            } else {
                let links = match links.as_ref() {
                    Some(l) => l,
                    None => &fsafe::ensure_root_dir(self.tree, &ws.path.join(paths::LINKS))?,
                };
                write_record(links, name, &rec)?;
                let old = fsafe::swap_in_placeholder(&ws, name, self.spec)?;
                nix::unistd::unlinkat(&ws.fd, &*old, nix::unistd::UnlinkatFlags::NoRemoveDir)
                    .with_context(|| {
                        format!(
                            "cannot remove the old symlink {}",
                            show(&ws.path.join(&old))
                        )
                    })?;
                record = Some(rec);
                entry = Some(ws.child(name)?);
            }
        }

        let Some(rec) = record else {
            return Ok(match entry {
                None => EntryState::Missing,
                Some(e) if e.is_placeholder() => EntryState::Placeholder,
                Some(_) => EntryState::Directory,
            });
        };

        // A record: first the repo (so any refusal comes before any change), then the entry,
        // which must be a placeholder to mount on.
        let repo = match self.tree.walk(&rec.target, Trust::Owners) {
            Ok(Walk::Found(n)) if n.is_dir() => Some(n),
            Ok(_) => None,
            Err(e) if format!("{e:#}").contains("dangling") => None,
            Err(e) => return Err(e).with_context(|| format!("link {}", show(&at))),
        };
        if let Some(repo) = &repo {
            if rec.owner != 0 && repo.uid() != rec.owner {
                bail!(
                    "repo {} of link {} is owned by uid {}, but the link was made by uid {}; refusing to mount it",
                    show(&repo.path), show(&at), repo.uid(), rec.owner
                );
            }
        }
        let entry = match entry {
            Some(e) => e,
            None => {
                self.act("create-placeholder", &at, "mountpoint for the link".into());
                if self.dry_run {
                    self.plan_placeholder(&at);
                    return match repo {
                        Some(_) => self.plan_mount(&at, &rec),
                        None => Ok(EntryState::Placeholder),
                    };
                }
                fsafe::create_placeholder(&ws, name, self.spec)?
            }
        };
        let mounted = is_mount_root(entry.fd.as_fd())?;
        let Some(repo) = repo else {
            tracing::warn!(path = %show(&at), target = %show(&rec.target), action = "repo-gone",
                "the repo of link {} is gone; the placeholder serves", show(&at));
            if mounted {
                self.act(
                    "unmount",
                    &at,
                    format!("repo {} is gone", show(&rec.target)),
                );
                if !self.dry_run {
                    unmount(&self.tree.real_root.join(at.strip_prefix("/")?), &at)?;
                }
            }
            return Ok(EntryState::Placeholder);
        };
        if mounted && entry.id() == repo.id() && entry.st.st_nlink > 0 {
            return Ok(EntryState::Linked);
        }
        if mounted {
            self.act(
                "unmount",
                &at,
                "it shows something other than the recorded repo".into(),
            );
            if self.dry_run {
                return self.plan_mount(&at, &rec);
            }
            unmount(&self.tree.real_root.join(at.strip_prefix("/")?), &at)?;
        }
        let entry = if mounted { ws.child(name)? } else { entry };
        if !entry.is_placeholder() {
            tracing::warn!(path = %show(&at), "{} is a directory of its own, not a placeholder; not mounting the link over it (microvm-link moves it aside)", show(&at));
            return Ok(EntryState::Directory);
        }
        self.act("mount", &at, format!("repo {}", show(&repo.path)));
        if self.dry_run {
            return self.plan_mount(&at, &rec);
        }
        bind(&repo, &entry)?;
        Ok(EntryState::Linked)
    }

    fn plan_mount(&mut self, at: &Path, rec: &Record) -> Result<EntryState> {
        self.redirects.push((at.to_path_buf(), rec.target.clone()));
        Ok(EntryState::Linked)
    }

    /// `<workspaceDir>/.links`, if it exists.
    pub fn links_dir(&self, ws: &Node) -> Result<Option<Node>> {
        match ws.child(OsStr::new(paths::LINKS)) {
            Ok(n) if n.is_dir() => Ok(Some(n)),
            Ok(n) => bail!("{} is not a directory", show(&n.path)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(anyhow!(e))
                .with_context(|| format!("cannot open {}", show(&ws.path.join(paths::LINKS)))),
        }
    }
}
