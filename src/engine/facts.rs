//! What the engine observed, as plain data: the planner's input (engine::plan). Made by
//! engine::observe from descriptors; made by hand in the planner's and the policy's tests.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::fs::idmap::Ids;
use crate::fs::placeholder::PlaceholderSpec;
use crate::model::config::GitMode;
use crate::model::names::VmName;

/// A file's identity: (device, inode).
pub type Id = (u64, u64);

/// A link record as read: where it points, who made it, and whether that repo is one of
/// theirs now (found and reachable safely).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub target: PathBuf,
    pub owner: u32,
    pub repo_found: bool,
    /// Read from a shell-era symlink at the entry, not from `.links`: nobody's link to
    /// defend (the next start migrates it; a link replaces it).
    pub legacy: bool,
}

/// What is at `<workspaceDir>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Missing,
    /// One of our placeholders, nothing mounted on it.
    Placeholder,
    /// A mount root (identity `id`), and how it relates to what is wanted there.
    Mounted {
        id: Id,
        shows: Shows,
    },
    /// A directory that is not ours, not a mount point.
    Directory {
        owner: u32,
        /// Root's or the hypervisor's (microvm.nix's tmpfiles make share sources so):
        /// nobody's work, any allowed linker may have it moved aside.
        nobodys: bool,
    },
    /// A shell-era symlink (its target made absolute, its owner).
    Legacy {
        target: PathBuf,
        owner: u32,
    },
    NotADirectory,
}

/// What a mount shows, against what is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shows {
    /// The wanted repo, with the wanted ids and git view.
    Wanted,
    /// The wanted repo, mounted otherwise (ids or git view differ).
    WantedOtherwise,
    /// Something else.
    Other,
}

/// The repo an entry is to show, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    Repo(RepoFacts),
    /// The record's repo is gone (`why`: when it is more than missing): the placeholder serves.
    Gone {
        target: PathBuf,
        why: Option<String>,
    },
    /// Nothing is linked: the placeholder serves.
    Nothing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFacts {
    pub path: PathBuf,
    pub id: Id,
    /// Its owner and group (what is made in it is made as them).
    pub owner: (u32, u32),
    /// The ids a mount of it gets for this entry's guests, or why it cannot be mapped.
    pub ids: std::result::Result<Ids, String>,
    pub git: GitMode,
    /// `<repo>/.microvm-git`, the room the entry's view needs when the repo's `.git` is a file.
    pub room: Room,
}

/// The room a view of a repo whose `.git` is a file needs for its git dir
/// (docs/security.md#git-file): `<repo>/.microvm-git` for an entry's view (made as the repo's
/// owner), `<live root>/.microvm-git` for a live one (root's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Not needed: the `.git` is no file that can be followed, or no share sees the view's
    /// root (an entry only live shares pass through).
    NotNeeded,
    /// Needed, and not there.
    Missing,
    /// There (whether it will do is the view's to say: engine::gitview).
    Ready,
    /// A mount root with this identity (a live root's room with a scaffold on it).
    Mounted(Id),
}

/// One workspace entry as observed, with what its intent wants it to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFacts {
    pub name: OsString,
    pub at: PathBuf,
    /// `.links` exists.
    pub links: bool,
    pub record: Option<Rec>,
    pub entry: Entry,
    pub want: Want,
    /// The entry's live roots.
    pub live: Vec<LiveFacts>,
    /// The configured placeholder.
    pub spec: PlaceholderSpec,
}

/// One live root `<workspaceDir>/.live/<name>/<rel>` as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFacts {
    pub root: PathBuf,
    pub rel: PathBuf,
    /// The root directory and its parents below the workspace dir that do not exist yet
    /// (prepare's own live root; empty for every existing one).
    pub missing: Vec<PathBuf>,
    pub current: Current,
    /// `<live root>/.microvm-git` beside `current`: [`Room::Missing`], [`Room::Ready`] or
    /// [`Room::Mounted`].
    pub room: Room,
    /// `<repo>/<rel>` of the wanted repo (`None`: nothing is wanted there).
    pub target: Option<Target>,
}

/// A live root's `current`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    Missing,
    Placeholder,
    Mounted {
        id: Id,
        as_wanted: bool,
    },
    /// A directory that is not ours.
    NotOurs,
    NotADirectory,
}

/// `<repo>/<rel>` for a live root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Found {
        path: PathBuf,
        id: Id,
        /// Its `.git` is a file: a view of it needs the room beside `current`.
        room: bool,
    },
    Missing(Missing),
    NotADirectory(PathBuf),
    /// Cannot be reached safely.
    Unreachable(String),
}

/// A path that does not exist: its deepest existing directory and the names below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub dir: PathBuf,
    pub dir_id: Id,
    pub dir_uid: u32,
    pub dir_gid: u32,
    pub dir_placeholder: bool,
    pub rest: Vec<OsString>,
}

/// A lease of a pool VM as read (`.leases/<vm>`, engine::leases): whose, for which worktree,
/// since when, and whether that worktree is still a directory of its holder's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFacts {
    pub worktree: PathBuf,
    pub owner: u32,
    /// When it was taken (unix seconds).
    pub since: i64,
    /// The worktree is gone (missing, moved, not its holder's any more): nobody's lease.
    pub gone: bool,
}

/// One VM of a pool as observed: its lease and its link record, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub vm: VmName,
    pub lease: Option<LeaseFacts>,
    /// `.links/<vm>` (never legacy here).
    pub link: Option<Rec>,
    /// Who last held a lease of it, and when that ended (unix seconds).
    pub last: Option<(u32, i64)>,
}
