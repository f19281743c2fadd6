//! Observing: what a workspace entry, its record, its repo and its live roots are now, as
//! plain facts for the planner (engine::plan), with the descriptors of every directory the
//! plan may act in kept for the applier (engine::apply).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use nix::errno::Errno;

use crate::engine::entry::{RepoNow, Workspace};
use crate::engine::facts::{
    Current, Entry, EntryFacts, LiveFacts, Missing, Rec, RepoFacts, Room, Shows, Target, Want,
};
use crate::engine::gitview::{self, Place};
use crate::engine::guests::Guests;
use crate::engine::links::{legacy_record, read_record};
use crate::engine::policy;
use crate::fs::chase::{is_mount_root, is_symlink, Node, Tree, Trust, Walk};
use crate::fs::idmap;
use crate::fs::paths;
use crate::fs::paths::LIVE_CURRENT;
use crate::host::logging::one_line;
use crate::model::config::{self, Config};

/// Directories (and the odd file) seen while observing, by path: where the applier acts,
/// each checked again there before use.
#[derive(Default)]
pub struct Held(BTreeMap<PathBuf, Node>);

impl Held {
    pub fn get(&self, path: &Path) -> Option<&Node> {
        self.0.get(path)
    }

    pub fn keep(&mut self, node: Node) {
        self.0.insert(node.path.clone(), node);
    }
}

/// What an entry is wanted to show, as the caller knows it.
pub enum WantOf<'a> {
    /// What its record says (a VM's start).
    Recorded,
    /// This repo (microvm-link, checked).
    Repo(&'a Node),
    /// Nothing (an unlink).
    Nothing,
}

impl Workspace<'_> {
    /// Entry `name` with what `want` asks it to show, and its live roots.
    pub fn observe_entry(&self, name: &OsStr, want: WantOf, held: &mut Held) -> Result<EntryFacts> {
        held.keep(self.node.try_clone()?);
        let links = self.links()?;
        let at = self.path().join(name);
        let mut record = read_record(links.as_ref(), name)?;
        let mut legacy = false;
        if let Some(l) = links {
            held.keep(l);
        }
        let node = self.child(name)?;
        let mut entry = match &node {
            None => Entry::Missing,
            Some(n) if !n.is_dir() && is_symlink(&n.st) => {
                let rec = legacy_record(n, self.path())?;
                let e = Entry::Legacy {
                    target: rec.target.clone(),
                    owner: rec.owner,
                };
                if record.is_none() {
                    legacy = true;
                    record = Some(rec);
                }
                e
            }
            Some(n) if !n.is_dir() => Entry::NotADirectory,
            Some(n) if is_mount_root(n.fd.as_fd())? => Entry::Mounted {
                id: n.id(),
                shows: Shows::Other,
            },
            Some(n) if n.is_placeholder() => Entry::Placeholder,
            Some(n) => Entry::Directory {
                owner: n.uid(),
                nobodys: policy::nobodys(
                    n.uid(),
                    n.st.st_gid,
                    config::uid_of(&self.hypervisor.user),
                    config::gid_of(&self.hypervisor.group),
                ),
            },
        };
        let repo_now = record.as_ref().map(|r| (r, self.repo_now(r)));
        let rec = repo_now.as_ref().map(|(r, now)| Rec {
            target: r.target.clone(),
            owner: r.owner,
            repo_found: matches!(now, RepoNow::Found(_)),
            legacy,
        });
        let (want, repo) = match (want, repo_now) {
            (WantOf::Repo(n), _) => (self.repo_facts(name, n)?, Some(n.try_clone()?)),
            (WantOf::Recorded, Some((_, RepoNow::Found(n)))) => {
                (self.repo_facts(name, &n)?, Some(n))
            }
            (WantOf::Recorded, Some((r, RepoNow::Missing))) => (
                Want::Gone {
                    target: r.target.clone(),
                    why: None,
                },
                None,
            ),
            (WantOf::Recorded, Some((r, RepoNow::Unusable(why)))) => (
                Want::Gone {
                    target: r.target.clone(),
                    why: Some(why),
                },
                None,
            ),
            (WantOf::Recorded, None) | (WantOf::Nothing, _) => (Want::Nothing, None),
        };
        if let (Some(n), Entry::Mounted { shows, .. }, Some(repo), Want::Repo(r)) =
            (&node, &mut entry, &repo, &want)
        {
            if n.id() == repo.id() && n.st.st_nlink > 0 {
                *shows = match r.ids.as_ref().ok() {
                    Some(ids)
                        if idmap::mounted_as(n, repo, ids)?
                            && gitview::view_is(
                                self.tree,
                                &self.node,
                                name,
                                n,
                                repo,
                                r.git,
                                Place::Entry,
                            )? =>
                    {
                        Shows::Wanted
                    }
                    _ => Shows::WantedOtherwise,
                };
            }
        }
        if let Some(n) = node {
            held.keep(n);
        }
        let mut live = Vec::new();
        match self.live_roots(name) {
            Ok(roots) => {
                for (root, rel) in roots {
                    live.push(self.observe_live(name, root, &rel, repo.as_ref(), &want, held)?);
                }
            }
            Err(e) => tracing::warn!(
                "cannot list the live roots of {}: {}",
                paths::show_bytes(name),
                one_line(&e)
            ),
        }
        if let Some(r) = repo {
            held.keep(r);
        }
        Ok(EntryFacts {
            name: name.to_os_string(),
            at,
            links: self.links()?.is_some(),
            record: rec,
            entry,
            want,
            live,
            spec: self.spec,
        })
    }

    /// The facts of a repo to be shown at entry `name`.
    fn repo_facts(&self, name: &OsStr, repo: &Node) -> Result<Want> {
        Ok(Want::Repo(RepoFacts {
            path: repo.path.clone(),
            id: repo.id(),
            owner: (repo.uid(), repo.st.st_gid),
            ids: self.ids_for(name, repo).map_err(|e| one_line(&e)),
            git: self.guest_of(name)?.git,
            room: entry_room(self.tree, self.path(), &self.guests, name, repo),
        }))
    }

    /// The live root `<workspaceDir>/.live/<name>/<rel>` a share names, which may not exist
    /// yet (prepare makes it).
    pub fn observe_live_root(
        &self,
        name: &OsStr,
        rel: &Path,
        facts: &EntryFacts,
        held: &mut Held,
    ) -> Result<LiveFacts> {
        let at = self.path().join(paths::LIVE).join(name).join(rel);
        if let Some(l) = facts.live.iter().find(|l| l.root == at) {
            return Ok(l.clone());
        }
        let repo = match &facts.want {
            Want::Repo(r) => held.get(&r.path).map(Node::try_clone).transpose()?,
            _ => None,
        };
        match self.tree.walk(&at, Trust::Owners)? {
            Walk::Found(n) if n.is_dir() => {
                crate::fs::dirs::check_trusted_place(&n)?;
                self.observe_live(name, n, rel, repo.as_ref(), &facts.want, held)
            }
            Walk::Found(n) => bail!("{} exists but is not a directory", paths::show(&n.path)),
            Walk::Missing { dir, rest } => {
                if !dir.path.starts_with(self.path()) {
                    bail!("{} is outside the workspace dir", paths::show(&at));
                }
                let mut missing = Vec::new();
                let mut p = dir.path.clone();
                for r in &rest {
                    p.push(r);
                    missing.push(p.clone());
                }
                held.keep(dir);
                let target = repo.as_ref().map(|r| self.observe_target(r, rel, held));
                Ok(LiveFacts {
                    root: at,
                    rel: rel.to_path_buf(),
                    missing,
                    current: Current::Missing,
                    room: Room::Missing,
                    target,
                })
            }
        }
    }

    /// One existing live root of `name`, against the repo wanted there.
    fn observe_live(
        &self,
        name: &OsStr,
        root: Node,
        rel: &Path,
        repo: Option<&Node>,
        want: &Want,
        held: &mut Held,
    ) -> Result<LiveFacts> {
        let target = repo.map(|r| self.observe_target(r, rel, held));
        let current = match root.child(OsStr::new(LIVE_CURRENT)) {
            Err(Errno::ENOENT) => Current::Missing,
            Err(e) => bail!(
                "cannot open {}: {e}",
                paths::show(&root.path.join(LIVE_CURRENT))
            ),
            Ok(c) if !c.is_dir() => Current::NotADirectory,
            Ok(c) if is_mount_root(c.fd.as_fd())? => {
                let as_wanted = match (&target, want) {
                    (Some(Target::Found { path, .. }), Want::Repo(r)) => {
                        match (held.get(path), r.ids.as_ref().ok()) {
                            (Some(t), Some(ids)) => {
                                let git = match r.git {
                                    config::GitMode::Private if !rel.as_os_str().is_empty() => {
                                        config::GitMode::Readonly
                                    }
                                    g => g,
                                };
                                c.id() == t.id()
                                    && c.st.st_nlink > 0
                                    && idmap::mounted_as(&c, t, ids)?
                                    && gitview::view_is(
                                        self.tree,
                                        &self.node,
                                        name,
                                        &c,
                                        t,
                                        git,
                                        Place::Live(&root),
                                    )?
                            }
                            _ => false,
                        }
                    }
                    _ => false,
                };
                Current::Mounted {
                    id: c.id(),
                    as_wanted,
                }
            }
            Ok(c) if c.is_placeholder() => Current::Placeholder,
            Ok(_) => Current::NotOurs,
        };
        let room = match root.child(OsStr::new(paths::GIT_ROOM)) {
            Err(Errno::ENOENT) => Room::Missing,
            Err(e) => bail!(
                "cannot open {}: {e}",
                paths::show(&root.path.join(paths::GIT_ROOM))
            ),
            Ok(n) if n.is_dir() && is_mount_root(n.fd.as_fd())? => Room::Mounted(n.id()),
            Ok(_) => Room::Ready,
        };
        let out = LiveFacts {
            root: root.path.clone(),
            rel: rel.to_path_buf(),
            missing: Vec::new(),
            current,
            room,
            target,
        };
        held.keep(root);
        Ok(out)
    }

    /// `<repo>/<rel>`: found (kept), or missing below its deepest directory (kept).
    fn observe_target(&self, repo: &Node, rel: &Path, held: &mut Held) -> Target {
        match self.tree.walk_within(repo, rel, Trust::Owners) {
            Ok(Walk::Found(n)) if n.is_dir() => {
                let t = Target::Found {
                    path: n.path.clone(),
                    id: n.id(),
                    room: gitview::needs_room(self.tree, self.path(), &n),
                };
                held.keep(n);
                t
            }
            Ok(Walk::Found(n)) => Target::NotADirectory(n.path),
            Ok(Walk::Missing { dir, rest }) => {
                let m = missing(&dir, rest);
                held.keep(dir);
                Target::Missing(m)
            }
            Err(e) => Target::Unreachable(one_line(&e)),
        }
    }
}

/// The facts of a missing path below `dir`.
pub fn missing(dir: &Node, rest: Vec<std::ffi::OsString>) -> Missing {
    Missing {
        dir: dir.path.clone(),
        dir_id: dir.id(),
        dir_uid: dir.uid(),
        dir_gid: dir.st.st_gid,
        dir_placeholder: dir.is_placeholder(),
        rest,
    }
}

/// The room an entry's view of `repo` needs (docs/security.md#git-file): none unless its
/// `.git` is a file that can be followed and a share sees the entry's root (the config says
/// none does when every share of the entry it knows is live: a pool's).
fn entry_room(tree: &Tree, ws: &Path, guests: &Guests, name: &OsStr, repo: &Node) -> Room {
    if !guests.pinned_root(name) || !gitview::needs_room(tree, ws, repo) {
        return Room::NotNeeded;
    }
    match repo.child(OsStr::new(paths::GIT_ROOM)) {
        Err(Errno::ENOENT) => Room::Missing,
        _ => Room::Ready,
    }
}

/// Entry `name` of a workspace dir that does not exist yet (a dry run before the first link):
/// nothing there, no record, what `want` asks for.
pub fn absent_entry(
    tree: &Tree,
    cfg: &Config,
    guests: &Guests,
    name: &OsStr,
    want: WantOf,
) -> Result<EntryFacts> {
    let git = guests.guest_of(name)?.git;
    Ok(EntryFacts {
        name: name.to_os_string(),
        at: cfg.workspace_dir.join(name),
        links: false,
        record: None,
        entry: Entry::Missing,
        want: match want {
            WantOf::Repo(r) => Want::Repo(RepoFacts {
                path: r.path.clone(),
                id: r.id(),
                owner: (r.uid(), r.st.st_gid),
                ids: guests.ids_for(name, r).map_err(|e| one_line(&e)),
                git,
                room: entry_room(tree, &cfg.workspace_dir, guests, name, r),
            }),
            WantOf::Recorded | WantOf::Nothing => Want::Nothing,
        },
        live: Vec::new(),
        spec: cfg.placeholder_spec()?,
    })
}
