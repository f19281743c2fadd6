//! The workspace entry `<workspaceDir>/<name>`: a placeholder, a *record* and a mount
//! (docs/reference/workspace.md#entries).
//!
//! The record `<workspaceDir>/.links/<name>` is a symlink to the repo, owned by the user who
//! linked it (so `ls -l` says who), and survives reboots. The entry itself is always a real
//! directory, a placeholder, with the recorded repo bind-mounted on it while linked:
//! virtiofsd 1.14 refuses a source whose last component is a symlink, so the record is never
//! what a VM is given. The engine keeps entry and record in step, under the workspace lock:
//! observe (engine::observe) -> plan (engine::plan) -> apply (engine::apply), at every VM
//! start (engine::prepare) and for microvm-link (engine::link).

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;

use crate::engine::gitview;
use crate::engine::guests::Guests;
use crate::engine::links::{read_record, Record};
use crate::fs::chase::{self, Node, Tree, Trust, Walk, WalkError};
use crate::fs::dirs;
use crate::fs::failpoint::step;
use crate::fs::idmap::Ids;
use crate::fs::paths::{self, show, LIVE_CURRENT};
use crate::fs::placeholder::{self, PlaceholderSpec};
use crate::model::config::{self, Config, Seen};
use crate::model::names::EntryName;

/// What a workspace entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nothing there.
    Missing,
    /// A placeholder, not linked.
    Placeholder,
    /// The recorded repo is mounted there.
    Linked,
    /// A record whose repo is gone: the placeholder serves.
    Dangling,
    /// A directory that is not ours (a user's directory, or a mount without a record).
    Directory,
    /// A symlink from the shell era, not yet migrated.
    Legacy,
    /// Something else (a file, a socket).
    NotADirectory,
    /// In `status`: the VM shares nothing through an entry of its own.
    None,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Missing => "missing",
            State::Placeholder => "placeholder",
            State::Linked => "linked",
            State::Dangling => "dangling",
            State::Directory => "directory",
            State::Legacy => "legacy-symlink",
            State::NotADirectory => "not-a-directory",
            State::None => "none",
        }
    }
}

impl serde::Serialize for State {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How an entry looks to `status` (read-only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EntryView {
    pub state: State,
    /// The recorded (or legacy) target, if any.
    pub target: Option<String>,
}

/// One workspace entry to point at a repo directory (inside path), or to turn back into a
/// placeholder (`None`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    pub name: EntryName,
    #[serde(serialize_with = "paths::serialize_shown")]
    pub target: Option<PathBuf>,
}

/// What a relink did (or would do).
#[derive(Debug, Default, serde::Serialize)]
pub struct Relinked {
    /// How many entries changed (or, planned, would): 0 when every change was a no-op.
    pub changed: usize,
    pub steps: Vec<String>,
    /// Directories moved aside into `.displaced/`.
    pub displaced: Vec<Displaced>,
    /// The entries that really changed (not those left as they were).
    #[serde(skip)]
    pub changed_names: Vec<String>,
    /// The operations applied, in order (in a dry run: planned).
    #[serde(skip)]
    pub ops: Vec<crate::engine::plan::Op>,
}

/// A directory that was in the way of a link, and where it went.
#[derive(Debug, serde::Serialize)]
pub struct Displaced {
    pub from: String,
    pub to: String,
    /// Its owner's uid.
    pub owner: u32,
}

/// What a record's repo is now ([`Workspace::repo_now`]).
pub enum RepoNow {
    Found(Node),
    /// Missing, not a directory, or behind a dangling link.
    Missing,
    /// Gone in another way, and why: not reachable safely, no longer a repo of the link's
    /// maker, or inside the workspace dir.
    Unusable(String),
}

/// The workspace dir, a trusted place (root's, nobody else may write to it).
pub struct Workspace<'t> {
    pub(crate) tree: &'t Tree,
    pub node: Node,
    pub(crate) spec: PlaceholderSpec,
    pub(crate) hypervisor: config::Hypervisor,
    pub(crate) guests: Guests,
}

impl<'t> Workspace<'t> {
    /// The workspace dir, created (root, 0755) when missing.
    pub fn ensure(tree: &'t Tree, cfg: &Config) -> Result<Workspace<'t>> {
        Ok(Workspace {
            tree,
            node: dirs::ensure_root_dir(tree, &cfg.workspace_dir)?,
            spec: cfg.placeholder_spec()?,
            hypervisor: cfg.hypervisor.clone(),
            guests: Guests::of(cfg),
        })
    }

    /// The workspace dir if it exists (dry runs and `status` create nothing).
    pub fn find(tree: &'t Tree, cfg: &Config) -> Result<Option<Workspace<'t>>> {
        let node = match tree.walk(&cfg.workspace_dir, Trust::Owners)? {
            Walk::Found(n) if n.is_dir() => n,
            Walk::Found(n) => bail!("{} is not a directory", show(&n.path)),
            Walk::Missing { .. } => return Ok(None),
        };
        dirs::check_trusted_place(&node)?;
        Ok(Some(Workspace {
            tree,
            node,
            spec: cfg.placeholder_spec()?,
            hypervisor: cfg.hypervisor.clone(),
            guests: Guests::of(cfg),
        }))
    }

    /// How the guests of entry `name` see a linked repo ([`Guests::guest_of`]).
    pub fn guest_of(&self, name: &OsStr) -> Result<Seen> {
        self.guests.guest_of(name)
    }

    /// The ids a mount of `repo` for entry `name` gets.
    pub(crate) fn ids_for(&self, name: &OsStr, repo: &Node) -> Result<Ids> {
        self.guests.ids_for(name, repo)
    }

    pub fn path(&self) -> &Path {
        &self.node.path
    }

    /// `<workspaceDir>/.links`, if it exists.
    pub fn links(&self) -> Result<Option<Node>> {
        self.trusted_dir(paths::LINKS)
    }

    /// The workspace dir's directory `name` (`.links`, `.leases`), if it exists: a trusted
    /// place, checked as such.
    pub fn trusted_dir(&self, name: &str) -> Result<Option<Node>> {
        match self.node.child(OsStr::new(name)) {
            Ok(n) if n.is_dir() => {
                dirs::check_trusted_place(&n)?;
                Ok(Some(n))
            }
            Ok(n) => bail!("{} is not a directory", show(&n.path)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(anyhow!(e))
                .with_context(|| format!("cannot open {}", show(&self.path().join(name)))),
        }
    }

    /// Takes the workspace lock and clears what killed runs left (temporary names). A
    /// directory under a temporary name that is not ours is a user's directory caught between
    /// being swapped out and moved aside: it finishes its way into `.displaced/`.
    pub fn lock(&self) -> Result<OwnedFd> {
        let lock = dirs::lock(&self.node)?;
        for stray in dirs::remove_leftovers(&self.node)? {
            let at = self.path().join(&stray);
            let to = self.move_aside(&stray, OsStr::new("recovered"))?;
            tracing::warn!(path = %show(&at), "moved the directory {} left by an interrupted run aside to {}", show(&at), show(&to));
        }
        if let Some(links) = self.links()? {
            dirs::remove_leftovers(&links)?;
        }
        // Leases are written like records, through the same temporary names.
        if let Some(leases) = self.leases()? {
            dirs::remove_leftovers(&leases)?;
        }
        gitview::clear_leftovers(&self.node)?;
        Ok(lock)
    }

    /// The entry `name`, if there is anything there.
    pub(crate) fn child(&self, name: &OsStr) -> Result<Option<Node>> {
        match self.node.child(name) {
            Ok(n) => Ok(Some(n)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(anyhow!(e))
                .with_context(|| format!("cannot open {}", show(&self.path().join(name)))),
        }
    }

    /// The one rule for what a record's repo is now: a directory reached safely, or gone
    /// (missing, not a directory, through a dangling link; or not reachable safely any more:
    /// its owner put a link into someone else's tree in its place, which is as good as gone,
    /// so the placeholder serves and other users' VMs sharing the entry still start).
    /// A repo is also gone when it is no longer a repo of the link's maker (its owner
    /// changed, or it became something of root's) or lies in the workspace dir (an entry, a
    /// live root, a mount of ours): a link must not outlive its maker's repos, nor point into
    /// what this tool makes.
    pub fn repo_now(&self, rec: &Record) -> RepoNow {
        match self.tree.try_walk(&rec.target, Trust::Owners) {
            Ok(Walk::Found(n)) if n.is_dir() => match self.not_a_repo_of(&n, rec.owner) {
                Some(why) => RepoNow::Unusable(why),
                None => RepoNow::Found(n),
            },
            Ok(_) | Err(WalkError::Dangling(_)) => RepoNow::Missing,
            Err(e) => RepoNow::Unusable(crate::host::logging::one_line(&e.into_anyhow())),
        }
    }

    /// Why directory `n` cannot be a repo linked by `owner` (0: root), if it cannot.
    fn not_a_repo_of(&self, n: &Node, owner: u32) -> Option<String> {
        if n.path.starts_with(self.path()) {
            return Some(format!(
                "{} is inside the workspace dir {}",
                show(&n.path),
                show(self.path())
            ));
        }
        (owner != 0 && n.uid() != owner).then(|| {
            format!(
                "{} is owned by uid {}, but the link was made by uid {owner}",
                show(&n.path),
                n.uid()
            )
        })
    }

    /// Entry `name`'s record and the repo it shows right now (the recorded repo mounted on
    /// the entry), for people: `None` when it shows anything else.
    pub fn shows_repo(&self, name: &OsStr) -> Option<Record> {
        let rec = read_record(self.links().ok()?.as_ref(), name).ok()??;
        let entry = self.node.child(name).ok()?;
        match self.repo_now(&rec) {
            RepoNow::Found(repo) if repo.id() == entry.id() => Some(rec),
            _ => None,
        }
    }

    /// Puts a placeholder where the symlink `name` is (atomically), and removes the symlink.
    pub(crate) fn replace_symlink(&self, name: &OsStr) -> Result<()> {
        let old = placeholder::swap_in(&self.node, name, self.spec)?;
        nix::unistd::unlinkat(
            &self.node.fd,
            &*old,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
        .with_context(|| {
            format!(
                "cannot remove the old symlink {}",
                show(&self.path().join(&old))
            )
        })?;
        step("remove the legacy symlink");
        Ok(())
    }

    /// Moves `<ws>/<from>` into `.displaced` as `<label>.<time>` (`.<n>` added while that is
    /// taken: never over an earlier one); returns where it went.
    pub(crate) fn move_aside(&self, from: &OsStr, label: &OsStr) -> Result<PathBuf> {
        let displaced = self.displaced_dir()?;
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
                &self.node.fd,
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
                show(&self.path().join(from)),
                show(&displaced.path)
            )
        })?;
        step("move the user's directory aside");
        Ok(displaced.path.join(&keep))
    }

    /// `<workspaceDir>/.displaced`, root's and root-only (0700, tightened if an older version
    /// made it 0755): what was moved aside may be anyone's, so no linker reads it there.
    pub(crate) fn displaced_dir(&self) -> Result<Node> {
        let d = dirs::ensure_root_dir(self.tree, &self.path().join(paths::DISPLACED))?;
        if d.st.st_mode & 0o077 != 0 {
            // The node is an O_PATH descriptor: chmod through /proc names exactly it.
            std::fs::set_permissions(
                d.proc_path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
            .with_context(|| format!("cannot make {} root-only", show(&d.path)))?;
        }
        Ok(d)
    }

    // ---- live roots (docs/design.md#live-links) ----

    /// `<workspaceDir>/.live/<name>`, if it exists (a trusted place, like `.live`).
    pub(crate) fn live_dir(&self, name: &OsStr) -> Result<Option<Node>> {
        let live = match self.node.child(OsStr::new(paths::LIVE)) {
            Ok(n) if n.is_dir() => n,
            Ok(n) => bail!("{} is not a directory", show(&n.path)),
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(anyhow!(e)).context("cannot open the live roots"),
        };
        dirs::check_trusted_place(&live)?;
        match live.child(name) {
            Ok(n) if n.is_dir() => Ok(Some(n)),
            Ok(n) => bail!("{} is not a directory", show(&n.path)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(anyhow!(e))
                .with_context(|| format!("cannot open {}", show(&live.path.join(name)))),
        }
    }

    /// Every live root of entry `name` (a directory under `.live/<name>` holding `current`),
    /// with its path below the entry.
    pub(crate) fn live_roots(&self, name: &OsStr) -> Result<Vec<(Node, PathBuf)>> {
        let Some(top) = self.live_dir(name)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut todo = vec![(top, PathBuf::new())];
        while let Some((dir, rel)) = todo.pop() {
            for child in chase::list_dir(&dir)? {
                if child == LIVE_CURRENT {
                    continue;
                }
                if let Ok(n) = dir.child(&child) {
                    if n.is_dir() && !child.as_encoded_bytes().starts_with(b".") {
                        todo.push((n, rel.join(&child)));
                    }
                }
            }
            // (A `current` that is not even a directory is left to the one who names this
            // live root: prepare refuses it for that share.)
            if dir
                .child(OsStr::new(LIVE_CURRENT))
                .is_ok_and(|c| c.is_dir())
            {
                out.push((dir, rel));
            }
        }
        Ok(out)
    }

    /// What `status` says of entry `name`.
    pub fn view(&self, name: &str) -> Result<EntryView> {
        let links = self.links().ok().flatten();
        let rec = read_record(links.as_ref(), OsStr::new(name))?;
        let target = rec.as_ref().map(|r| show(&r.target));
        let Ok(entry) = self.node.child(OsStr::new(name)) else {
            return Ok(EntryView {
                state: State::Missing,
                target,
            });
        };
        if !entry.is_dir() {
            let t = nix::fcntl::readlinkat(&entry.fd, "")
                .ok()
                .map(|t| show(Path::new(&t)));
            let state = if t.is_some() {
                State::Legacy
            } else {
                State::NotADirectory
            };
            return Ok(EntryView { state, target: t });
        }
        let repo = rec.as_ref().and_then(|r| match self.repo_now(r) {
            RepoNow::Found(n) => Some(n),
            RepoNow::Missing | RepoNow::Unusable(_) => None,
        });
        let state = match (&rec, repo) {
            (Some(_), Some(repo)) if repo.id() == entry.id() => State::Linked,
            (Some(_), None) => State::Dangling,
            _ if entry.is_placeholder() => State::Placeholder,
            // Only root can read `trusted.*`; for a normal user running status, a directory
            // nobody may write to stands in for the mark (display only, never acted upon).
            _ if !nix::unistd::Uid::effective().is_root() && entry.st.st_mode & 0o222 == 0 => {
                State::Placeholder
            }
            _ => State::Directory,
        };
        Ok(EntryView { state, target })
    }
}
