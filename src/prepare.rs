//! Prepare: make every share source of a VM exist (DESIGN.md section 4).
//!
//! A run has two passes. The first only looks (it is also `--dry-run`): it resolves every
//! source, plans what it would create or mount, and finds every reason to fail, so a failing
//! run touches nothing. In the common case, where every source exists, it is also the last.
//! Otherwise the second pass does the plan, holding the workspace lock, parents before children.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::fsafe::{self, Node, PlaceholderSpec, Tree, Trust, Walk};
use crate::link::entry_of;
use crate::paths::show;
use crate::runner::{self, Share};

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
}

/// One share after preparing: where its source resolved.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub share: Share,
    pub resolved: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub kind: Kind,
}

/// One step taken (or, in a dry run, planned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub action: &'static str,
    pub path: PathBuf,
    pub detail: String,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = match self.action {
            "create-placeholder" => "create placeholder",
            "mkdir" => "create directory",
            "mkdir-as-owner" => "create directory as its owner:",
            "mount" => "bind-mount on",
            "unmount" => "unmount",
            "migrate" => "migrate",
            other => other,
        };
        write!(f, "{verb} {}", show(&self.path))?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// What one run works with and what it did.
pub struct Ctx<'a> {
    pub tree: &'a Tree,
    pub cfg: &'a Config,
    pub spec: PlaceholderSpec,
    pub dry_run: bool,
    pub actions: Vec<Action>,
    /// Dry run only: workspace entries that would be mounted, and the repo they would show.
    pub redirects: Vec<(PathBuf, PathBuf)>,
    /// Dry run only: directories planned so far, and how their children would be created.
    planned: BTreeMap<PathBuf, Creator>,
    /// Workspace entries already made to agree with their records in this pass (every share
    /// below one entry would otherwise check it again).
    ensured: Vec<OsString>,
    /// Labels for log lines (the VM and tag being worked on).
    pub vm: String,
    pub tag: String,
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
    pub fn new(tree: &'a Tree, cfg: &'a Config, dry_run: bool) -> Result<Ctx<'a>> {
        Ok(Ctx {
            tree,
            cfg,
            spec: placeholder_spec(cfg)?,
            dry_run,
            actions: Vec::new(),
            redirects: Vec::new(),
            planned: BTreeMap::new(),
            ensured: Vec::new(),
            vm: String::new(),
            tag: String::new(),
        })
    }

    /// Dry run: note that `path` would be replaced by (or created as) a placeholder.
    pub fn plan_placeholder(&mut self, path: &Path) {
        self.planned
            .insert(path.to_path_buf(), Creator::Placeholders);
    }

    /// Records (and logs) a step; in a dry run the caller then skips doing it.
    pub fn act(&mut self, action: &'static str, path: &Path, detail: String) {
        if !self.dry_run {
            tracing::info!(vm = %self.vm, tag = %self.tag, path = %show(path), action, "{action} {} {detail}", show(path));
        }
        self.actions.push(Action {
            action,
            path: path.to_path_buf(),
            detail,
        });
    }

    /// The workspace dir; `None` only in a dry run where it does not exist yet.
    pub fn workspace(&mut self) -> Result<Option<Node>> {
        let dir = self.cfg.workspace_dir.clone();
        if self.dry_run {
            return match self.tree.walk(&dir, Trust::Owners)? {
                Walk::Found(n) if n.is_dir() => Ok(Some(n)),
                Walk::Found(n) => bail!("{} is not a directory", show(&n.path)),
                Walk::Missing { .. } => Ok(None),
            };
        }
        fsafe::ensure_root_dir(self.tree, &dir).map(Some)
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
    pub fn ensure_share(&mut self, share: &Share) -> Result<Option<Prepared>> {
        self.tag = share.tag.clone();
        if let Some(name) = entry_of(&self.cfg.workspace_dir, &share.path) {
            if !self.ensured.iter().any(|n| n == name) {
                self.ensure_entry(name)?;
                self.ensured.push(name.to_os_string());
            }
        }
        let path = self.redirected(&share.path);
        if self.dry_run {
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
                if !self.dry_run && matches!(&walk, Walk::Found(n) if n.is_dir()) {
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
            if node.is_placeholder() {
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
                tracing::warn!(vm = %self.vm, tag = %self.tag, path = %show(path), action = "symlinked-source",
                    "share {:?} source {} is a symbolic link, which virtiofsd 1.14 and later refuse; point the share at its target or link it with microvm-link",
                    self.tag, show(path));
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
                    self.act("create-placeholder", &path, mode_text(spec));
                    if let Some(d) = dir.as_ref().filter(|_| !self.dry_run) {
                        // A placeholder is built under a temporary name in `d`; a run killed
                        // doing so left one behind here, where only this step ever looks (the
                        // leaf is still missing). We hold the lock: such names are leftovers.
                        fsafe::remove_leftovers(d)?;
                        dir = Some(fsafe::create_placeholder(d, name, spec)?);
                    }
                    Creator::Placeholders
                }
                Creator::Root | Creator::Placeholders => {
                    self.act("mkdir", &path, "root, 0755".into());
                    if let Some(d) = dir.as_ref().filter(|_| !self.dry_run) {
                        dir = Some(fsafe::mkdir_as(d, name, 0, 0)?);
                    }
                    Creator::Root
                }
                Creator::User(uid, gid) => {
                    self.act(
                        "mkdir-as-owner",
                        &path,
                        format!("uid {uid}, gid {gid}, 0755"),
                    );
                    if let Some(d) = dir.as_ref().filter(|_| !self.dry_run) {
                        dir = Some(fsafe::mkdir_as(d, name, uid, gid)?);
                    }
                    creator
                }
            };
            if self.dry_run {
                self.planned.insert(path.clone(), children);
            }
            creator = children;
        }
        let Some(dir) = dir.filter(|_| !self.dry_run) else {
            return Ok(None);
        };
        let kind = match creator {
            Creator::User(..) => Kind::CreatedInRepo,
            _ => Kind::Placeholder,
        };
        Ok(Some((dir, kind)))
    }
}

fn mode_text(spec: PlaceholderSpec) -> String {
    format!("uid {}, gid {}, {:04o}", spec.uid, spec.gid, spec.mode)
}

/// Resolves the configured placeholder owner to numbers (names through the host's user db).
pub fn placeholder_spec(cfg: &Config) -> Result<PlaceholderSpec> {
    let p = &cfg.placeholder;
    // `root` (the default) is 0 without asking NSS, as systemd resolves it: every start would
    // otherwise pay for user and group database lookups (an nscd round trip on NixOS).
    let uid = match p.user.parse::<u32>() {
        Ok(n) => n,
        Err(_) if p.user == "root" => 0,
        Err(_) => nix::unistd::User::from_name(&p.user)
            .ok()
            .flatten()
            .with_context(|| format!("placeholder.user {:?}: no such user", p.user))?
            .uid
            .as_raw(),
    };
    let gid = match p.group.parse::<u32>() {
        Ok(n) => n,
        Err(_) if p.group == "root" => 0,
        Err(_) => nix::unistd::Group::from_name(&p.group)
            .ok()
            .flatten()
            .with_context(|| format!("placeholder.group {:?}: no such group", p.group))?
            .gid
            .as_raw(),
    };
    Ok(PlaceholderSpec {
        uid,
        gid,
        mode: p.mode_bits(),
    })
}

/// The result of preparing one VM.
pub struct Outcome {
    pub prepared: Vec<Prepared>,
    /// Steps taken, or in a dry run the steps it would take.
    pub actions: Vec<Action>,
}

/// Prepares every share of `vm`. With `dry_run`, changes nothing and returns the plan.
pub fn prepare_vm(tree: &Tree, cfg: &Config, vm: &str, dry_run: bool) -> Result<Outcome> {
    let shares = runner::shares(tree, cfg, vm).with_context(|| format!("VM {vm}"))?;
    prepare_shares(tree, cfg, vm, &shares, dry_run)
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
    let mut look = Ctx::new(tree, cfg, true)?;
    look.vm = vm.to_string();
    for (name, target) in assume {
        let at = cfg.workspace_dir.join(name);
        match target {
            Some(t) => look.redirects.push((at, t.clone())),
            None => look.plan_placeholder(&at),
        }
        look.ensured.push(name.into());
    }
    for s in shares {
        look.ensure_share(s).with_context(|| share_label(vm, s))?;
    }
    Ok(look.actions)
}

/// Prepares the given shares of `vm` (a subset when microvm-link ensures what it changed).
pub fn prepare_shares(
    tree: &Tree,
    cfg: &Config,
    vm: &str,
    shares: &[Share],
    dry_run: bool,
) -> Result<Outcome> {
    let mut look = Ctx::new(tree, cfg, true)?;
    look.vm = vm.to_string();
    let mut found = Vec::new();
    for s in shares {
        let r = look.ensure_share(s).with_context(|| share_label(vm, s))?;
        found.push(r);
    }
    if dry_run || look.actions.is_empty() {
        return Ok(Outcome {
            prepared: found.into_iter().flatten().collect(),
            actions: look.actions,
        });
    }
    let mut act = Ctx::new(tree, cfg, false)?;
    act.vm = vm.to_string();
    let ws = act.workspace()?.expect("not a dry run");
    let _lock = fsafe::lock(&ws)?;
    act.clean_workspace(&ws)?;
    if let Some(links) = act.links_dir(&ws)? {
        fsafe::remove_leftovers(&links)?;
    }
    let mut prepared = Vec::new();
    for s in shares {
        let r = act.ensure_share(s).with_context(|| share_label(vm, s))?;
        prepared.push(r.expect("not a dry run"));
    }
    Ok(Outcome {
        prepared,
        actions: act.actions,
    })
}

fn share_label(vm: &str, s: &Share) -> String {
    format!("VM {vm}, share {:?} ({})", s.tag, show(&s.path))
}
