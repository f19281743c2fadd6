//! Prepare: make every share source of one VM exist (docs/design.md#prepare).
//!
//! A run has two passes. The first only looks (it is also `--dry-run`): it resolves every
//! source, plans what it would create or mount, and finds every reason to fail, so a failing
//! run touches nothing. In the common case, where every source exists, it is also the last.
//! Otherwise the second pass does the plan, holding the workspace lock, parents before children.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::engine::entry::{entry_of, live_of, Workspace};
use crate::fs::chase::{Node, Tree, Trust, Walk};
use crate::fs::dirs;
use crate::fs::paths::show;
use crate::fs::placeholder::{self, PlaceholderSpec};
use crate::model::action::{Act, Action, Steps};
use crate::model::config::{Config, Proto};
use crate::model::record::{Kind, Prepared};
use crate::model::runner::{self, Share};

/// A share the linked repo could not serve, and where its placeholder goes: on `dir` (the
/// deepest directory of the path that is one, inside the entry), a tmpfs holding `rest`.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub share: Share,
    pub dir: PathBuf,
    pub dir_id: (u64, u64),
    pub rest: Vec<OsString>,
    /// Why, in one line (the error that would have failed the start).
    pub why: String,
}

/// What one run works with and what it did.
struct Ctx<'a> {
    tree: &'a Tree,
    cfg: &'a Config,
    spec: PlaceholderSpec,
    /// The workspace dir; `None` only in a dry run where it does not exist yet.
    ws: Option<Workspace<'a>>,
    steps: Steps,
    /// Dry run only: workspace entries that would be mounted, and the repo they would show.
    redirects: Vec<(PathBuf, PathBuf)>,
    /// Dry run only: directories planned so far, and how their children would be created.
    planned: BTreeMap<PathBuf, Creator>,
    /// Workspace entries already made to agree with their records in this pass (every share
    /// below one entry would otherwise check it again).
    ensured: Vec<OsString>,
    /// Plan only: entries taken as linked to these repos (`None`: unlinked) whatever their
    /// records say (see [`plan_assuming`]).
    assumed: BTreeMap<OsString, Option<Node>>,
    /// A VM's start: a source a linked repo cannot serve falls back (see [`Fallback`])
    /// instead of failing the start. microvm-link's plan stays strict.
    fall_back: bool,
    fallbacks: Vec<Fallback>,
}

/// How to create what is missing below an existing directory.
#[derive(Clone, Copy, Debug)]
enum Creator {
    /// Below a placeholder: placeholders all the way down.
    Placeholders,
    /// Below a root-owned directory: root 0755 parents, a placeholder leaf.
    Root,
    /// Below a user's directory: plain 0755 directories with that user's credentials.
    User(u32, u32),
}

impl<'a> Ctx<'a> {
    fn new(tree: &'a Tree, cfg: &'a Config, vm: &str, dry_run: bool) -> Result<Ctx<'a>> {
        let ws = if dry_run {
            Workspace::find(tree, cfg)?
        } else {
            Some(Workspace::ensure(tree, cfg)?)
        };
        Ok(Ctx {
            tree,
            cfg,
            spec: cfg.placeholder_spec()?,
            ws,
            steps: Steps::new(vm, dry_run),
            redirects: Vec::new(),
            planned: BTreeMap::new(),
            ensured: Vec::new(),
            assumed: BTreeMap::new(),
            fall_back: false,
            fallbacks: Vec::new(),
        })
    }

    fn dry_run(&self) -> bool {
        self.steps.dry_run
    }

    /// Dry run: note that `path` would be replaced by (or created as) a placeholder.
    fn plan_placeholder(&mut self, path: &Path) {
        self.planned
            .insert(path.to_path_buf(), Creator::Placeholders);
    }

    /// Makes workspace entry `name` agree with its record, once per run; in a dry run,
    /// remembers what it would make of it.
    fn reconcile(&mut self, name: &OsStr) -> Result<()> {
        if self.ensured.iter().any(|n| n == name) {
            return Ok(());
        }
        self.ensured.push(name.to_os_string());
        let Some(ws) = &self.ws else { return Ok(()) };
        let r = ws.reconcile(name, &mut self.steps)?;
        let at = self.cfg.workspace_dir.join(name);
        if r.would_create {
            self.plan_placeholder(&at);
        }
        if let Some(repo) = r.would_mount {
            self.redirects.push((at, repo));
        }
        Ok(())
    }

    /// Where a path leads once planned mounts are taken into account (dry run only).
    fn redirected(&self, path: &Path) -> PathBuf {
        for (entry, repo) in &self.redirects {
            if let Ok(rest) = path.strip_prefix(entry) {
                return repo.join(rest);
            }
        }
        path.to_path_buf()
    }

    /// Makes one share's source exist; returns what it resolved to (`None`: dry run, and it
    /// would be created).
    fn ensure_share(&mut self, share: &Share) -> Result<Option<Prepared>> {
        self.steps.tag = share.tag.clone();
        let live = live_of(&self.cfg.workspace_dir, &share.path).transpose()?;
        if let Some((name, rel)) = &live {
            self.reconcile(name)?;
            let before = self.steps.actions.len();
            let assume = self.assumed.get(name).map(Option::as_ref);
            match &self.ws {
                Some(ws) => ws.ensure_live_root(name, rel, assume, &mut self.steps)?,
                None => self
                    .steps
                    .act(Act::Mkdir, &share.path, "live root, root, 0755".into()),
            }
            if self.dry_run() && self.steps.actions.len() > before {
                return Ok(None); // planned: the second pass makes it
            }
        } else if let Some(name) = entry_of(&self.cfg.workspace_dir, &share.path) {
            self.reconcile(name)?;
            let linked = self.ws.as_ref().and_then(|ws| ws.shows_repo(name));
            if let (true, Some(rec)) = (self.fall_back && share.proto == Proto::Virtiofs, linked) {
                return match self.resolve(share, live.is_some()) {
                    Err(e) => self.fallback(share, rec.owner, &e),
                    ok => ok,
                };
            }
        }
        self.resolve(share, live.is_some())
    }

    /// A source below a linked entry that its repo cannot serve: the placeholder to mount for
    /// this VM, and a journal line naming the path and the link's owner.
    fn fallback(
        &mut self,
        share: &Share,
        owner: u32,
        e: &anyhow::Error,
    ) -> Result<Option<Prepared>> {
        let entry_path = entry_of(&self.cfg.workspace_dir, &share.path)
            .map(|n| self.cfg.workspace_dir.join(n))
            .context("not below an entry")?;
        let dir = share
            .path
            .ancestors()
            .take_while(|a| a.starts_with(&entry_path))
            .find_map(|a| match self.tree.walk(a, Trust::Owners) {
                Ok(Walk::Found(n)) if n.is_dir() => Some(n),
                _ => None,
            })
            .with_context(|| format!("{}: nothing of it is a directory", show(&share.path)))?;
        let rest: Vec<OsString> = share
            .path
            .strip_prefix(&dir.path)
            .unwrap_or(Path::new(""))
            .iter()
            .map(OsStr::to_os_string)
            .collect();
        let why = crate::host::logging::one_line(e);
        tracing::warn!(vm = %self.steps.vm, tag = %share.tag, path = %show(&share.path), owner, action = "fallback",
            "share {:?} source {} cannot be served from the repo linked by {}: {}; this VM gets a placeholder there",
            share.tag, show(&share.path), crate::model::config::user_label(owner), why);
        self.fallbacks.push(Fallback {
            share: share.clone(),
            dir: dir.path.clone(),
            dir_id: dir.id(),
            rest,
            why,
        });
        Ok(Some(Prepared {
            share: share.clone(),
            resolved: share.path.clone(),
            dev: 0,
            ino: 0,
            kind: Kind::Fallback,
        }))
    }

    /// The source as it is, made to exist where it may be (the body of [`Ctx::ensure_share`]).
    fn resolve(&mut self, share: &Share, live: bool) -> Result<Option<Prepared>> {
        let path = self.redirected(&share.path);
        if self.dry_run() {
            // Below something this dry run already plans to create (or to replace by a
            // placeholder), the rest is planned without looking at the disk.
            if let Some((base, creator)) = self.planned_ancestor(&path) {
                let rest: Vec<OsString> = path
                    .strip_prefix(&base)
                    .expect("an ancestor")
                    .iter()
                    .map(OsStr::to_os_string)
                    .collect();
                self.create_below(None, base, creator, &rest)?;
                return Ok(None);
            }
        }
        let found = match self.tree.existing_dir_fast(&path) {
            Some(n) => Walk::Found(n),
            None => {
                let walk = self.tree.walk(&path, Trust::Owners)?;
                if !self.dry_run() && matches!(&walk, Walk::Found(n) if n.is_dir()) {
                    self.warn_if_symlink(&path);
                }
                walk
            }
        };
        let (node, created) = match found {
            Walk::Found(n) if n.is_dir() => (n, None),
            Walk::Found(n) => bail!("{} exists but is not a directory", show(&n.path)),
            Walk::Missing { dir, rest } => {
                if path.starts_with("/nix/store") {
                    bail!(
                        "{} does not exist (store paths are never created)",
                        show(&path)
                    );
                }
                let creator = if dir.is_placeholder() {
                    Creator::Placeholders
                } else if dir.uid() == 0 {
                    Creator::Root
                } else {
                    Creator::User(dir.uid(), dir.st.st_gid)
                };
                let base = dir.path.clone();
                match self.create_below(Some(dir), base, creator, &rest)? {
                    Some((n, kind)) => (n, Some(kind)),
                    None => return Ok(None),
                }
            }
        };
        let kind = created.unwrap_or_else(|| {
            if live {
                Kind::Live
            } else if node.is_placeholder() {
                Kind::Placeholder
            } else {
                Kind::Existing
            }
        });
        Ok(Some(Prepared {
            share: share.clone(),
            resolved: node.path.clone(),
            dev: node.st.st_dev,
            ino: node.st.st_ino,
            kind,
        }))
    }

    /// virtiofsd 1.14 refuses a source whose last component is a symlink (BindMountSharedDir:
    /// Invalid argument). Not ours to change, but worth a word before virtiofsd's obscure one.
    /// Only on the slow path: the fast one already proved there is no symlink at all.
    fn warn_if_symlink(&self, path: &Path) {
        let Some(parent) = path.parent() else { return };
        let Some(name) = path.file_name() else { return };
        let Ok(Walk::Found(dir)) = self.tree.walk(parent, Trust::Owners) else {
            return;
        };
        if let Ok(n) = dir.child(name) {
            if n.st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK {
                tracing::warn!(vm = %self.steps.vm, tag = %self.steps.tag, path = %show(path), action = "symlinked-source",
                    "share {:?} source {} is a symbolic link, which virtiofsd 1.14 and later refuse; point the share at its target or link it with microvm-link",
                    self.steps.tag, show(path));
            }
        }
    }

    /// The nearest path at or above `path` that this dry run plans to create.
    fn planned_ancestor(&self, path: &Path) -> Option<(PathBuf, Creator)> {
        path.ancestors()
            .find_map(|a| self.planned.get(a).map(|c| (a.to_path_buf(), *c)))
    }

    /// Creates `rest` below the directory at `path` (`dir`: its node; `None` only in a dry
    /// run, for a directory that is itself only planned) by `creator`'s rules.
    fn create_below(
        &mut self,
        dir: Option<Node>,
        mut path: PathBuf,
        mut creator: Creator,
        rest: &[OsString],
    ) -> Result<Option<(Node, Kind)>> {
        let mut dir = dir;
        for (i, name) in rest.iter().enumerate() {
            if name == OsStr::new("..") {
                bail!(
                    "cannot create {}: it goes up through a missing directory",
                    show(&path.join(name))
                );
            }
            path.push(name);
            if let Some(c) = self.planned.get(&path) {
                creator = *c; // a dry run already planned it for an earlier share
                continue;
            }
            let leaf = i + 1 == rest.len();
            // A workspace entry is a placeholder even as a parent (`nixfiles` when a VM
            // needs `nixfiles/hosts/...` first): it is where a link gets mounted, and a
            // plain directory there would be taken for a user's and moved aside.
            let entry = path.parent() == Some(self.cfg.workspace_dir.as_path())
                && entry_of(&self.cfg.workspace_dir, &path).is_some();
            let spec = self.spec;
            let children = match creator {
                Creator::Placeholders | Creator::Root
                    if leaf || entry || matches!(creator, Creator::Placeholders) =>
                {
                    self.steps
                        .act(Act::CreatePlaceholder, &path, spec.describe());
                    if let Some(d) = dir.as_ref().filter(|_| !self.dry_run()) {
                        // A placeholder is built under a temporary name in `d`; a run killed
                        // doing so left one behind here, where only this step ever looks (the
                        // leaf is still missing). We hold the lock: such names are leftovers.
                        dirs::remove_leftovers(d)?;
                        dir = Some(placeholder::create(d, name, spec)?);
                    }
                    Creator::Placeholders
                }
                Creator::Root | Creator::Placeholders => {
                    self.steps.act(Act::Mkdir, &path, "root, 0755".into());
                    if let Some(d) = dir.as_ref().filter(|_| !self.dry_run()) {
                        dir = Some(dirs::mkdir_as(d, name, 0, 0)?);
                    }
                    Creator::Root
                }
                Creator::User(uid, gid) => {
                    self.steps.act(
                        Act::MkdirAsOwner,
                        &path,
                        format!("uid {uid}, gid {gid}, 0755"),
                    );
                    if let Some(d) = dir.as_ref().filter(|_| !self.dry_run()) {
                        dir = Some(dirs::mkdir_as(d, name, uid, gid)?);
                    }
                    creator
                }
            };
            if self.dry_run() {
                self.planned.insert(path.clone(), children);
            }
            creator = children;
        }
        let Some(dir) = dir.filter(|_| !self.dry_run()) else {
            return Ok(None);
        };
        let kind = match creator {
            Creator::User(..) => Kind::CreatedInRepo,
            _ => Kind::Placeholder,
        };
        Ok(Some((dir, kind)))
    }
}

/// The result of preparing one VM.
pub struct Outcome {
    pub prepared: Vec<Prepared>,
    /// Steps taken, or in a dry run the steps it would take.
    pub actions: Vec<Action>,
    /// Sources served by a placeholder in the VM's namespace ([`serve_fallbacks`]).
    pub fallbacks: Vec<Fallback>,
}

/// Prepares every share of `vm` for its start. With `dry_run`, changes nothing and returns
/// the plan. A source a linked repo cannot serve is a [`Fallback`], not a failed start.
pub fn prepare_vm(tree: &Tree, cfg: &Config, vm: &str, dry_run: bool) -> Result<Outcome> {
    let shares = runner::shares(tree, cfg, vm).with_context(|| format!("VM {vm}"))?;
    prepare(tree, cfg, vm, &shares, dry_run, true)
}

/// Plans the given shares of `vm` as if workspace entries were already linked as `assume`
/// says (entry name, repo; `None`: a placeholder): microvm-link's check, before it changes
/// anything, that every source it will have to ensure afterwards can be made.
pub fn plan_assuming(
    tree: &Tree,
    cfg: &Config,
    vm: &str,
    shares: &[Share],
    assume: &[(String, Option<PathBuf>)],
) -> Result<Vec<Action>> {
    let mut look = Ctx::new(tree, cfg, vm, true)?;
    for (name, target) in assume {
        let at = cfg.workspace_dir.join(name);
        let repo = match target {
            Some(t) => {
                look.redirects.push((at, t.clone()));
                match tree.walk(t, Trust::Owners)? {
                    Walk::Found(n) if n.is_dir() => Some(n),
                    _ => bail!("{} is not a directory", show(t)),
                }
            }
            None => {
                look.plan_placeholder(&at);
                None
            }
        };
        look.ensured.push(name.into());
        look.assumed.insert(name.into(), repo);
    }
    for s in shares {
        look.ensure_share(s).with_context(|| share_label(vm, s))?;
    }
    Ok(look.steps.actions)
}

/// Prepares the given shares of `vm` (a subset when microvm-link ensures what it changed).
/// First a look that changes nothing and finds every reason to fail; in the common case,
/// where every source exists, it is also the last. Otherwise the plan is carried out holding
/// the workspace lock, parents before children.
pub fn prepare_shares(
    tree: &Tree,
    cfg: &Config,
    vm: &str,
    shares: &[Share],
    dry_run: bool,
) -> Result<Outcome> {
    prepare(tree, cfg, vm, shares, dry_run, false)
}

fn prepare(
    tree: &Tree,
    cfg: &Config,
    vm: &str,
    shares: &[Share],
    dry_run: bool,
    fall_back: bool,
) -> Result<Outcome> {
    let mut look = Ctx::new(tree, cfg, vm, true)?;
    look.fall_back = fall_back;
    let mut found = Vec::new();
    for s in shares {
        let r = look.ensure_share(s).with_context(|| share_label(vm, s))?;
        found.push(r);
    }
    if dry_run || look.steps.actions.is_empty() {
        return Ok(Outcome {
            prepared: found.into_iter().flatten().collect(),
            actions: look.steps.actions,
            fallbacks: look.fallbacks,
        });
    }
    let mut act = Ctx::new(tree, cfg, vm, false)?;
    act.fall_back = fall_back;
    let _lock = act.ws.as_ref().expect("not a dry run").lock()?;
    let mut prepared = Vec::new();
    for s in shares {
        let r = act.ensure_share(s).with_context(|| share_label(vm, s))?;
        prepared.push(r.expect("not a dry run"));
    }
    Ok(Outcome {
        prepared,
        actions: act.steps.actions,
        fallbacks: act.fallbacks,
    })
}

/// The `source` of a fallback placeholder's tmpfs, by which [`release_fallbacks`] finds it.
fn fallback_source(vm: &str) -> String {
    format!("microvm-workspaces-fallback:{vm}")
}

/// Mounts each fallback's placeholder: a small tmpfs holding the rest of the path (root 0755
/// directories, the leaf a placeholder) on the deepest directory of it that is one (the same
/// directory, by device and inode, as found before). It goes below a workspace entry, whose
/// mount is private: nothing propagates to another namespace, and the repo's own path never
/// shows it. `microvm-virtiofsd@`'s namespace, made when virtiofsd starts, copies it; its
/// `ExecStartPost=` and `ExecStopPost=` ([`release_fallbacks`]) then take it off the host's.
pub fn serve_fallbacks(tree: &Tree, cfg: &Config, vm: &str, fallbacks: &[Fallback]) -> Result<()> {
    release_fallbacks(vm)?;
    let spec = cfg.placeholder_spec()?;
    for f in fallbacks {
        let what = || format!("placeholder for {}", show(&f.share.path));
        let dir = match tree.walk(&f.dir, Trust::Owners).with_context(what)? {
            Walk::Found(n) if n.is_dir() && n.id() == f.dir_id => n,
            _ => bail!("{}: {} changed meanwhile", what(), show(&f.dir)),
        };
        use rustix::mount::{self as m, FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};
        let fs = m::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).with_context(what)?;
        m::fsconfig_set_string(&fs, "source", fallback_source(vm)).with_context(what)?;
        m::fsconfig_set_string(&fs, "size", "64k").with_context(what)?;
        m::fsconfig_set_string(&fs, "mode", "0755").with_context(what)?;
        m::fsconfig_create(&fs).with_context(what)?;
        let mnt = m::fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV
                | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        )
        .with_context(what)?;
        let mut at = Node::open_at(
            std::os::fd::AsFd::as_fd(&mnt),
            OsStr::new("."),
            f.dir.clone(),
        )?;
        for (i, name) in f.rest.iter().enumerate() {
            at = if i + 1 == f.rest.len() {
                placeholder::create(&at, name, spec)?
            } else {
                dirs::mkdir_as(&at, name, 0, 0)?
            };
        }
        m::move_mount(
            &mnt,
            "",
            std::os::fd::AsFd::as_fd(&dir.fd),
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .with_context(what)?;
        crate::fs::failpoint::step("fallback placeholder");
    }
    Ok(())
}

/// Detaches `vm`'s fallback placeholders from this mount namespace (found by their tmpfs
/// source in /proc/self/mountinfo; each checked to be a mount root before it goes).
pub fn release_fallbacks(vm: &str) -> Result<()> {
    let source = fallback_source(vm);
    for m in crate::fs::chase::mounts()?
        .iter()
        .filter(|m| m.source == source)
    {
        if let Ok(f) = std::fs::File::open(&m.at) {
            if crate::fs::chase::is_mount_root(std::os::fd::AsFd::as_fd(&f))? {
                let _ = rustix::mount::unmount(
                    crate::fs::chase::proc_path(std::os::fd::AsFd::as_fd(&f)),
                    rustix::mount::UnmountFlags::DETACH,
                );
                crate::fs::failpoint::step("release fallback");
            }
        }
    }
    Ok(())
}

fn share_label(vm: &str, s: &Share) -> String {
    format!("VM {vm}, share {:?} ({})", s.tag, show(&s.path))
}
