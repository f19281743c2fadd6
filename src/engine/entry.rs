//! The workspace entry `<workspaceDir>/<name>`: a placeholder, a *record* and a mount
//! (docs/reference/workspace.md#entries).
//!
//! The record `<workspaceDir>/.links/<name>` is a symlink to the repo, owned by the user who
//! linked it (so `ls -l` says who), and survives reboots. The entry itself is always a real
//! directory, a placeholder, with the recorded repo bind-mounted on it while linked:
//! virtiofsd 1.14 refuses a source whose last component is a symlink, so the record is never
//! what a VM is given. Two operations keep entry and record in step, under the workspace lock:
//! [`Workspace::reconcile`] at every VM start, [`Workspace::relink`] for microvm-link.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;

use crate::engine::gitview;
use crate::fs::chase::{self, is_mount_root, is_symlink, proc_path, Node, Tree, Trust, Walk};
use crate::fs::dirs;
use crate::fs::failpoint::step;
use crate::fs::idmap::{self, Ids};
use crate::fs::paths::{self, show, tmp_name};
use crate::fs::placeholder::{self, PlaceholderSpec};
use crate::model::action::{Act, Steps};
use crate::model::config::{self, user_label, Config, GitMode, Seen};

/// Inside a live root: the directory that shows the entry (docs/design.md#live-links).
pub const LIVE_CURRENT: &str = "current";

/// `current` while unlinked: root's, read-only, whatever the configured placeholder owner.
const LIVE_SPEC: PlaceholderSpec = PlaceholderSpec {
    uid: 0,
    gid: 0,
    mode: 0o555,
};

/// The live root a share source names: `<workspaceDir>/.live/<name>[/<path>]` gives the
/// entry name and the path below it. `Err` for a live source that is not valid (an entry
/// name that is not one, or `current` in the path, which would be ambiguous).
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
        paths::check_name("live entry", n)
            .with_context(|| format!("live source {}", show(source)))?;
        if rel.components().any(|c| c.as_os_str() == LIVE_CURRENT) {
            bail!(
                "live source {} has a component named {LIVE_CURRENT}, which would be ambiguous",
                show(source)
            );
        }
        Ok(())
    };
    Some(check().map(|()| (name, rel)))
}

/// A link record: where it points and who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub target: PathBuf,
    pub owner: u32,
}

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
    pub name: String,
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
    /// Gone; the reason when it is more than missing (it cannot be reached safely).
    Gone(String),
}

/// What [`Workspace::reconcile`] found, and in a dry run what it would change.
#[derive(Debug)]
pub struct Reconciled {
    pub state: State,
    /// Dry run: a placeholder would be made (or put in place of a legacy symlink).
    pub would_create: bool,
    /// Dry run: the recorded repo would be mounted on the entry.
    pub would_mount: Option<PathBuf>,
}

impl Reconciled {
    fn is(state: State) -> Reconciled {
        Reconciled {
            state,
            would_create: false,
            would_mount: None,
        }
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

/// Where people's uids start (NixOS `isNormalUser`, Debian's `UID_MIN`); below are services'.
pub const FIRST_PERSON_UID: u32 = 1000;

/// The workspace dir, a trusted place (root's, nobody else may write to it).
pub struct Workspace<'t> {
    tree: &'t Tree,
    pub node: Node,
    spec: PlaceholderSpec,
    hypervisor: config::Hypervisor,
    /// Entry name -> the VMs whose configured shares pass through it, and how each one's
    /// guest is to see a linked repo (docs/security.md#idmap).
    guests: BTreeMap<OsString, Vec<(String, Seen)>>,
    /// Entry name -> a VM sharing it over 9p (qemu's own server: see `check_mappable`).
    nine_p: BTreeMap<OsString, String>,
}

/// Which entries a configured 9p share passes through, and the VM of one.
fn nine_p_by_entry(cfg: &Config) -> BTreeMap<OsString, String> {
    let mut out = BTreeMap::new();
    for (vm, v) in &cfg.vms {
        for s in v.shares.iter().filter(|s| s.proto == config::Proto::NineP) {
            if let Some(name) = entry_name_of(&cfg.workspace_dir, Path::new(&s.source)) {
                out.entry(name).or_insert_with(|| vm.clone());
            }
        }
    }
    out
}

/// Which configured VM shares pass through which entry, with each VM's guest mapping.
fn guests_by_entry(cfg: &Config) -> BTreeMap<OsString, Vec<(String, Seen)>> {
    let mut out: BTreeMap<OsString, Vec<(String, Seen)>> = BTreeMap::new();
    for (vm, v) in &cfg.vms {
        for s in &v.shares {
            if let Some(name) = entry_name_of(&cfg.workspace_dir, Path::new(&s.source)) {
                let list = out.entry(name).or_default();
                if !list.iter().any(|(n, _)| n == vm) {
                    list.push((vm.clone(), v.seen()));
                }
            }
        }
    }
    out
}

impl<'t> Workspace<'t> {
    /// The workspace dir, created (root, 0755) when missing.
    pub fn ensure(tree: &'t Tree, cfg: &Config) -> Result<Workspace<'t>> {
        Ok(Workspace {
            tree,
            node: dirs::ensure_root_dir(tree, &cfg.workspace_dir)?,
            spec: cfg.placeholder_spec()?,
            hypervisor: cfg.hypervisor.clone(),
            guests: guests_by_entry(cfg),
            nine_p: nine_p_by_entry(cfg),
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
            guests: guests_by_entry(cfg),
            nine_p: nine_p_by_entry(cfg),
        }))
    }

    /// How the guests of entry `name` see a linked repo: the one mapping every VM sharing it
    /// asks for (the default when none is configured); VMs that disagree are an error naming
    /// two of them, since one mount cannot show a repo two ways.
    pub fn guest_of(&self, name: &OsStr) -> Result<Seen> {
        let Some(list) = self.guests.get(name) else {
            return Ok(Seen::default());
        };
        let (vm, g) = &list[0];
        if let Some((other, h)) = list.iter().find(|(_, h)| h != g) {
            bail!(
                "VMs {vm} ({g}) and {other} ({h}) share entry {}: one mount cannot show it both ways; make their guestUid, idmap and git agree",
                paths::show_bytes(name)
            );
        }
        Ok(*g)
    }

    /// The ids a mount of `repo` for entry `name` gets.
    fn ids_for(&self, name: &OsStr, repo: &Node) -> Result<Ids> {
        self.guest_of(name)?.ids.ids_for(repo)
    }

    /// Mounts the guests' view of `repo` on `target` for entry `name`: at the entry (or a
    /// live root of the whole repo, `whole`) with the configured git view; a live root of a
    /// path below gets a read-only `.git` if it has one, unless git is shared.
    fn attach(
        &self,
        name: &OsStr,
        repo: &Node,
        target: &Node,
        ids: &Ids,
        whole: bool,
    ) -> Result<()> {
        let git = self.git_at(name, whole)?;
        gitview::mount(self.tree, &self.node, name, repo, target, ids, git)
    }

    fn git_at(&self, name: &OsStr, whole: bool) -> Result<GitMode> {
        Ok(match self.guest_of(name)?.git {
            GitMode::Private if !whole => GitMode::Readonly,
            g => g,
        })
    }

    pub fn path(&self) -> &Path {
        &self.node.path
    }

    /// `<workspaceDir>/.links`, if it exists.
    pub fn links(&self) -> Result<Option<Node>> {
        match self.node.child(OsStr::new(paths::LINKS)) {
            Ok(n) if n.is_dir() => {
                dirs::check_trusted_place(&n)?;
                Ok(Some(n))
            }
            Ok(n) => bail!("{} is not a directory", show(&n.path)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(anyhow!(e))
                .with_context(|| format!("cannot open {}", show(&self.path().join(paths::LINKS)))),
        }
    }

    fn ensure_links(&self) -> Result<Node> {
        dirs::ensure_root_dir(self.tree, &self.path().join(paths::LINKS))
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
        gitview::clear_leftovers(&self.node)?;
        Ok(lock)
    }

    /// The entry `name`, if there is anything there.
    fn child(&self, name: &OsStr) -> Result<Option<Node>> {
        match self.node.child(name) {
            Ok(n) => Ok(Some(n)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(anyhow!(e))
                .with_context(|| format!("cannot open {}", show(&self.path().join(name)))),
        }
    }

    /// The recorded repo, if the record's target is a directory now (`None`: dangling).
    fn repo_of(&self, rec: &Record, at: &Path) -> Result<Option<Node>> {
        Ok(match self.repo_now(rec) {
            RepoNow::Found(n) => Some(n),
            RepoNow::Gone(why) => {
                if !why.is_empty() {
                    tracing::warn!(path = %show(at), "the repo of link {} cannot be reached safely ({why}); the placeholder serves", show(at));
                }
                None
            }
        })
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
        match self.tree.walk(&rec.target, Trust::Owners) {
            Ok(Walk::Found(n)) if n.is_dir() => match self.not_a_repo_of(&n, rec.owner) {
                Some(why) => RepoNow::Gone(why),
                None => RepoNow::Found(n),
            },
            Ok(_) => RepoNow::Gone(String::new()),
            Err(e) if e.downcast_ref::<crate::fs::chase::Dangling>().is_some() => {
                RepoNow::Gone(String::new())
            }
            Err(e) => RepoNow::Gone(crate::host::logging::one_line(&e)),
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

    /// Makes entry `name` agree with its record (at every VM start, holding the lock): a
    /// legacy symlink becomes a record and a placeholder, a placeholder is the mountpoint, the
    /// recorded repo is mounted, a repo that is gone is unmounted. With `steps.dry_run` it
    /// only plans, and says what would change.
    pub fn reconcile(&self, name: &OsStr, steps: &mut Steps) -> Result<Reconciled> {
        let (done, repo) = self.reconcile_entry(name, steps)?;
        self.sync_live(name, repo.as_ref(), steps);
        Ok(done)
    }

    /// [`Workspace::reconcile`] for the entry itself; also returns the repo it shows (or, in
    /// a dry run, would show).
    fn reconcile_entry(
        &self,
        name: &OsStr,
        steps: &mut Steps,
    ) -> Result<(Reconciled, Option<Node>)> {
        let links = self.links()?;
        let mut record = read_record(links.as_ref(), name)?;
        let at = self.path().join(name);
        let mut entry = self.child(name)?;
        let mut would_create = false;

        if let Some(e) = entry.as_ref().filter(|e| !e.is_dir()) {
            if !is_symlink(&e.st) {
                bail!("{} exists but is not a directory", show(&at));
            }
            // The shell-era layout: a symlink right in the workspace dir.
            let rec = legacy_record(e, self.path())?;
            steps.act(
                Act::Migrate,
                &at,
                format!(
                    "legacy symlink to {} becomes a record and a placeholder",
                    show(&rec.target)
                ),
            );
            if steps.dry_run {
                entry = None;
                would_create = true;
            } else {
                let links = match links.as_ref() {
                    Some(l) => l.try_clone()?,
                    None => self.ensure_links()?,
                };
                write_record(&links, name, &rec)?;
                self.replace_symlink(name)?;
                entry = self.child(name)?;
            }
            record = Some(rec);
        }

        let Some(rec) = record else {
            let state = match entry {
                None => State::Missing,
                Some(e) if e.is_placeholder() => State::Placeholder,
                Some(_) => State::Directory,
            };
            let done = Reconciled {
                would_create,
                ..Reconciled::is(state)
            };
            return Ok((done, None));
        };

        // A record: first the repo (so any refusal comes before any change), then the entry,
        // which must be a placeholder to mount on.
        let repo = self.repo_of(&rec, &at)?;
        let entry = match entry {
            Some(e) => e,
            None => {
                steps.act(
                    Act::CreatePlaceholder,
                    &at,
                    "mountpoint for the link".into(),
                );
                if steps.dry_run {
                    let state = match repo {
                        Some(_) => State::Linked,
                        None => State::Dangling,
                    };
                    let done = Reconciled {
                        state,
                        would_create: true,
                        would_mount: repo.as_ref().map(|r| r.path.clone()),
                    };
                    return Ok((done, repo));
                }
                placeholder::create(&self.node, name, self.spec)?
            }
        };
        let mounted = is_mount_root(entry.fd.as_fd())?;
        let Some(repo) = repo else {
            tracing::warn!(path = %show(&at), target = %show(&rec.target), action = "repo-gone",
                "the repo of link {} is gone; the placeholder serves", show(&at));
            if mounted {
                steps.act(
                    Act::Unmount,
                    &at,
                    format!("repo {} is gone", show(&rec.target)),
                );
                if !steps.dry_run {
                    unmount(&entry)?;
                }
            }
            let done = Reconciled {
                would_create,
                ..Reconciled::is(State::Dangling)
            };
            return Ok((done, None));
        };
        let ids = match self.ids_for(name, &repo) {
            Ok(ids) => ids,
            Err(e) => {
                // Never mounted the wrong way: the placeholder serves, the journal says why.
                tracing::warn!(path = %show(&at), action = "no-mapping", "link {} is not mounted: {}; the placeholder serves", show(&at), crate::host::logging::one_line(&e));
                if mounted && !steps.dry_run {
                    unmount(&entry)?;
                }
                return Ok((Reconciled::is(State::Dangling), None));
            }
        };
        if mounted && entry.id() == repo.id() && entry.st.st_nlink > 0 {
            if idmap::mounted_as(&entry, &repo, &ids)?
                && gitview::view_is(
                    self.tree,
                    &self.node,
                    name,
                    &entry,
                    &repo,
                    self.git_at(name, true)?,
                )?
            {
                return Ok((Reconciled::is(State::Linked), Some(repo)));
            }
            steps.act(
                Act::Unmount,
                &at,
                format!("mounted otherwise than as {}", ids),
            );
            if steps.dry_run {
                return Ok((
                    Reconciled {
                        would_mount: Some(repo.path.clone()),
                        ..Reconciled::is(State::Linked)
                    },
                    Some(repo),
                ));
            }
            unmount(&entry)?;
            let entry = self.node.child(name)?;
            return self
                .mount_entry(name, &at, &repo, entry, &ids, steps)
                .map(|d| (d, Some(repo)));
        }
        let would_mount = Reconciled {
            would_create,
            would_mount: Some(repo.path.clone()),
            ..Reconciled::is(State::Linked)
        };
        if mounted {
            steps.act(
                Act::Unmount,
                &at,
                "it shows something other than the recorded repo".into(),
            );
            if steps.dry_run {
                return Ok((would_mount, Some(repo)));
            }
            unmount(&entry)?;
        }
        let entry = if mounted {
            self.node.child(name)?
        } else {
            entry
        };
        if !entry.is_placeholder() {
            tracing::warn!(path = %show(&at), "{} is a directory of its own, not a placeholder; not mounting the link over it (microvm-link moves it aside)", show(&at));
            return Ok((Reconciled::is(State::Directory), None));
        }
        if steps.dry_run {
            steps.act(
                Act::Mount,
                &at,
                format!("repo {}, {}", show(&repo.path), ids),
            );
            return Ok((would_mount, Some(repo)));
        }
        self.mount_entry(name, &at, &repo, entry, &ids, steps)
            .map(|d| (d, Some(repo)))
    }

    /// Mounts `repo` on the placeholder `entry` (not a dry run).
    fn mount_entry(
        &self,
        name: &OsStr,
        at: &Path,
        repo: &Node,
        entry: Node,
        ids: &Ids,
        steps: &mut Steps,
    ) -> Result<Reconciled> {
        if !entry.is_placeholder() {
            bail!("{} is not a placeholder under its mount", show(at));
        }
        steps.act(
            Act::Mount,
            at,
            format!("repo {}, {}", show(&repo.path), ids),
        );
        self.attach(name, repo, &entry, ids, true)?;
        Ok(Reconciled::is(State::Linked))
    }

    /// Applies `changes` for `caller` (0: root) under the workspace lock: every change
    /// authorized first, then records written atomically and mounts replaced.
    /// `<workspaceDir>/<name>` exists at every instant: it is the placeholder, with or without
    /// a repo mounted on it. A user's real directory in the way is moved aside, never deleted.
    pub fn relink(&self, changes: &[Change], caller: u32) -> Result<Relinked> {
        let mut out = Relinked::default();
        let repos = self.check_targets(changes, caller)?;
        let _lock = self.lock()?;
        let links = self.links()?;
        for c in changes {
            self.authorize(links.as_ref(), c, caller)?;
        }
        let links = match links {
            Some(l) => l,
            None => self.ensure_links()?,
        };
        for (c, repo) in changes.iter().zip(repos) {
            let name = OsStr::new(&c.name);
            let at = self.path().join(name);
            let Some(repo) = repo else {
                if read_record(Some(&links), name)?.is_none() {
                    // Nothing of ours to undo: whatever is there (a placeholder, nothing, a
                    // user's own directory, a legacy symlink prepare will migrate) stays.
                    out.steps
                        .push(format!("{} is not linked; left as it is", show(&at)));
                    continue;
                }
                // Mount first, then the record: a crash in between leaves a record without a
                // mount, which the next start re-mounts. The mount is ours (the record is);
                // nothing else is touched.
                if let Some(entry) = self.child(name)? {
                    if entry.is_dir() && is_mount_root(entry.fd.as_fd())? {
                        unmount(&entry)?;
                    }
                }
                remove_record(&links, name)?;
                self.sync_live(name, None, &mut Steps::new("", false));
                out.changed += 1;
                out.changed_names.push(c.name.clone());
                out.steps.push(format!("unlinked {}", show(&at)));
                continue;
            };
            let entry = self.make_mountpoint(&links, name, caller, &mut out)?;
            // The record first (a mount never stands without one: a crash after it leaves a
            // record the next start mounts), then the mount. A mount that fails rolls the
            // record back and puts the old link back: no record names what is not mounted
            // because mounting it failed.
            let before = read_record(Some(&links), name)?;
            write_record(
                &links,
                name,
                &Record {
                    target: repo.path.clone(),
                    owner: caller,
                },
            )?;
            let entry = self.unmount_entry(name, entry)?;
            let ids = self.ids_for(name, &repo)?;
            if let Err(e) = self.attach(name, &repo, &entry, &ids, true) {
                let _ = match &before {
                    Some(rec) => write_record(&links, name, rec),
                    None => remove_record(&links, name),
                };
                if let Some(RepoNow::Found(old)) = before.as_ref().map(|r| self.repo_now(r)) {
                    if let Ok(ids) = self.ids_for(name, &old) {
                        let _ = self.attach(name, &old, &entry, &ids, true);
                    }
                }
                // What was moved aside stays there: say so, or the caller never hears of it.
                return Err(match out.displaced.last() {
                    Some(d) if d.from == show(&at) => {
                        e.context(format!("moved {} aside to {} first", d.from, d.to))
                    }
                    _ => e,
                });
            }
            self.sync_live(name, Some(&repo), &mut Steps::new("", false));
            out.changed += 1;
            out.changed_names.push(c.name.clone());
            out.steps
                .push(format!("linked {} -> {}", show(&at), show(&repo.path)));
        }
        Ok(out)
    }

    /// What [`Workspace::relink`] would do, changing nothing.
    pub fn plan_relink(&self, changes: &[Change], caller: u32) -> Result<Relinked> {
        let repos = self.check_targets(changes, caller)?;
        let links = self.links()?;
        let mut out = Relinked::default();
        for (c, repo) in changes.iter().zip(&repos) {
            self.authorize(links.as_ref(), c, caller)?;
            let at = self.path().join(&c.name);
            out.changed += 1;
            out.steps.push(match repo {
                Some(r) => format!("would link {} -> {}", show(&at), show(&r.path)),
                None => format!("would make {} a placeholder", show(&at)),
            });
        }
        Ok(out)
    }

    /// Every target resolved and owner-checked before anything changes. The node checked here
    /// is the one mounted (by descriptor): the owner check must be on it, not on an earlier
    /// look at the same path, which a user can swap in between.
    fn check_targets(&self, changes: &[Change], caller: u32) -> Result<Vec<Option<Node>>> {
        let mut repos = Vec::new();
        for c in changes {
            paths::check_name("workspace entry", &c.name)?;
            repos.push(match &c.target {
                None => None,
                Some(t) => match self.tree.walk(t, Trust::Owners)? {
                    // Not even root's: a link into an entry, a live root or a mount of ours
                    // would point the tool at itself (and outlive every repo of its maker).
                    Walk::Found(n) if n.path.starts_with(self.path()) => {
                        return Err(inside_workspace(&n.path, self.path()))
                    }
                    Walk::Found(n) if n.is_dir() && caller != 0 && n.uid() != caller => bail!(
                        "{} is owned by uid {}, not by the linking user (uid {caller})",
                        show(&n.path),
                        n.uid()
                    ),
                    Walk::Found(n) if n.is_dir() => {
                        self.check_mappable(OsStr::new(&c.name), &n)?;
                        Some(n)
                    }
                    _ => bail!("{} is not a directory", show(t)),
                },
            });
        }
        Ok(repos)
    }

    /// A repo the guests of entry `name` could not work in through its mount is refused at
    /// link time, saying why: a repo of root's (never mapped), or one whose group is not the
    /// owner's primary group (the only group that maps: the guest could create nothing).
    fn check_mappable(&self, name: &OsStr, repo: &Node) -> Result<()> {
        let ids = self.ids_for(name, repo)?;
        if let (Ids::Mapped(_), Some(vm)) = (&ids, self.nine_p.get(name)) {
            bail!(
                "VM {vm} shares entry {} over 9p: qemu's 9p server writes as the hypervisor user, whom an idmapped link does not map, so the guest could write nothing; share it over virtiofs, or set idmap = false for {vm}",
                paths::show_bytes(name)
            );
        }
        if let Ids::Mapped(m) = ids {
            if repo.st.st_gid != m.host_gid {
                bail!(
                    "{} belongs to group {}, not to {}'s primary group {}: through the idmapped mount the guest could create nothing in it; chgrp -R {} it, or set idmap = false for the VM",
                    show(&repo.path),
                    repo.st.st_gid,
                    user_label(m.host_uid),
                    m.host_gid,
                    m.host_gid
                );
            }
        }
        Ok(())
    }

    /// Owners decide: a caller other than root may change entry `c.name` only when it is not
    /// linked (a placeholder, nothing, a link whose repo is gone, a legacy symlink) or its
    /// record is theirs; and may have a directory in the way moved aside only when it is theirs.
    fn authorize(&self, links: Option<&Node>, c: &Change, caller: u32) -> Result<()> {
        if caller == 0 {
            return Ok(());
        }
        let name = OsStr::new(&c.name);
        let at = self.path().join(name);
        if let Some(rec) = read_record(links, name)? {
            if self.repo_of(&rec, &at)?.is_some() && rec.owner != caller {
                let to = format!(" to {}", show(&rec.target));
                bail!("{}", not_yours(&at, "a link", rec.owner, &to));
            }
            return Ok(());
        }
        if c.target.is_none() {
            return Ok(()); // nothing of ours there: unlinking leaves it as it is
        }
        match self.child(name)? {
            Some(e) if e.is_dir() && !e.is_placeholder() => self.may_move_aside(&e, caller),
            _ => Ok(()),
        }
    }

    /// A directory in the way of a link moves aside for its owner, for root, and for any
    /// allowed linker when nobody's work is in it: root's, or the hypervisor's (microvm.nix's
    /// tmpfiles make every share source `microvm:kvm 0775` at boot, and guests write there).
    /// A directory of another person is refused, naming them.
    fn may_move_aside(&self, dir: &Node, caller: u32) -> Result<()> {
        if caller == 0 || dir.uid() == caller || self.hypervisor_owns(dir) {
            return Ok(());
        }
        bail!(
            "{}",
            not_yours(
                &self.path().join(dir.path.file_name().unwrap_or_default()),
                "a directory",
                dir.uid(),
                ""
            )
        )
    }

    /// Root's, the hypervisor user's, or the hypervisor group's with a system uid (below
    /// [`FIRST_PERSON_UID`]: a service's, such as a renumbered or removed hypervisor user).
    /// A person's directory stays theirs whatever its group.
    fn hypervisor_owns(&self, dir: &Node) -> bool {
        let uid = dir.uid();
        uid == 0
            || config::uid_of(&self.hypervisor.user) == Some(uid)
            || (uid < FIRST_PERSON_UID
                && config::gid_of(&self.hypervisor.group) == Some(dir.st.st_gid))
    }

    /// Makes entry `name` a placeholder that may carry our mount, whatever it was.
    fn make_mountpoint(
        &self,
        links: &Node,
        name: &OsStr,
        caller: u32,
        out: &mut Relinked,
    ) -> Result<Node> {
        let at = self.path().join(name);
        let Some(entry) = self.child(name)? else {
            return placeholder::create(&self.node, name, self.spec);
        };
        if is_symlink(&entry.st) {
            self.replace_symlink(name)?;
            out.steps
                .push(format!("replaced the legacy symlink {}", show(&at)));
            return Ok(self.node.child(name)?);
        }
        if !entry.is_dir() {
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
        // A real directory: moved aside atomically, a placeholder taking its place, only as
        // `may_move_aside` allows (`authorize`; checked again here, on this node).
        self.may_move_aside(&entry, caller)?;
        // `.displaced` first, so that failing to make it (a full disk) changes nothing.
        self.displaced_dir()?;
        let old = placeholder::swap_in(&self.node, name, self.spec)?;
        let to = self.move_aside(&old, name)?;
        // The report says it to the caller; the journal keeps it (info, not a second line
        // on the caller's terminal).
        tracing::info!(path = %show(&at), "moved the directory {} of {} aside to {}", show(&at), user_label(entry.uid()), show(&to));
        out.displaced.push(Displaced {
            from: show(&at),
            to: show(&to),
            owner: entry.uid(),
        });
        Ok(self.node.child(name)?)
    }

    /// Puts a placeholder where the symlink `name` is (atomically), and removes the symlink.
    fn replace_symlink(&self, name: &OsStr) -> Result<()> {
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

    /// Detaches whatever is mounted on the entry; returns the placeholder beneath.
    fn unmount_entry(&self, name: &OsStr, entry: Node) -> Result<Node> {
        if !is_mount_root(entry.fd.as_fd())? {
            return Ok(entry);
        }
        unmount(&entry)?;
        let entry = self.node.child(name)?;
        if !entry.is_placeholder() {
            bail!(
                "{} is not a placeholder under its mount",
                show(&self.path().join(name))
            );
        }
        Ok(entry)
    }

    /// Moves `<ws>/<from>` into `.displaced` as `<label>.<time>` (`.<n>` added while that is
    /// taken: never over an earlier one); returns where it went.
    fn move_aside(&self, from: &OsStr, label: &OsStr) -> Result<PathBuf> {
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
    fn displaced_dir(&self) -> Result<Node> {
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
    fn live_dir(&self, name: &OsStr) -> Result<Option<Node>> {
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
    fn live_roots(&self, name: &OsStr) -> Result<Vec<(Node, PathBuf)>> {
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

    /// Makes every live root of `name` show what the entry shows: `repo` (from its record)
    /// or the placeholder.
    ///
    /// One live root that cannot be put in step (a guest wrote something odd into a writable
    /// share, a path in the repo is not a directory) is skipped with a warning: it must not
    /// stop the entry's own start or a relink halfway. Prepare's own live root is checked
    /// strictly ([`Workspace::ensure_live_root`]).
    fn sync_live(&self, name: &OsStr, repo: Option<&Node>, steps: &mut Steps) {
        let roots = match self.live_roots(name) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "cannot list the live roots of {}: {}",
                    paths::show_bytes(name),
                    crate::host::logging::one_line(&e)
                );
                return;
            }
        };
        let ids = match repo.map(|r| self.ids_for(name, r)).transpose() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(
                    "the live roots of {} are left as they are: {}",
                    paths::show_bytes(name),
                    crate::host::logging::one_line(&e)
                );
                return;
            }
        };
        for (root, rel) in roots {
            if let Err(e) = self.sync_live_root(name, &root, &rel, repo.zip(ids.as_ref()), steps) {
                tracing::warn!(path = %show(&root.path), "live root {} left as it is: {}", show(&root.path), crate::host::logging::one_line(&e));
            }
        }
    }

    /// Creates the live root `<workspaceDir>/.live/<name>/<rel>` with its `current` (or, in a
    /// dry run, plans it) and puts it in step with entry `name`.
    ///
    /// `assume`: plan as if the entry were linked to this repo (`Some(None)`: unlinked)
    /// rather than as its record says (microvm-link's check before it relinks).
    pub fn ensure_live_root(
        &self,
        name: &OsStr,
        rel: &Path,
        assume: Option<Option<&Node>>,
        steps: &mut Steps,
    ) -> Result<()> {
        let at = self.path().join(paths::LIVE).join(name).join(rel);
        let root = match self.tree.walk(&at, Trust::Owners)? {
            Walk::Found(n) if n.is_dir() => {
                dirs::check_trusted_place(&n)?;
                n
            }
            Walk::Found(n) => bail!("{} exists but is not a directory", show(&n.path)),
            Walk::Missing { .. } => {
                steps.act(Act::Mkdir, &at, "live root, root, 0755".into());
                if steps.dry_run {
                    steps.act(
                        Act::CreatePlaceholder,
                        &at.join(LIVE_CURRENT),
                        "live view".into(),
                    );
                    // What it would show must be reachable too.
                    let repo = match assume {
                        Some(repo) => repo.map(Node::try_clone).transpose()?,
                        None => self.linked_repo(name)?,
                    };
                    if let Some(repo) = repo {
                        self.repo_path(&repo, rel, steps)?;
                    }
                    return Ok(());
                }
                dirs::ensure_root_dir(self.tree, &self.path().join(paths::LIVE))?;
                dirs::ensure_root_dir(self.tree, &at)?
            }
        };
        let repo = match assume {
            Some(repo) => repo.map(Node::try_clone).transpose()?,
            None => self.linked_repo(name)?,
        };
        let ids = repo.as_ref().map(|r| self.ids_for(name, r)).transpose()?;
        self.sync_live_root(name, &root, rel, repo.as_ref().zip(ids.as_ref()), steps)
    }

    /// The repo entry `name` is linked to (its record, the repo a directory now).
    fn linked_repo(&self, name: &OsStr) -> Result<Option<Node>> {
        match read_record(self.links()?.as_ref(), name)? {
            Some(rec) => self.repo_of(&rec, &self.path().join(name)),
            None => Ok(None),
        }
    }

    /// One live root: `current` exists (a root 0555 placeholder) and has `<repo>/<rel>`
    /// mounted on it while linked, nothing while not. A `<repo>/<rel>` that is missing is
    /// created as the repo's owner; it must stay inside the repo.
    fn sync_live_root(
        &self,
        name: &OsStr,
        root: &Node,
        rel: &Path,
        repo: Option<(&Node, &Ids)>,
        steps: &mut Steps,
    ) -> Result<()> {
        let at = root.path.join(LIVE_CURRENT);
        let current = match root.child(OsStr::new(LIVE_CURRENT)) {
            Ok(n) if n.is_dir() => n,
            Ok(_) => bail!(
                "{} is not a directory (made by hand?); move it away",
                show(&at)
            ),
            Err(Errno::ENOENT) => {
                steps.act(Act::CreatePlaceholder, &at, "live view".into());
                if steps.dry_run {
                    return Ok(());
                }
                placeholder::create(root, OsStr::new(LIVE_CURRENT), LIVE_SPEC)?
            }
            Err(e) => return Err(anyhow!(e)).with_context(|| format!("cannot open {}", show(&at))),
        };
        let mounted = is_mount_root(current.fd.as_fd())?;
        if !mounted && !current.is_placeholder() {
            bail!(
                "{} is a directory that is not ours; move it away",
                show(&at)
            );
        }
        let want = match repo {
            Some((repo, ids)) => self.repo_path(repo, rel, steps)?.map(|t| (t, ids)),
            None => None,
        };
        if let (true, Some((t, ids))) = (mounted, &want) {
            if current.id() == t.id()
                && current.st.st_nlink > 0
                && idmap::mounted_as(&current, t, ids)?
                && gitview::view_is(
                    self.tree,
                    &self.node,
                    name,
                    &current,
                    t,
                    self.git_at(name, rel.as_os_str().is_empty())?,
                )?
            {
                return Ok(());
            }
        }
        if mounted {
            steps.act(Act::Unmount, &at, "live view of an earlier link".into());
            if !steps.dry_run {
                unmount(&current)?;
            }
        }
        if let Some((t, ids)) = want {
            steps.act(
                Act::Mount,
                &at,
                format!("live view of {}, {}", show(&t.path), ids),
            );
            if !steps.dry_run {
                let current = root.child(OsStr::new(LIVE_CURRENT))?;
                if !current.is_placeholder() {
                    bail!("{} is not a placeholder under its mount", show(&at));
                }
                self.attach(name, &t, &current, ids, rel.as_os_str().is_empty())?;
            }
        }
        Ok(())
    }

    /// `<repo>/<rel>`, created as the owner of the deepest existing directory when missing
    /// (`None` in a dry run that would create it); never outside the repo.
    fn repo_path(&self, repo: &Node, rel: &Path, steps: &mut Steps) -> Result<Option<Node>> {
        match self.tree.walk_within(repo, rel, Trust::Owners)? {
            Walk::Found(n) if n.is_dir() => Ok(Some(n)),
            Walk::Found(n) => bail!("{} exists but is not a directory", show(&n.path)),
            Walk::Missing { mut dir, rest } => {
                let (uid, gid) = (dir.uid(), dir.st.st_gid);
                for name in rest {
                    let at = dir.path.join(&name);
                    if name == ".." {
                        bail!("{} goes up through a missing directory", show(&at));
                    }
                    steps.act(
                        Act::MkdirAsOwner,
                        &at,
                        format!("uid {uid}, gid {gid}, 0755"),
                    );
                    if steps.dry_run {
                        return Ok(None);
                    }
                    dir = dirs::mkdir_as(&dir, &name, uid, gid)?;
                }
                Ok(Some(dir))
            }
        }
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
            RepoNow::Gone(_) => None,
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

/// The record a legacy symlink in the workspace dir stands for (its owner made it).
fn legacy_record(link: &Node, ws: &Path) -> Result<Record> {
    let target = PathBuf::from(nix::fcntl::readlinkat(&link.fd, "")?);
    Ok(Record {
        target: paths::normalize(&ws.join(target)),
        owner: link.uid(),
    })
}

/// "<at> is <what> of <owner><detail>; only they or root may change it".
fn not_yours(at: &Path, what: &str, owner: u32, detail: &str) -> String {
    format!(
        "{} is {what} of {}{detail}; only they or root may change it",
        show(at),
        user_label(owner)
    )
}

/// Reads `.links/<name>`; `None` when there is no record. `.links` is a trusted place, so
/// whatever is there was made by root (on a user's behalf: the owner says whose).
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

/// Writes `.links/<name>` atomically: a symlink under a temporary name, chowned to `owner`
/// through its own descriptor, then renamed over the old record.
pub fn write_record(links: &Node, name: &OsStr, rec: &Record) -> Result<()> {
    let tmp = tmp_name();
    let at = links.path.join(name);
    nix::unistd::symlinkat(&rec.target, &links.fd, &*tmp)
        .with_context(|| format!("cannot write record {}", show(&at)))?;
    step("symlink a temporary record");
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
        return Err(e).with_context(|| format!("cannot write record {}", show(&at)));
    }
    step("rename the record into place");
    Ok(())
}

pub fn remove_record(links: &Node, name: &OsStr) -> Result<()> {
    match nix::unistd::unlinkat(&links.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) => {
            step("remove a record");
            Ok(())
        }
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(anyhow!(e))
            .with_context(|| format!("cannot remove record {}", show(&links.path.join(name)))),
    }
}

/// Detaches the mount whose root `node` is (lazily: a busy mount goes when its last user
/// does). It is named by descriptor, so the mount unmounted is the one that was checked, not
/// whatever a path names by the time the call runs.
pub fn unmount(node: &Node) -> Result<()> {
    if !is_mount_root(node.fd.as_fd())? {
        bail!(
            "{} is not a mount point; not unmounting it",
            show(&node.path)
        );
    }
    rustix::mount::unmount(
        proc_path(node.fd.as_fd()),
        rustix::mount::UnmountFlags::DETACH,
    )
    .with_context(|| format!("cannot unmount {}", show(&node.path)))?;
    step("unmount");
    Ok(())
}
