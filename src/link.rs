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
use nix::mount::{mount, MsFlags};

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
    fsafe::step("symlink a temporary record");
    // The new link is opened once and chowned through that descriptor.
    let done = links
        .child(&tmp)
        .map_err(anyhow::Error::from)
        .and_then(|n| {
            rustix::fs::chownat(
                &n.fd,
                "",
                Some(rustix::fs::Uid::from_raw(rec.owner)),
                None,
                rustix::fs::AtFlags::EMPTY_PATH | rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )?;
            Ok(nix::fcntl::renameat(&links.fd, &*tmp, &links.fd, name)?)
        });
    if let Err(e) = done {
        let _ = nix::unistd::unlinkat(&links.fd, &*tmp, nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(anyhow!(e)).with_context(|| format!("cannot write record {}", show(&at)));
    }
    fsafe::step("rename the record into place");
    Ok(())
}

pub fn remove_record(links: &Node, name: &OsStr) -> Result<()> {
    match nix::unistd::unlinkat(&links.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) => {
            fsafe::step("remove a record");
            Ok(())
        }
        Err(Errno::ENOENT) => Ok(()),
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
    })?;
    fsafe::step("bind-mount");
    Ok(())
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
                fsafe::step("remove the legacy symlink");
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
                    fsafe::unmount(&entry)?;
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
            fsafe::unmount(&entry)?;
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
            Ok(n) if n.is_dir() => {
                fsafe::check_trusted_place(&n)?;
                Ok(Some(n))
            }
            Ok(n) => bail!("{} is not a directory", show(&n.path)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(anyhow!(e))
                .with_context(|| format!("cannot open {}", show(&ws.path.join(paths::LINKS)))),
        }
    }
}

// ---- microvm-link: relink, unlink, status ----

/// How a workspace entry looks to `status` (read-only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EntryView {
    /// linked | placeholder | dangling | directory | legacy-symlink | missing | none (in
    /// `status`: the VM shares nothing through an entry of its own)
    pub state: &'static str,
    /// The recorded (or legacy) target, if any.
    pub target: Option<String>,
}

/// What `status` says of workspace entry `name`.
pub fn view_entry(tree: &crate::fsafe::Tree, ws_dir: &Path, name: &str) -> Result<EntryView> {
    let (ws, links) = match tree.walk(ws_dir, Trust::Owners)? {
        Walk::Found(ws) if ws.is_dir() => {
            let links = match ws.child(OsStr::new(paths::LINKS)) {
                Ok(l) if l.is_dir() => Some(l),
                _ => None,
            };
            (ws, links)
        }
        _ => {
            return Ok(EntryView {
                state: "missing",
                target: None,
            })
        }
    };
    let rec = read_record(links.as_ref(), OsStr::new(name))?;
    let target = rec.as_ref().map(|r| show(&r.target));
    let entry = match ws.child(OsStr::new(name)) {
        Ok(e) => e,
        Err(_) => {
            return Ok(EntryView {
                state: "missing",
                target,
            })
        }
    };
    if !entry.is_dir() {
        let t = nix::fcntl::readlinkat(&entry.fd, "")
            .ok()
            .map(|t| show(Path::new(&t)));
        let state = if t.is_some() {
            "legacy-symlink"
        } else {
            "not-a-directory"
        };
        return Ok(EntryView { state, target: t });
    }
    let repo = rec
        .as_ref()
        .and_then(|r| match tree.walk(&r.target, Trust::Owners) {
            Ok(Walk::Found(n)) if n.is_dir() => Some(n),
            _ => None,
        });
    let state = match (&rec, repo) {
        (Some(_), Some(repo)) if repo.id() == entry.id() => "linked",
        (Some(_), None) => "dangling",
        _ if entry.is_placeholder() => "placeholder",
        // Only root can read `trusted.*`; for a normal user running status, a directory
        // nobody may write to stands in for the mark (display only, never acted upon).
        _ if !nix::unistd::Uid::effective().is_root() && entry.st.st_mode & 0o222 == 0 => {
            "placeholder"
        }
        _ => "directory",
    };
    Ok(EntryView { state, target })
}

/// One workspace entry to point at a repo directory (inside path), or to turn back into a
/// placeholder (`None`).
#[derive(Debug, Clone)]
pub struct Change {
    pub name: String,
    pub target: Option<PathBuf>,
}

/// What a relink did (or would do).
#[derive(Debug, Default, serde::Serialize)]
pub struct Relinked {
    pub steps: Vec<String>,
    /// User directories moved aside into `.displaced/`: (from, to).
    pub displaced: Vec<(String, String)>,
}

impl Ctx<'_> {
    /// Applies `changes` under the workspace lock: records written atomically, then mounts
    /// replaced. `<workspaceDir>/<name>` exists at every instant: it is the placeholder, with
    /// or without a repo mounted on it. A user's real directory in the way is moved aside,
    /// never deleted. `owner` is who the records say made the link.
    pub fn relink(&mut self, changes: &[Change], owner: u32) -> Result<Relinked> {
        let mut out = Relinked::default();
        let ws_dir = self.cfg.workspace_dir.clone();
        // Validate every target before changing anything.
        let mut repos = Vec::new();
        for c in changes {
            paths::check_name("workspace entry", &c.name)?;
            let repo = match &c.target {
                None => None,
                // The node checked here is the one mounted below (by descriptor): the owner
                // check must be on it, not on an earlier look at the same path, which a user
                // can swap in between.
                Some(t) => match self.tree.walk(t, Trust::Owners)? {
                    Walk::Found(n) if n.is_dir() && owner != 0 && n.uid() != owner => bail!(
                        "{} is owned by uid {}, not by the linking user (uid {owner})",
                        show(&n.path),
                        n.uid()
                    ),
                    Walk::Found(n) if n.is_dir() => Some(n),
                    _ => bail!("{} is not a directory", show(t)),
                },
            };
            repos.push(repo);
        }
        if self.dry_run {
            if let Ok(Walk::Found(ws)) = self.tree.walk(&ws_dir, Trust::Owners) {
                let links = self.links_dir(&ws)?;
                for c in changes {
                    authorize(self.tree, &ws, links.as_ref(), c, owner)?;
                }
            }
            for (c, repo) in changes.iter().zip(&repos) {
                let at = ws_dir.join(&c.name);
                out.steps.push(match repo {
                    Some(r) => format!("would link {} -> {}", show(&at), show(&r.path)),
                    None => format!("would make {} a placeholder", show(&at)),
                });
            }
            return Ok(out);
        }
        let ws = fsafe::ensure_root_dir(self.tree, &ws_dir)?;
        let _lock = fsafe::lock(&ws)?;
        // Every change is authorized before the first one is made.
        let links = self.links_dir(&ws)?;
        for c in changes {
            authorize(self.tree, &ws, links.as_ref(), c, owner)?;
        }
        self.clean_workspace(&ws)?;
        let links = match links {
            Some(l) => l,
            None => fsafe::ensure_root_dir(self.tree, &ws_dir.join(paths::LINKS))?,
        };
        fsafe::remove_leftovers(&links)?;
        for (c, repo) in changes.iter().zip(repos) {
            let name = OsStr::new(&c.name);
            let at = ws_dir.join(name);
            if repo.is_none() && read_record(Some(&links), name)?.is_none() {
                // Nothing of ours to undo: whatever is there (a placeholder, nothing, a
                // user's own directory, a legacy symlink prepare will migrate) stays as it is.
                out.steps
                    .push(format!("{} is not linked; left as it is", show(&at)));
                continue;
            }
            match repo {
                Some(repo) => {
                    let entry = self.make_mountpoint(&ws, &links, name, owner, &mut out)?;
                    write_record(
                        &links,
                        name,
                        &Record {
                            target: repo.path.clone(),
                            owner,
                        },
                    )?;
                    let entry = self.unmount_entry(&ws, name, entry)?;
                    bind(&repo, &entry)?;
                    out.steps
                        .push(format!("linked {} -> {}", show(&at), show(&repo.path)));
                }
                None => {
                    // Mount first, then the record: a crash in between leaves a record
                    // without a mount, which the next start re-mounts (consistent). The
                    // other order would leave a mount no record explains, which nothing
                    // repairs until the next link.
                    // The record is ours, so is a mount on the entry; nothing else is
                    // touched (a directory of the user's stays where it is).
                    if let Ok(entry) = ws.child(name) {
                        if entry.is_dir() && is_mount_root(entry.fd.as_fd())? {
                            fsafe::unmount(&entry)?;
                        }
                    }
                    remove_record(&links, name)?;
                    out.steps.push(format!("unlinked {}", show(&at)));
                }
            }
        }
        Ok(out)
    }

    /// Makes `<ws>/<name>` a placeholder that may carry our mount, whatever it was.
    fn make_mountpoint(
        &mut self,
        ws: &Node,
        links: &Node,
        name: &OsStr,
        caller: u32,
        out: &mut Relinked,
    ) -> Result<Node> {
        let at = ws.path.join(name);
        let entry = match ws.child(name) {
            Ok(e) => e,
            Err(Errno::ENOENT) => return fsafe::create_placeholder(ws, name, self.spec),
            Err(e) => return Err(anyhow!(e)).with_context(|| format!("cannot open {}", show(&at))),
        };
        let kind = entry.st.st_mode & nix::libc::S_IFMT;
        if kind == nix::libc::S_IFLNK {
            let old = fsafe::swap_in_placeholder(ws, name, self.spec)?;
            nix::unistd::unlinkat(&ws.fd, &*old, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
            fsafe::step("remove the legacy symlink");
            out.steps
                .push(format!("replaced the legacy symlink {}", show(&at)));
            return Ok(ws.child(name)?);
        }
        if kind != nix::libc::S_IFDIR {
            bail!(
                "{} exists but is not a directory; move it away first",
                show(&at)
            );
        }
        if entry.is_placeholder() {
            return Ok(entry);
        }
        if is_mount_root(entry.fd.as_fd())? {
            if read_record(Some(links), name)?.is_some() {
                return Ok(entry); // our mount: the placeholder is beneath it
            }
            bail!(
                "{} is a mount point not made by microvm-link; unmount it first",
                show(&at)
            );
        }
        // A user's real directory: moved aside atomically, a placeholder taking its place,
        // only for its owner (or root): see `authorize`, checked again here on this node.
        // `.displaced` first, so that failing to make it (a full disk) changes nothing.
        if caller != 0 && entry.uid() != caller {
            bail!("{}", not_yours(&at, "a directory", entry.uid(), ""));
        }
        let displaced = fsafe::ensure_root_dir(self.tree, &ws.path.join(paths::DISPLACED))?;
        let old = fsafe::swap_in_placeholder(ws, name, self.spec)?;
        let to = move_aside(ws, &displaced, &old, name)?;
        tracing::warn!(path = %show(&at), "moved the directory {} aside to {}", show(&at), show(&to));
        out.displaced.push((show(&at), show(&to)));
        Ok(ws.child(name)?)
    }

    /// Clears what killed runs left in the workspace dir (call with the lock held). A
    /// directory under a temporary name that is not ours is a user's directory caught
    /// between being swapped out and moved aside: it finishes its way into `.displaced/`.
    pub fn clean_workspace(&self, ws: &Node) -> Result<()> {
        for stray in fsafe::remove_leftovers(ws)? {
            let displaced = fsafe::ensure_root_dir(self.tree, &ws.path.join(paths::DISPLACED))?;
            let to = move_aside(ws, &displaced, &stray, OsStr::new("recovered"))?;
            tracing::warn!(path = %show(&ws.path.join(&stray)), "moved the directory {} left by an interrupted run aside to {}", show(&ws.path.join(&stray)), show(&to));
        }
        Ok(())
    }

    /// Detaches whatever is mounted on the entry; returns the placeholder beneath.
    fn unmount_entry(&mut self, ws: &Node, name: &OsStr, entry: Node) -> Result<Node> {
        if !is_mount_root(entry.fd.as_fd())? {
            return Ok(entry);
        }
        let at = ws.path.join(name);
        fsafe::unmount(&entry)?;
        let entry = ws.child(name)?;
        if !entry.is_placeholder() {
            bail!("{} is not a placeholder under its mount", show(&at));
        }
        Ok(entry)
    }
}

use std::ffi::OsString;

/// "alice (uid 1000)", or "uid 1000" when the user database does not know it.
pub fn user_label(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// "<at> is <what> of <owner><detail>; only they or root may change it".
fn not_yours(at: &Path, what: &str, owner: u32, detail: &str) -> String {
    format!(
        "{} is {what} of {}{detail}; only they or root may change it",
        show(at),
        user_label(owner)
    )
}

/// Owners decide: a caller other than root may change entry `c.name` only when it is not
/// linked (a placeholder, nothing, a link whose repo is gone, a legacy symlink) or its record
/// is theirs; and may have a directory in the way moved aside only when it is theirs.
fn authorize(
    tree: &crate::fsafe::Tree,
    ws: &Node,
    links: Option<&Node>,
    c: &Change,
    caller: u32,
) -> Result<()> {
    paths::check_name("workspace entry", &c.name)?;
    if caller == 0 {
        return Ok(());
    }
    let name = OsStr::new(&c.name);
    let at = ws.path.join(name);
    if let Some(rec) = read_record(links, name)? {
        let live =
            matches!(tree.walk(&rec.target, Trust::Owners), Ok(Walk::Found(n)) if n.is_dir());
        if live && rec.owner != caller {
            let to = format!(" to {}", show(&rec.target));
            bail!("{}", not_yours(&at, "a link", rec.owner, &to));
        }
        return Ok(());
    }
    if c.target.is_none() {
        return Ok(()); // nothing of ours there: unlinking leaves it as it is
    }
    match ws.child(name) {
        Ok(e) if e.is_dir() && !e.is_placeholder() && e.uid() != caller => {
            bail!("{}", not_yours(&at, "a directory", e.uid(), ""))
        }
        _ => Ok(()),
    }
}

/// Moves `<ws>/<from>` into `displaced` as `<label>.<time>` (`.<n>` added while that is
/// taken: never over an earlier one); returns where it went.
fn move_aside(ws: &Node, displaced: &Node, from: &OsStr, label: &OsStr) -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut keep;
    let mut n = 0;
    loop {
        keep = OsString::from(label);
        keep.push(format!(".{stamp}"));
        if n > 0 {
            keep.push(format!(".{n}"));
        }
        match nix::fcntl::renameat2(
            &ws.fd,
            from,
            &displaced.fd,
            &*keep,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Err(Errno::EEXIST) if n < 100 => n += 1,
            r => break r,
        }
    }
    .with_context(|| {
        format!(
            "cannot move {} into {}",
            show(&ws.path.join(from)),
            show(&displaced.path)
        )
    })?;
    fsafe::step("move the user's directory aside");
    Ok(displaced.path.join(&keep))
}

/// The repo root for a working directory: the nearest ancestor holding `.git` (a directory,
/// or a file as in worktrees and submodules), else the directory itself.
pub fn repo_root(start: &Path) -> PathBuf {
    start
        .ancestors()
        .find(|d| d.join(".git").symlink_metadata().is_ok())
        .unwrap_or(start)
        .to_path_buf()
}

/// The VM name for a repo: its directory name with every run of characters outside
/// `[A-Za-z0-9._-]` replaced by `-`, and leading and trailing `-` trimmed.
pub fn derive_vm_name(repo: &Path) -> Result<String> {
    let base = repo
        .file_name()
        .with_context(|| format!("cannot derive a VM name from {}; name the VM", show(repo)))?;
    let mut name = String::new();
    for ch in String::from_utf8_lossy(base.as_encoded_bytes()).chars() {
        if ch.is_ascii_alphanumeric() || "._-".contains(ch) {
            name.push(ch);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_matches('-').to_string();
    paths::check_name("derived VM", &name).with_context(|| {
        format!(
            "from the repo directory {}; name the VM explicitly",
            show(repo)
        )
    })?;
    Ok(name)
}

/// The changes linking `vm` to `repo` implies: the VM's own entry, and each companion
/// (linked when the repo has that relative path as a directory owned by `user`, else turned
/// back into a placeholder).
pub fn changes_for(
    tree: &crate::fsafe::Tree,
    cfg: &crate::config::Config,
    vm: &str,
    repo: &Path,
    user: u32,
) -> Vec<Change> {
    let mut out = vec![Change {
        name: vm.to_string(),
        target: Some(repo.to_path_buf()),
    }];
    for (name, rel) in cfg.companions.get(vm).into_iter().flatten() {
        let target = paths::normalize(&repo.join(rel));
        let usable = match tree.walk(&target, Trust::Owners) {
            Ok(Walk::Found(n)) => n.is_dir() && (user == 0 || n.uid() == user),
            _ => false,
        };
        out.push(Change {
            name: name.clone(),
            target: usable.then_some(target),
        });
    }
    out
}

/// After relinking: the sources of every known VM that pass through a changed entry are
/// ensured at once (so `nixfiles/hosts/microvms/<host>` appears in the real repo). Other
/// VMs' runtime records are left alone, or their staleness would be hidden. A VM that cannot
/// be ensured (a runner that is not root's, a source that cannot be made) is skipped with a
/// warning: one bad VM does not stop the link of another.
pub fn ensure_affected(
    tree: &crate::fsafe::Tree,
    cfg: &crate::config::Config,
    changed: &[Change],
    dry_run: bool,
) -> Result<Ensured> {
    let names: Vec<&OsStr> = changed.iter().map(|c| OsStr::new(&c.name)).collect();
    let mut out = Ensured::default();
    for vm in crate::runner::known_vms(tree, cfg) {
        let done = crate::runner::shares(tree, cfg, &vm).and_then(|shares| {
            let shares: Vec<_> = shares
                .into_iter()
                .filter(|s| {
                    entry_of(&cfg.workspace_dir, &s.path).is_some_and(|n| names.contains(&n))
                })
                .collect();
            if shares.is_empty() {
                return Ok(Vec::new());
            }
            Ok(crate::prepare::prepare_shares(tree, cfg, &vm, &shares, dry_run)?.actions)
        });
        match done {
            Ok(actions) => out.steps.extend(
                actions
                    .iter()
                    .map(|a| format!("{}{vm}: {a}", if dry_run { "would, for " } else { "for " })),
            ),
            Err(e) => {
                let why = crate::logging::one_line(&e);
                tracing::warn!(vm, "skipping VM {vm}: {why}");
                out.skipped.push((vm, why));
            }
        }
    }
    Ok(out)
}

/// Before relinking: every source [`ensure_affected`] will have to make afterwards, planned
/// as if `changed` were done, so that a source that cannot be made fails the link before it
/// changes anything. VMs whose shares cannot even be read (a runner that is not root's) are
/// returned, to be skipped with a warning.
pub fn check_affected(
    tree: &crate::fsafe::Tree,
    cfg: &crate::config::Config,
    changed: &[Change],
) -> Result<Vec<(String, String)>> {
    let names: Vec<&OsStr> = changed.iter().map(|c| OsStr::new(&c.name)).collect();
    let assume: Vec<(String, Option<PathBuf>)> = changed
        .iter()
        .map(|c| (c.name.clone(), c.target.clone()))
        .collect();
    let mut skipped = Vec::new();
    for vm in crate::runner::known_vms(tree, cfg) {
        let shares = match crate::runner::shares(tree, cfg, &vm) {
            Ok(s) => s,
            Err(e) => {
                skipped.push((vm, crate::logging::one_line(&e)));
                continue;
            }
        };
        let shares: Vec<_> = shares
            .into_iter()
            .filter(|s| entry_of(&cfg.workspace_dir, &s.path).is_some_and(|n| names.contains(&n)))
            .collect();
        if !shares.is_empty() {
            crate::prepare::plan_assuming(tree, cfg, &vm, &shares, &assume)?;
        }
    }
    Ok(skipped)
}

/// What [`ensure_affected`] did.
#[derive(Debug, Default)]
pub struct Ensured {
    pub steps: Vec<String>,
    /// VMs skipped, and why.
    pub skipped: Vec<(String, String)>,
}
