//! The planner: pure functions from what was observed ([`EntryFacts`], [`LiveFacts`],
//! [`Missing`]) and what is wanted ([`Intent`]) to a list of typed operations ([`Op`]).
//!
//! Nothing here touches the file system, so every rule is tested without root. The engine
//! observes (engine::observe, descriptors held), plans here, and applies (engine::apply:
//! each operation re-checked on its descriptor under the workspace lock). A dry run prints
//! the plan; nothing else knows about dry runs.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::engine::facts::{
    Current, Entry, EntryFacts, Id, LiveFacts, Missing, RepoFacts, Room, Shows, Target, Want,
};
use crate::engine::policy;
use crate::fs::idmap::Ids;
use crate::fs::paths::show;
use crate::fs::placeholder::PlaceholderSpec;
use crate::host::caller::Caller;
use crate::model::action::{Act, Action};
use crate::model::config::GitMode;
use crate::model::names::PoolName;

/// `current` of a live root while unlinked: root's, read-only, whatever the configured
/// placeholder owner.
pub const LIVE_SPEC: PlaceholderSpec = PlaceholderSpec {
    uid: 0,
    gid: 0,
    mode: 0o555,
};

/// One operation on the file system or the mount table. Paths name what is acted on; the
/// applier re-opens each through a directory it holds and checks it is still what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A root 0755 directory that is a trusted place: the workspace dir, `.links`, `.live`,
    /// a live root and its parents.
    RootDir {
        path: PathBuf,
        what: &'static str,
    },
    /// A placeholder (a read-only directory carrying our mark).
    Placeholder {
        path: PathBuf,
        spec: PlaceholderSpec,
        what: &'static str,
    },
    /// A plain 0755 directory made with its owner's credentials (root's below root's).
    Mkdir {
        path: PathBuf,
        uid: u32,
        gid: u32,
    },
    /// A shell-era symlink entry becomes a record (owned by the symlink's owner) and a
    /// placeholder.
    Migrate {
        at: PathBuf,
        target: PathBuf,
        owner: u32,
    },
    /// A shell-era symlink entry is replaced by a placeholder (a link follows).
    ReplaceSymlink {
        at: PathBuf,
    },
    /// A directory in the way of a link goes into `.displaced/`, a placeholder taking its
    /// place.
    MoveAside {
        at: PathBuf,
        owner: u32,
    },
    /// `.links/<entry>` written atomically; `before` is put back if the mount then fails.
    WriteRecord {
        at: PathBuf,
        target: PathBuf,
        owner: u32,
        before: Option<(PathBuf, u32)>,
    },
    RemoveRecord {
        at: PathBuf,
    },
    /// `.leases/<vm>` written atomically: `vm` of pool `pool` leased by `owner` for
    /// `worktree` (engine::pool, engine::leases).
    WriteLease {
        at: PathBuf,
        worktree: PathBuf,
        owner: u32,
        pool: PoolName,
    },
    /// `.leases/<vm>` ends (its VM's link ended first): renamed to `.leases/.last-<vm>`,
    /// which says who last held the VM (`leases::end_lease`).
    RemoveLease {
        at: PathBuf,
        why: &'static str,
    },
    /// Detach the mount whose root was seen at `at` with identity `id`.
    Unmount {
        at: PathBuf,
        id: Id,
        why: String,
    },
    /// Mount the guests' view of `repo` (identity `repo_id`; none when this plan makes the
    /// directory, so it has none yet) on the placeholder at `at`, for entry `entry`, with
    /// `ids` and the git view `git`.
    Mount {
        at: PathBuf,
        entry: OsString,
        repo: PathBuf,
        repo_id: Option<Id>,
        ids: Ids,
        git: GitMode,
        live: bool,
    },
}

impl Op {
    /// The step as logged (ACTION, PATH, detail) and as a dry run prints it.
    pub fn action(&self) -> Action {
        let (act, path, detail) = match self {
            Op::RootDir { path, what } => (Act::Mkdir, path, format!("{what}root, 0755")),
            Op::Placeholder { path, spec, what } => (
                Act::CreatePlaceholder,
                path,
                match *what {
                    "" => spec.describe(),
                    w => w.to_string(),
                },
            ),
            Op::Mkdir {
                path,
                uid: 0,
                gid: 0,
            } => (Act::Mkdir, path, "root, 0755".into()),
            Op::Mkdir { path, uid, gid } => (
                Act::MkdirAsOwner,
                path,
                format!("uid {uid}, gid {gid}, 0755"),
            ),
            Op::Migrate { at, target, .. } => (
                Act::Migrate,
                at,
                format!(
                    "legacy symlink to {} becomes a record and a placeholder",
                    show(target)
                ),
            ),
            Op::ReplaceSymlink { at } => (
                Act::Migrate,
                at,
                "legacy symlink replaced by a placeholder".into(),
            ),
            Op::MoveAside { at, owner } => (
                Act::MoveAside,
                at,
                format!("a directory of uid {owner}, into .displaced"),
            ),
            Op::WriteRecord {
                at, target, owner, ..
            } => (
                Act::Record,
                at,
                format!("-> {}, owner uid {owner}", show(target)),
            ),
            Op::RemoveRecord { at } => (Act::Unrecord, at, String::new()),
            Op::WriteLease {
                at,
                worktree,
                owner,
                pool,
            } => (
                Act::Lease,
                at,
                format!("pool {pool}, -> {}, owner uid {owner}", show(worktree)),
            ),
            Op::RemoveLease { at, why } => (Act::Unlease, at, why.to_string()),
            Op::Unmount { at, why, .. } => (Act::Unmount, at, why.clone()),
            Op::Mount {
                at,
                repo,
                ids,
                live,
                ..
            } => (
                Act::Mount,
                at,
                match live {
                    true => format!("live view of {}, {ids}", show(repo)),
                    false => format!("repo {}, {ids}", show(repo)),
                },
            ),
        };
        Action {
            act,
            path: path.clone(),
            detail,
        }
    }

    /// The path the operation acts on.
    pub fn path(&self) -> &Path {
        match self {
            Op::RootDir { path, .. } | Op::Placeholder { path, .. } | Op::Mkdir { path, .. } => {
                path
            }
            Op::Migrate { at, .. }
            | Op::ReplaceSymlink { at }
            | Op::MoveAside { at, .. }
            | Op::WriteRecord { at, .. }
            | Op::RemoveRecord { at }
            | Op::WriteLease { at, .. }
            | Op::RemoveLease { at, .. }
            | Op::Unmount { at, .. }
            | Op::Mount { at, .. } => at,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.action().fmt(f)
    }
}

/// What is wanted of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// A VM's start: the entry agrees with its record.
    Reconcile,
    /// microvm-link: the entry shows the repo in `EntryFacts::want` (checked), for `caller`.
    Link(Caller),
    /// microvm-link: the entry's link ends, for `caller`.
    Unlink(Caller),
}

/// The plan for one entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryPlan {
    pub ops: Vec<Op>,
    /// Each live root's operations, after `ops`: one that fails is left as it is with a
    /// warning (a guest can make its path unusable), never failing the entry's link or a
    /// start; only prepare's own live root is applied strictly (see `engine::prepare`).
    pub live: Vec<LivePlan>,
    /// What the entry shows once the plan is done (`None`: not a repo of ours).
    pub shows: Option<PathBuf>,
    /// For people: what the change amounts to, in order.
    pub summary: Vec<Summary>,
    /// Journal lines (warnings) about what is left as it is, and why.
    pub warnings: Vec<String>,
    /// Whether this is a change (a link, an unlink) rather than a no-op.
    pub changed: bool,
}

/// The operations that put one live root in step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePlan {
    pub root: PathBuf,
    pub ops: Vec<Op>,
}

/// What a link or an unlink amounts to, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Summary {
    ReplacedLegacy { at: PathBuf },
    Linked { at: PathBuf, repo: PathBuf },
    Unlinked { at: PathBuf },
    NotLinked { at: PathBuf },
}

impl Summary {
    /// "linked ... -> ...", or in a dry run "would link ... -> ...".
    pub fn line(&self, dry_run: bool) -> String {
        match (self, dry_run) {
            (Summary::Linked { at, repo }, false) => {
                format!("linked {} -> {}", show(at), show(repo))
            }
            (Summary::Linked { at, repo }, true) => {
                format!("would link {} -> {}", show(at), show(repo))
            }
            (Summary::Unlinked { at }, false) => format!("unlinked {}", show(at)),
            (Summary::Unlinked { at }, true) => format!("would unlink {}", show(at)),
            (Summary::ReplacedLegacy { at }, false) => {
                format!("replaced the legacy symlink {}", show(at))
            }
            (Summary::ReplacedLegacy { at }, true) => {
                format!("would replace the legacy symlink {}", show(at))
            }
            (Summary::NotLinked { at }, _) => {
                format!("{} is not linked; left as it is", show(at))
            }
        }
    }
}

/// Plans entry `f` for `intent`. `Err` is a refusal (policy, or something in the way that
/// only its owner may move): nothing is to be done at all.
pub fn entry(f: &EntryFacts, intent: &Intent) -> Result<EntryPlan> {
    match intent {
        Intent::Reconcile => Ok(reconcile(f)),
        Intent::Link(caller) => link(f, *caller),
        Intent::Unlink(caller) => unlink(f, *caller),
    }
}

fn reconcile(f: &EntryFacts) -> EntryPlan {
    let mut p = EntryPlan::default();
    let mut entry = f.entry.clone();
    let mut links = f.links;
    let mut has_record = f.record.is_some();
    match &f.entry {
        Entry::Legacy { target, owner } => {
            links_dir(&mut p, &mut links, f);
            p.ops.push(Op::Migrate {
                at: f.at.clone(),
                target: target.clone(),
                owner: *owner,
            });
            entry = Entry::Placeholder;
            has_record = true;
        }
        Entry::NotADirectory => {
            p.warnings
                .push(format!("{} exists but is not a directory", show(&f.at)));
            return p;
        }
        _ => {}
    }
    if !has_record {
        return p;
    }
    if entry == Entry::Missing {
        p.ops.push(Op::Placeholder {
            path: f.at.clone(),
            spec: f.spec,
            what: "mountpoint for the link",
        });
        entry = Entry::Placeholder;
    }
    let repo = match &f.want {
        Want::Repo(r) => match &r.ids {
            Ok(ids) => Some((r, *ids)),
            Err(why) => {
                p.warnings.push(format!(
                    "link {} is not mounted: {why}; the placeholder serves",
                    show(&f.at)
                ));
                None
            }
        },
        Want::Gone { target, why } => {
            p.warnings.push(match why {
                Some(why) => format!(
                    "the repo of link {} cannot be reached safely ({why}); the placeholder serves",
                    show(&f.at)
                ),
                None => format!(
                    "the repo of link {} ({}) is gone; the placeholder serves",
                    show(&f.at),
                    show(target)
                ),
            });
            None
        }
        Want::Nothing => None,
    };
    match (&entry, repo) {
        (Entry::Mounted { id, shows }, repo) => {
            if let (Shows::Wanted, Some((r, _))) = (shows, repo) {
                p.shows = Some(r.path.clone());
            } else {
                let why = match (shows, repo) {
                    (_, None) => match &f.want {
                        Want::Gone { target, .. } => format!("repo {} is gone", show(target)),
                        _ => "no mapping for the guests".into(),
                    },
                    (Shows::WantedOtherwise, Some((_, ids))) => {
                        format!("mounted otherwise than as {ids}")
                    }
                    _ => "it shows something other than the recorded repo".into(),
                };
                p.ops.push(Op::Unmount {
                    at: f.at.clone(),
                    id: *id,
                    why,
                });
                if let Some((r, ids)) = repo {
                    p.ops.extend(mount(f, r, ids));
                    p.shows = Some(r.path.clone());
                }
            }
        }
        (Entry::Placeholder, Some((r, ids))) => {
            p.ops.extend(mount(f, r, ids));
            p.shows = Some(r.path.clone());
        }
        (Entry::Directory { .. }, Some(_)) => p.warnings.push(format!(
            "{} is a directory of its own, not a placeholder; not mounting the link over it (microvm-link moves it aside)",
            show(&f.at)
        )),
        _ => {}
    }
    let want = p.shows.is_some().then_some(&f.want);
    live(&mut p, f, want);
    p
}

fn link(f: &EntryFacts, caller: Caller) -> Result<EntryPlan> {
    let Want::Repo(r) = &f.want else {
        bail!("{}: nothing to link", show(&f.at));
    };
    policy::may_change(f, caller, true)?;
    let ids = match &r.ids {
        Ok(ids) => *ids,
        Err(why) => bail!("{why}"),
    };
    let mut p = EntryPlan {
        changed: true,
        ..EntryPlan::default()
    };
    let mut links = f.links;
    links_dir(&mut p, &mut links, f);
    match &f.entry {
        Entry::Missing => p.ops.push(Op::Placeholder {
            path: f.at.clone(),
            spec: f.spec,
            what: "mountpoint for the link",
        }),
        Entry::Legacy { .. } => {
            p.ops.push(Op::ReplaceSymlink { at: f.at.clone() });
            p.summary.push(Summary::ReplacedLegacy { at: f.at.clone() });
        }
        Entry::NotADirectory => bail!(
            "{} exists but is not a directory; move it away first",
            show(&f.at)
        ),
        Entry::Placeholder => {}
        Entry::Mounted { .. } if f.record.is_some() => {}
        Entry::Mounted { .. } => bail!(
            "{} is a mount point not made by microvm-link; unmount it first",
            show(&f.at)
        ),
        Entry::Directory { owner, .. } => p.ops.push(Op::MoveAside {
            at: f.at.clone(),
            owner: *owner,
        }),
    }
    // The record first (a mount never stands without one: a crash after it leaves a record
    // the next start mounts), then the mount.
    p.ops.push(Op::WriteRecord {
        at: f.at.clone(),
        target: r.path.clone(),
        owner: caller.uid(),
        before: f
            .record
            .as_ref()
            .filter(|r| !r.legacy)
            .map(|r| (r.target.clone(), r.owner)),
    });
    if let Entry::Mounted { id, .. } = f.entry {
        p.ops.push(Op::Unmount {
            at: f.at.clone(),
            id,
            why: "an earlier link".into(),
        });
    }
    p.ops.extend(mount(f, r, ids));
    p.shows = Some(r.path.clone());
    p.summary.push(Summary::Linked {
        at: f.at.clone(),
        repo: r.path.clone(),
    });
    live(&mut p, f, Some(&f.want));
    Ok(p)
}

fn unlink(f: &EntryFacts, caller: Caller) -> Result<EntryPlan> {
    policy::may_change(f, caller, false)?;
    let mut p = EntryPlan::default();
    if f.record.as_ref().is_none_or(|r| r.legacy) {
        // Nothing of ours to undo: whatever is there (a placeholder, nothing, a user's own
        // directory, a legacy symlink prepare will migrate) stays.
        p.summary.push(Summary::NotLinked { at: f.at.clone() });
        return Ok(p);
    }
    // Mount first, then the record: a crash in between leaves a record without a mount,
    // which the next start re-mounts. The mount is ours (the record is); nothing else goes.
    if let Entry::Mounted { id, .. } = f.entry {
        p.ops.push(Op::Unmount {
            at: f.at.clone(),
            id,
            why: "unlinked".into(),
        });
    }
    p.ops.push(Op::RemoveRecord { at: f.at.clone() });
    p.changed = true;
    p.summary.push(Summary::Unlinked { at: f.at.clone() });
    live(&mut p, f, None);
    Ok(p)
}

/// `.links` made first when a record is to be written and it does not exist.
fn links_dir(p: &mut EntryPlan, links: &mut bool, f: &EntryFacts) {
    if !*links {
        let ws = f.at.parent().unwrap_or(Path::new("/"));
        p.ops.push(Op::RootDir {
            path: ws.join(crate::fs::paths::LINKS),
            what: "",
        });
        *links = true;
    }
}

/// The mount of `r` on the entry, after the room its `.git` file's git dir needs in the repo
/// (docs/security.md#git-file), made as the repo's owner when missing.
fn mount(f: &EntryFacts, r: &RepoFacts, ids: Ids) -> Vec<Op> {
    let mut ops = Vec::new();
    if r.room == Room::Missing {
        ops.push(Op::Mkdir {
            path: r.path.join(crate::fs::paths::GIT_ROOM),
            uid: r.owner.0,
            gid: r.owner.1,
        });
    }
    ops.push(Op::Mount {
        at: f.at.clone(),
        entry: f.name.clone(),
        repo: r.path.clone(),
        repo_id: Some(r.id),
        ids,
        git: r.git,
        live: false,
    });
    ops
}

/// Every live root of the entry put in step with what it shows: `want` (a repo) or nothing.
/// A live root that cannot be put in step (a guest wrote something odd into a writable
/// share, a path in the repo is not a directory) is left as it is with a warning; prepare
/// checks its own live root strictly (`plan::live_root`).
fn live(p: &mut EntryPlan, f: &EntryFacts, want: Option<&Want>) {
    for l in &f.live {
        match live_root(f, l, want) {
            Ok(ops) if ops.is_empty() => {}
            Ok(ops) => p.live.push(LivePlan {
                root: l.root.clone(),
                ops,
            }),
            Err(e) => p
                .warnings
                .push(format!("live root {} left as it is: {e}", show(&l.root))),
        }
    }
}

impl EntryPlan {
    /// Every operation, in the order they are applied: the entry's, then each live root's.
    pub fn all_ops(&self) -> impl Iterator<Item = &Op> {
        self.ops.iter().chain(self.live.iter().flat_map(|l| &l.ops))
    }
}

/// One live root: `current` exists (a root 0555 placeholder) and has `<repo>/<rel>` mounted
/// on it while linked, nothing while not. A `<repo>/<rel>` that is missing is created as the
/// owner of its deepest directory; it must stay inside the repo.
pub fn live_root(f: &EntryFacts, l: &LiveFacts, want: Option<&Want>) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    for m in &l.missing {
        ops.push(Op::RootDir {
            path: m.clone(),
            what: "live root, ",
        });
    }
    let at = l.root.join(crate::fs::paths::LIVE_CURRENT);
    let mounted = match l.current {
        Current::Missing => {
            ops.push(Op::Placeholder {
                path: at.clone(),
                spec: LIVE_SPEC,
                what: "live view",
            });
            None
        }
        Current::Placeholder => None,
        Current::Mounted { id, as_wanted } => Some((id, as_wanted)),
        Current::NotOurs => bail!(
            "{} is a directory that is not ours; move it away",
            show(&at)
        ),
        Current::NotADirectory => bail!(
            "{} is not a directory (made by hand?); move it away",
            show(&at)
        ),
    };
    let repo = match want {
        Some(Want::Repo(r)) => match &r.ids {
            Ok(ids) => Some((r, *ids)),
            Err(why) => bail!("{why}"),
        },
        _ => None,
    };
    let target = match (repo, &l.target) {
        (None, _) => None,
        (Some(_), None) => bail!("{}: its repo was not looked at", show(&at)),
        (Some((r, ids)), Some(t)) => Some((r, ids, t)),
    };
    // Whether the view needs the room beside `current` for its `.git` file's git dir.
    let mut room = false;
    let target = match target {
        None => None,
        Some((r, ids, Target::Found { path, id, room: r2 })) => {
            room = *r2;
            Some((r, ids, path.clone(), Some(*id), true))
        }
        Some((r, ids, Target::Missing(m))) => {
            let mut path = m.dir.clone();
            for name in &m.rest {
                if name == ".." {
                    bail!(
                        "{} goes up through a missing directory",
                        show(&path.join(name))
                    );
                }
                path.push(name);
                ops.push(Op::Mkdir {
                    path: path.clone(),
                    uid: m.dir_uid,
                    gid: m.dir_gid,
                });
            }
            Some((r, ids, path, None, false))
        }
        Some((_, _, Target::NotADirectory(path))) => {
            bail!("{} exists but is not a directory", show(path))
        }
        Some((_, _, Target::Unreachable(why))) => bail!("{why}"),
    };
    let room_at = l.root.join(crate::fs::paths::GIT_ROOM);
    let unmount_room = |ops: &mut Vec<Op>| {
        if let Room::Mounted(id) = l.room {
            ops.push(Op::Unmount {
                at: room_at.clone(),
                id,
                why: "git dir of an earlier live view".into(),
            });
        }
    };
    if let (Some((_, true)), Some((_, _, _, _, true))) = (mounted, &target) {
        // Shows it, as wanted; a git dir left beside it by a view that needed one goes.
        if !room {
            unmount_room(&mut ops);
        }
        return Ok(ops);
    }
    if let Some((id, _)) = mounted {
        ops.push(Op::Unmount {
            at: at.clone(),
            id,
            why: "live view of an earlier link".into(),
        });
    }
    unmount_room(&mut ops);
    if room && l.room == Room::Missing {
        ops.push(Op::RootDir {
            path: room_at.clone(),
            what: "room for a live view's git dir, ",
        });
    }
    if let Some((r, ids, path, id, _)) = target {
        ops.push(Op::Mount {
            at,
            entry: f.name.clone(),
            repo: path,
            repo_id: id,
            ids,
            // The whole repo gets the entry's git view; a path below it a read-only `.git`
            // if it has one, unless git is shared.
            git: match r.git {
                GitMode::Private if !l.rel.as_os_str().is_empty() => GitMode::Readonly,
                g => g,
            },
            live: true,
        });
    }
    Ok(ops)
}

/// How what is missing below an existing directory is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Creator {
    /// Below a placeholder: placeholders all the way down.
    Placeholders,
    /// Below a root-owned directory: root 0755 parents, a placeholder leaf.
    Root,
    /// Below a user's directory: plain 0755 directories with that user's credentials.
    User(u32, u32),
}

/// What a created source is, once made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Made {
    Placeholder,
    InRepo,
}

/// Plans sources that do not exist yet, for one run: directories already planned by an
/// earlier source are not planned twice, and what lies below them is planned by their rule.
#[derive(Debug)]
pub struct Creation<'w> {
    workspace_dir: &'w Path,
    spec: PlaceholderSpec,
    planned: BTreeMap<PathBuf, Creator>,
    pub ops: Vec<Op>,
}

impl<'w> Creation<'w> {
    pub fn new(workspace_dir: &'w Path, spec: PlaceholderSpec) -> Creation<'w> {
        Creation {
            workspace_dir,
            spec,
            planned: BTreeMap::new(),
            ops: Vec::new(),
        }
    }

    /// Takes what an earlier plan of the same run creates as planned.
    pub fn seed(&mut self, planned: &BTreeMap<PathBuf, Creator>) {
        self.planned
            .extend(planned.iter().map(|(p, c)| (p.clone(), *c)));
    }

    /// Every path planned so far, with the rule for its children.
    pub fn planned_paths(&self) -> &BTreeMap<PathBuf, Creator> {
        &self.planned
    }

    /// Notes that `path` is made by an earlier operation (an entry's placeholder), so that
    /// what a share needs below it is planned without looking at the disk.
    pub fn planned(&mut self, path: &Path, creator: Creator) {
        self.planned.insert(path.to_path_buf(), creator);
    }

    /// The nearest path at or above `path` that this run already plans to create, and the
    /// rule for its children.
    pub fn planned_ancestor(&self, path: &Path) -> Option<(PathBuf, Creator)> {
        path.ancestors()
            .find_map(|a| self.planned.get(a).map(|c| (a.to_path_buf(), *c)))
    }

    /// Plans `path` (missing as `m` says): the parents and the leaf by the rules of the
    /// deepest existing directory. Store paths are never created; nothing goes up through a
    /// missing directory.
    pub fn missing(&mut self, path: &Path, m: &Missing) -> Result<Made> {
        if path.starts_with("/nix/store") {
            bail!(
                "{} does not exist (store paths are never created)",
                show(path)
            );
        }
        let creator = if m.dir_placeholder {
            Creator::Placeholders
        } else if m.dir_uid == 0 {
            Creator::Root
        } else {
            Creator::User(m.dir_uid, m.dir_gid)
        };
        self.below(m.dir.clone(), creator, &m.rest)
    }

    /// Plans `rest` below `base`, whose children are made by `creator`.
    pub fn below(
        &mut self,
        mut path: PathBuf,
        mut creator: Creator,
        rest: &[OsString],
    ) -> Result<Made> {
        for (i, name) in rest.iter().enumerate() {
            if name == OsStr::new("..") {
                bail!(
                    "cannot create {}: it goes up through a missing directory",
                    show(&path.join(name))
                );
            }
            path.push(name);
            if let Some(c) = self.planned.get(&path) {
                creator = *c; // an earlier source of this run planned it
                continue;
            }
            let leaf = i + 1 == rest.len();
            // A workspace entry is a placeholder even as a parent (`nixfiles` when a VM
            // needs `nixfiles/hosts/...` first): it is where a link gets mounted, and a
            // plain directory there would be taken for a user's and moved aside.
            let entry = path.parent() == Some(self.workspace_dir)
                && !name.as_encoded_bytes().starts_with(b".");
            let children = match creator {
                Creator::Placeholders | Creator::Root
                    if leaf || entry || creator == Creator::Placeholders =>
                {
                    self.ops.push(Op::Placeholder {
                        path: path.clone(),
                        spec: self.spec,
                        what: "",
                    });
                    Creator::Placeholders
                }
                Creator::Root | Creator::Placeholders => {
                    self.ops.push(Op::Mkdir {
                        path: path.clone(),
                        uid: 0,
                        gid: 0,
                    });
                    Creator::Root
                }
                Creator::User(uid, gid) => {
                    self.ops.push(Op::Mkdir {
                        path: path.clone(),
                        uid,
                        gid,
                    });
                    creator
                }
            };
            self.planned.insert(path.clone(), children);
            creator = children;
        }
        Ok(match creator {
            Creator::User(..) => Made::InRepo,
            _ => Made::Placeholder,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::facts::Rec;
    use crate::fs::idmap::IdMap;

    const WS: &str = "/var/lib/microvm-workspaces";
    const SPEC: PlaceholderSpec = PlaceholderSpec {
        uid: 0,
        gid: 0,
        mode: 0o555,
    };
    const ALICE: u32 = 4242;
    const BOB: u32 = 4343;

    fn ids() -> Ids {
        Ids::Mapped(IdMap::for_linker(ALICE, ALICE, 1000, Some(1000)))
    }

    fn repo(path: &str) -> Want {
        Want::Repo(RepoFacts {
            path: path.into(),
            id: (1, 2),
            owner: (ALICE, ALICE),
            ids: Ok(ids()),
            git: GitMode::Private,
            room: Room::NotNeeded,
        })
    }

    fn facts(entry: Entry, record: Option<Rec>, want: Want) -> EntryFacts {
        EntryFacts {
            name: "vm1".into(),
            at: Path::new(WS).join("vm1"),
            links: true,
            record,
            entry,
            want,
            live: Vec::new(),
            spec: SPEC,
        }
    }

    fn rec(owner: u32, found: bool) -> Option<Rec> {
        Some(Rec {
            target: "/home/alice/vm1".into(),
            owner,
            repo_found: found,
            legacy: false,
        })
    }

    fn kinds(ops: &[Op]) -> Vec<Act> {
        ops.iter().map(|o| o.action().act).collect()
    }

    #[test]
    fn a_start_mounts_the_recorded_repo_on_the_placeholder_and_nothing_when_it_shows() {
        let f = facts(
            Entry::Placeholder,
            rec(ALICE, true),
            repo("/home/alice/vm1"),
        );
        let p = entry(&f, &Intent::Reconcile).unwrap();
        assert_eq!(kinds(&p.ops), [Act::Mount]);
        assert_eq!(p.shows.as_deref(), Some(Path::new("/home/alice/vm1")));
        let f = facts(
            Entry::Mounted {
                id: (1, 2),
                shows: Shows::Wanted,
            },
            rec(ALICE, true),
            repo("/home/alice/vm1"),
        );
        assert_eq!(entry(&f, &Intent::Reconcile).unwrap().ops, []);
        let f = facts(
            Entry::Mounted {
                id: (1, 2),
                shows: Shows::WantedOtherwise,
            },
            rec(ALICE, true),
            repo("/home/alice/vm1"),
        );
        assert_eq!(
            kinds(&entry(&f, &Intent::Reconcile).unwrap().ops),
            [Act::Unmount, Act::Mount]
        );
    }

    #[test]
    fn a_start_with_the_repo_gone_unmounts_and_says_so() {
        let f = facts(
            Entry::Mounted {
                id: (3, 4),
                shows: Shows::Other,
            },
            rec(ALICE, false),
            Want::Gone {
                target: "/home/alice/vm1".into(),
                why: None,
            },
        );
        let p = entry(&f, &Intent::Reconcile).unwrap();
        assert_eq!(kinds(&p.ops), [Act::Unmount]);
        assert!(p.warnings[0].contains("is gone"), "{:?}", p.warnings);
        assert_eq!(p.shows, None);
    }

    #[test]
    fn a_start_leaves_an_unlinked_entry_and_a_users_directory_alone() {
        let f = facts(Entry::Placeholder, None, Want::Nothing);
        assert_eq!(entry(&f, &Intent::Reconcile).unwrap(), EntryPlan::default());
        let f = facts(
            Entry::Directory {
                owner: ALICE,
                nobodys: false,
            },
            rec(ALICE, true),
            repo("/home/alice/vm1"),
        );
        let p = entry(&f, &Intent::Reconcile).unwrap();
        assert_eq!(p.ops, []);
        assert!(p.warnings[0].contains("directory of its own"));
    }

    #[test]
    fn a_legacy_symlink_becomes_a_record_and_a_placeholder_then_is_mounted() {
        let mut f = facts(
            Entry::Legacy {
                target: "/home/alice/vm1".into(),
                owner: ALICE,
            },
            None,
            repo("/home/alice/vm1"),
        );
        f.links = false;
        let p = entry(&f, &Intent::Reconcile).unwrap();
        assert_eq!(kinds(&p.ops), [Act::Mkdir, Act::Migrate, Act::Mount]);
    }

    #[test]
    fn a_link_writes_the_record_before_it_mounts_and_replaces_an_earlier_mount() {
        let f = facts(
            Entry::Mounted {
                id: (5, 6),
                shows: Shows::Other,
            },
            rec(ALICE, true),
            repo("/home/alice/other"),
        );
        let p = entry(&f, &Intent::Link(Caller::User(ALICE))).unwrap();
        assert_eq!(kinds(&p.ops), [Act::Record, Act::Unmount, Act::Mount]);
        assert!(p.changed);
        assert_eq!(
            p.summary[0].line(true),
            "would link /var/lib/microvm-workspaces/vm1 -> /home/alice/other"
        );
    }

    #[test]
    fn a_link_over_someone_elses_link_or_directory_is_refused_but_root_may() {
        let f = facts(Entry::Placeholder, rec(BOB, true), repo("/home/alice/vm1"));
        let e = entry(&f, &Intent::Link(Caller::User(ALICE))).unwrap_err();
        assert!(e.to_string().contains("only they or root"), "{e}");
        assert!(entry(&f, &Intent::Link(Caller::Root)).is_ok());
        // A link of Bob's whose repo is gone is nobody's any more.
        let f = facts(Entry::Placeholder, rec(BOB, false), repo("/home/alice/vm1"));
        assert!(entry(&f, &Intent::Link(Caller::User(ALICE))).is_ok());
        let f = facts(
            Entry::Directory {
                owner: BOB,
                nobodys: false,
            },
            None,
            repo("/home/alice/vm1"),
        );
        assert!(entry(&f, &Intent::Link(Caller::User(ALICE))).is_err());
        let f = facts(
            Entry::Directory {
                owner: 0,
                nobodys: true,
            },
            None,
            repo("/home/alice/vm1"),
        );
        let p = entry(&f, &Intent::Link(Caller::User(ALICE))).unwrap();
        assert_eq!(kinds(&p.ops), [Act::MoveAside, Act::Record, Act::Mount]);
    }

    #[test]
    fn unlinking_what_is_not_linked_plans_nothing_and_says_so() {
        let f = facts(Entry::Placeholder, None, Want::Nothing);
        let p = entry(&f, &Intent::Unlink(Caller::User(ALICE))).unwrap();
        assert_eq!(p.ops, []);
        assert!(!p.changed);
        assert!(p.summary[0]
            .line(false)
            .ends_with("is not linked; left as it is"));
        let f = facts(
            Entry::Mounted {
                id: (1, 2),
                shows: Shows::Other,
            },
            rec(ALICE, true),
            Want::Nothing,
        );
        let p = entry(&f, &Intent::Unlink(Caller::User(ALICE))).unwrap();
        assert_eq!(kinds(&p.ops), [Act::Unmount, Act::Unrecord]);
        assert!(p.changed);
    }

    #[test]
    fn a_live_root_follows_the_entry_and_creates_what_is_missing_as_the_owner() {
        let mut f = facts(
            Entry::Placeholder,
            rec(ALICE, true),
            repo("/home/alice/vm1"),
        );
        f.live = vec![LiveFacts {
            root: Path::new(WS).join(".live/vm1/sub"),
            rel: "sub".into(),
            missing: Vec::new(),
            current: Current::Mounted {
                id: (9, 9),
                as_wanted: false,
            },
            room: Room::Missing,
            target: Some(Target::Missing(Missing {
                dir: "/home/alice/vm1".into(),
                dir_id: (1, 2),
                dir_uid: ALICE,
                dir_gid: ALICE,
                dir_placeholder: false,
                rest: vec!["sub".into()],
            })),
        }];
        let p = entry(&f, &Intent::Reconcile).unwrap();
        assert_eq!(kinds(&p.ops), [Act::Mount]);
        // The live root's own list, after the entry's: one that fails only warns.
        assert_eq!(p.live.len(), 1);
        assert_eq!(
            kinds(&p.all_ops().cloned().collect::<Vec<_>>()),
            [Act::Mount, Act::MkdirAsOwner, Act::Unmount, Act::Mount]
        );
        let Op::Mount { git, live, .. } = &p.live[0].ops[2] else {
            panic!()
        };
        assert_eq!((*git, *live), (GitMode::Readonly, true));
        // Unlinked, a live root shows nothing; one that is not ours is left with a warning.
        f.live[0].current = Current::NotOurs;
        let p = entry(&f, &Intent::Unlink(Caller::User(ALICE))).unwrap();
        assert_eq!(kinds(&p.ops), [Act::Unrecord]);
        assert!(p.warnings[0].contains("not ours"));
    }

    #[test]
    fn a_git_file_repo_gets_its_room_made_as_its_owner_and_a_live_view_its_room_beside_current() {
        // The entry's view: `<repo>/.microvm-git`, as the repo's owner, before the mount.
        let mut want = repo("/home/alice/wt");
        if let Want::Repo(r) = &mut want {
            r.room = Room::Missing;
        }
        let f = facts(Entry::Placeholder, None, want.clone());
        let p = entry(&f, &Intent::Link(Caller::User(ALICE))).unwrap();
        assert_eq!(kinds(&p.ops), [Act::Record, Act::MkdirAsOwner, Act::Mount]);
        assert_eq!(
            p.ops[1].to_string(),
            "create directory as its owner: /home/alice/wt/.microvm-git (uid 4242, gid 4242, 0755)"
        );
        if let Want::Repo(r) = &mut want {
            r.room = Room::Ready;
        }
        let f = facts(Entry::Placeholder, None, want);
        let p = entry(&f, &Intent::Link(Caller::User(ALICE))).unwrap();
        assert_eq!(kinds(&p.ops), [Act::Record, Act::Mount]);

        // A live root: the room beside `current` (root's), its scaffold unmounted with the
        // view it served.
        let mut f = facts(
            Entry::Placeholder,
            rec(ALICE, true),
            repo("/home/alice/vm1"),
        );
        let live = LiveFacts {
            root: Path::new(WS).join(".live/vm1"),
            rel: "".into(),
            missing: Vec::new(),
            current: Current::Placeholder,
            room: Room::Missing,
            target: Some(Target::Found {
                path: "/home/alice/vm1".into(),
                id: (1, 2),
                room: true,
            }),
        };
        f.live = vec![live.clone()];
        let p = live_root(&f, &f.live[0], Some(&f.want)).unwrap();
        assert_eq!(kinds(&p), [Act::Mkdir, Act::Mount]);
        assert_eq!(
            p[0].to_string(),
            "create directory /var/lib/microvm-workspaces/.live/vm1/.microvm-git (room for a live view's git dir, root, 0755)"
        );
        let mounted = LiveFacts {
            current: Current::Mounted {
                id: (9, 9),
                as_wanted: false,
            },
            room: Room::Mounted((8, 8)),
            ..live.clone()
        };
        let p = live_root(&f, &mounted, Some(&f.want)).unwrap();
        assert_eq!(kinds(&p), [Act::Unmount, Act::Unmount, Act::Mount]);
        assert_eq!(p[1].path(), Path::new(WS).join(".live/vm1/.microvm-git"));
        let p = live_root(&f, &mounted, None).unwrap();
        assert_eq!(kinds(&p), [Act::Unmount, Act::Unmount]);
        // As wanted, and the repo there now needs no room: the old scaffold goes alone.
        let plain = LiveFacts {
            current: Current::Mounted {
                id: (9, 9),
                as_wanted: true,
            },
            target: Some(Target::Found {
                path: "/home/alice/vm1".into(),
                id: (1, 2),
                room: false,
            }),
            ..mounted
        };
        let p = live_root(&f, &plain, Some(&f.want)).unwrap();
        assert_eq!(kinds(&p), [Act::Unmount]);
    }

    #[test]
    fn creation_follows_the_deepest_directory_and_plans_each_path_once() {
        let mut c = Creation::new(Path::new(WS), SPEC);
        let below_root = Missing {
            dir: WS.into(),
            dir_id: (1, 1),
            dir_uid: 0,
            dir_gid: 0,
            dir_placeholder: false,
            rest: vec!["vm1".into(), "a".into(), "b".into()],
        };
        let made = c
            .missing(&Path::new(WS).join("vm1/a/b"), &below_root)
            .unwrap();
        assert_eq!(made, Made::Placeholder);
        // The entry is a placeholder even as a parent, and so is everything below it.
        assert_eq!(
            kinds(&c.ops),
            [
                Act::CreatePlaceholder,
                Act::CreatePlaceholder,
                Act::CreatePlaceholder
            ]
        );
        // A second source below plans only what is new.
        let again = Missing {
            rest: vec!["vm1".into(), "a".into(), "c".into()],
            ..below_root
        };
        c.missing(&Path::new(WS).join("vm1/a/c"), &again).unwrap();
        assert_eq!(c.ops.len(), 4);
        let in_repo = Missing {
            dir: "/home/alice/r".into(),
            dir_id: (2, 2),
            dir_uid: ALICE,
            dir_gid: 100,
            dir_placeholder: false,
            rest: vec!["x".into(), "y".into()],
        };
        assert_eq!(
            c.missing(Path::new("/home/alice/r/x/y"), &in_repo).unwrap(),
            Made::InRepo
        );
        assert_eq!(
            c.ops[4].to_string(),
            "create directory as its owner: /home/alice/r/x (uid 4242, gid 100, 0755)"
        );
        let root_parent = Missing {
            dir: "/srv".into(),
            rest: vec!["p".into(), "leaf".into()],
            ..in_repo.clone()
        };
        let root_parent = Missing {
            dir_uid: 0,
            dir_gid: 0,
            ..root_parent
        };
        c.missing(Path::new("/srv/p/leaf"), &root_parent).unwrap();
        assert_eq!(kinds(&c.ops[6..]), [Act::Mkdir, Act::CreatePlaceholder]);
        let up = Missing {
            rest: vec!["..".into()],
            ..in_repo.clone()
        };
        assert!(c.missing(Path::new("/home/alice"), &up).is_err());
        let store = Missing {
            dir: "/nix/store".into(),
            rest: vec!["x".into()],
            ..in_repo
        };
        assert!(c.missing(Path::new("/nix/store/x"), &store).is_err());
    }
}
