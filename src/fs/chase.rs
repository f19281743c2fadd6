//! Safe path resolution as root: `chase`, in the spirit of systemd's `chase()`.
//!
//! Everything works on file descriptors, one path component at a time, starting from a
//! descriptor of the root directory (opened once, [`Tree::open`]), so that:
//! * a re-rooted tree (`MICROVM_WORKSPACES_ROOT`) resolves absolute symlink targets inside the
//!   root, as `systemd-tmpfiles --root` does;
//! * the owner check (systemd's "unsafe path transition" rule) and the later use see the same
//!   objects: a user swapping a directory for a symlink after the check gains nothing;
//! * files root believes (config, runner, `/run` records) are read only through what root
//!   owns ([`Trust::RootOwned`], [`read_trusted`]).
//!
//! See docs/security.md#path-safety.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, FileStat, Mode, SFlag};

use crate::fs::paths::{self, show, Root};

/// More symlinks than this on one path is a loop (the kernel's own limit).
const MAX_LINKS: u32 = 40;

/// A resolved object: an `O_PATH` descriptor, its stat, and its inside path.
#[derive(Debug)]
pub struct Node {
    pub fd: OwnedFd,
    pub st: FileStat,
    pub path: PathBuf,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        is_dir(&self.st)
    }

    pub fn uid(&self) -> u32 {
        self.st.st_uid
    }

    pub fn id(&self) -> (u64, u64) {
        (self.st.st_dev, self.st.st_ino)
    }

    /// `/proc/self/fd/N`: how to name this exact object to path-only system calls.
    pub fn proc_path(&self) -> PathBuf {
        proc_path(self.fd.as_fd())
    }

    /// Another descriptor of the same object.
    pub fn try_clone(&self) -> Result<Node> {
        Ok(Node {
            fd: self
                .fd
                .try_clone()
                .context("cannot duplicate a descriptor")?,
            st: self.st,
            path: self.path.clone(),
        })
    }

    pub(crate) fn open_at(dir: BorrowedFd, name: &OsStr, path: PathBuf) -> nix::Result<Node> {
        let fd = openat(
            dir,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = fstat(&fd)?;
        Ok(Node { fd, st, path })
    }

    /// Sets the mode of exactly this object (an O_PATH descriptor: through /proc).
    pub fn chmod(&self, mode: u32) -> Result<()> {
        std::fs::set_permissions(
            self.proc_path(),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .with_context(|| format!("cannot chmod {}", crate::fs::paths::show(&self.path)))
    }

    /// The child `name` of this directory, not following a final symlink.
    pub fn child(&self, name: &OsStr) -> nix::Result<Node> {
        Node::open_at(self.fd.as_fd(), name, self.path.join(name))
    }
}

pub fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

pub fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
}

pub fn is_symlink(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFLNK
}

pub fn proc_path(fd: BorrowedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// How much to trust symlinks while resolving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Refuse unsafe path transitions: from a directory owned by an unprivileged user into one
    /// owned by anybody else (root included), whether by descending, by `..` or by a symlink.
    Owners,
    /// Follow everything inside the root (for looking at trees whose content is then judged by
    /// its owner, like a runner reached through microvm's `current` link).
    All,
    /// Only what root controls: every directory, symlink and the object reached must be owned
    /// by root, and a directory others may write to must be sticky (so nobody can rename root's
    /// entries away). For files root *believes*: the config, runner files, `/run` records.
    /// NixOS's `/etc/static -> /nix/store` chain passes (root-owned links, sticky 1775 store).
    RootOwned,
}

/// A walk met a dangling symbolic link: nothing is ever created through one.
#[derive(Debug)]
pub struct Dangling {
    pub path: PathBuf,
    pub missing: PathBuf,
}

impl std::fmt::Display for Dangling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} leads through a dangling symbolic link (missing: {})",
            show(&self.path),
            show(&self.missing)
        )
    }
}

impl std::error::Error for Dangling {}

/// Why a walk failed, for a caller that decides by it ([`Tree::try_walk`]). [`Tree::walk`]
/// and the others give the same errors as `anyhow` errors, a dangling link as a [`Dangling`].
#[derive(Debug)]
pub enum WalkError {
    /// A symbolic link on the way leads to nothing: the path does not exist, and nothing is
    /// ever created through such a link.
    Dangling(Dangling),
    /// A step the trust level refuses: an unsafe owner transition ([`Trust::Owners`]),
    /// something not root's where only root's is believed ([`Trust::RootOwned`]), or a path
    /// that leads out of where it must stay ([`Tree::walk_within`]).
    Refused(anyhow::Error),
    /// The path cannot be walked: not absolute, a non-directory in the middle, a symlink
    /// loop, or an open or read the file system refused.
    Failed(anyhow::Error),
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::Dangling(d) => d.fmt(f),
            // The outermost message; the rest of the chain is `source`.
            WalkError::Refused(e) | WalkError::Failed(e) => std::fmt::Display::fmt(&**e, f),
        }
    }
}

impl std::error::Error for WalkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalkError::Dangling(_) => None,
            WalkError::Refused(e) | WalkError::Failed(e) => e.chain().nth(1),
        }
    }
}

impl WalkError {
    /// The error as it was before this type: the same chain of messages, a dangling link as
    /// a [`Dangling`] (what `downcast_ref` looks for).
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            WalkError::Dangling(d) => d.into(),
            WalkError::Refused(e) | WalkError::Failed(e) => e,
        }
    }
}

/// Where a walk ended.
#[derive(Debug)]
pub enum Walk {
    /// The whole path exists; `node` is its last component (a directory or not).
    Found(Node),
    /// `dir` is the deepest existing directory; `rest` are the components below it, the first
    /// of which does not exist.
    Missing { dir: Node, rest: Vec<OsString> },
}

/// The root of every walk: the root directory, opened once.
pub struct Tree {
    root: Node,
    /// The real path of the root, for messages and for mapping a working directory inside.
    pub real_root: PathBuf,
}

impl Tree {
    pub fn open(root: &Root) -> Result<Tree> {
        let real_root = root.dir().to_path_buf();
        let fd = nix::fcntl::open(
            &real_root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("root {} is not a directory", show(&real_root)))?;
        let st = fstat(&fd).with_context(|| format!("cannot stat root {}", show(&real_root)))?;
        Ok(Tree {
            root: Node {
                fd,
                st,
                path: PathBuf::from("/"),
            },
            real_root,
        })
    }

    fn root_node(&self) -> Result<Node> {
        Ok(Node {
            fd: self
                .root
                .fd
                .try_clone()
                .context("cannot duplicate the root descriptor")?,
            st: self.root.st,
            path: self.root.path.clone(),
        })
    }

    /// Resolves an absolute inside path component by component.
    ///
    /// Errors: a non-directory in the middle, a symlink loop, an unsafe transition (with
    /// [`Trust::Owners`]), or a dangling symlink: nothing is ever created through a symlink
    /// whose target is missing.
    ///
    /// With [`Trust::All`] an existing path is first opened with one `openat2` in the root
    /// (`RESOLVE_IN_ROOT` follows symlinks, absolute ones inside the root, as this walk does);
    /// a found node's `path` is then the path asked for, not the resolved one.
    pub fn walk(&self, path: &Path, trust: Trust) -> Result<Walk> {
        self.try_walk(path, trust).map_err(WalkError::into_anyhow)
    }

    /// [`Tree::walk`], its error typed: for a caller that tells a missing path from one it
    /// may not take.
    pub fn try_walk(&self, path: &Path, trust: Trust) -> Result<Walk, WalkError> {
        if !path.is_absolute() {
            return Err(WalkError::Failed(anyhow!(
                "{} is not an absolute path",
                show(path)
            )));
        }
        if trust == Trust::All {
            if let Some(node) =
                self.open_in_root(path, OFlag::empty(), ResolveFlag::RESOLVE_IN_ROOT)
            {
                return Ok(Walk::Found(node));
            }
        }
        let root = self.root_node().map_err(WalkError::Failed)?;
        self.walk_below(root, true, false, path, trust)
    }

    /// Resolves `rel` below the directory `start` (found earlier) as [`Tree::walk`] does; a
    /// `..` above `start` goes to its real parent (never above the tree's root), and an
    /// absolute symlink restarts at the tree's root.
    pub fn walk_from(&self, start: &Node, rel: &Path, trust: Trust) -> Result<Walk> {
        let start = Node {
            fd: start
                .fd
                .try_clone()
                .context("cannot duplicate a descriptor")?,
            st: start.st,
            path: start.path.clone(),
        };
        if trust == Trust::RootOwned {
            check_root_owned(&start)?;
        }
        self.walk_below(start, false, false, &start_rel(rel), trust)
            .map_err(WalkError::into_anyhow)
    }

    /// Resolves `rel` strictly inside the directory `start`: a `..` above it or an absolute
    /// symlink is an error (a path in a repo that must stay in the repo).
    pub fn walk_within(&self, start: &Node, rel: &Path, trust: Trust) -> Result<Walk> {
        self.walk_below(start.try_clone()?, false, true, &start_rel(rel), trust)
            .map_err(WalkError::into_anyhow)
    }

    fn walk_below(
        &self,
        base: Node,
        base_is_root: bool,
        confined: bool,
        path: &Path,
        trust: Trust,
    ) -> Result<Walk, WalkError> {
        use WalkError::{Failed, Refused};
        let mut todo: VecDeque<(OsString, bool)> = paths::normalize(path)
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some((n.to_os_string(), false)),
                _ => None,
            })
            .collect();
        let path = &base.path.join(path.strip_prefix("/").unwrap_or(path));
        let mut base_is_root = base_is_root;
        let base_path = base.path.clone();
        let mut stack = vec![base];
        let mut links = 0;
        // The symlink just followed: as in systemd's chase(), the step after a symlink is
        // judged from the symlink's owner, not from the directory holding it, so a user's
        // link in a root-owned sticky directory (/tmp) cannot lead root anywhere.
        let mut judge: Option<Node> = None;
        while let Some((name, from_link)) = todo.pop_front() {
            let top = stack.last().expect("the root never leaves the stack");
            if name == ".." {
                if stack.len() == 1 && confined {
                    return Err(Refused(anyhow!(
                        "{} leads out of {}",
                        show(path),
                        show(&stack[0].path)
                    )));
                }
                if stack.len() == 1 && !base_is_root {
                    // Above where `walk_from` started: the real parent, never above the root.
                    let here = &stack[0];
                    if here.id() == self.root.id() {
                        stack[0] = self.root_node().map_err(Failed)?;
                        base_is_root = true;
                    } else {
                        let label = here.path.parent().unwrap_or(Path::new("/")).to_path_buf();
                        let parent = Node::open_at(here.fd.as_fd(), OsStr::new(".."), label)
                            .with_context(|| {
                                format!("cannot open the parent of {}", show(&here.path))
                            })
                            .map_err(Failed)?;
                        if trust == Trust::RootOwned {
                            check_root_owned(&parent).map_err(Refused)?;
                        }
                        check_transition(trust, judge.as_ref().unwrap_or(here), &parent)
                            .map_err(Refused)?;
                        stack[0] = parent;
                    }
                    judge = None;
                    continue;
                }
                if stack.len() > 1 {
                    let child = stack.pop().expect("checked length");
                    let parent = stack.last().expect("checked length");
                    check_transition(trust, judge.as_ref().unwrap_or(&child), parent)
                        .map_err(Refused)?;
                } else if let Some(j) = &judge {
                    check_transition(trust, j, &self.root).map_err(Refused)?;
                }
                judge = None;
                continue;
            }
            if name == "." {
                continue;
            }
            let node = match top.child(&name) {
                Ok(n) if trust == Trust::RootOwned => {
                    check_root_owned(&n)
                        .with_context(|| format!("{} is not trusted", show(path)))
                        .map_err(Refused)?;
                    n
                }
                Ok(n) => n,
                Err(Errno::ENOENT) => {
                    if from_link {
                        return Err(WalkError::Dangling(Dangling {
                            path: path.clone(),
                            missing: top.path.join(&name),
                        }));
                    }
                    let dir = stack.pop().expect("the root never leaves the stack");
                    let mut rest = vec![name];
                    rest.extend(todo.into_iter().map(|(n, _)| n));
                    return Ok(Walk::Missing { dir, rest });
                }
                Err(e) => {
                    return Err(Failed(
                        anyhow!(e).context(format!("cannot open {}", show(&top.path.join(&name)))),
                    ))
                }
            };
            if is_symlink(&node.st) {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Failed(anyhow!(
                        "too many levels of symbolic links in {}",
                        show(path)
                    )));
                }
                let target = nix::fcntl::readlinkat(&node.fd, "")
                    .with_context(|| format!("cannot read link {}", show(&node.path)))
                    .map_err(Failed)?;
                let target = PathBuf::from(target);
                let context = || format!("symbolic link {} -> {}", show(&node.path), show(&target));
                // A placeholder holds only directories of ours: a symlink in one is a guest's
                // (virtiofsd creates as root), to be swept, never followed by root.
                if trust != Trust::All && top.is_placeholder() {
                    return Err(Refused(
                        anyhow!(
                            "it is in placeholder {}, where only a guest makes one",
                            show(&top.path)
                        )
                        .context(context()),
                    ));
                }
                check_transition(trust, judge.as_ref().unwrap_or(top), &node)
                    .with_context(context)
                    .map_err(Refused)?;
                if target.is_absolute() {
                    if confined {
                        return Err(Refused(
                            anyhow!("{} leads out of {}", show(path), show(&base_path))
                                .context(context()),
                        ));
                    }
                    check_transition(trust, &node, &self.root)
                        .with_context(context)
                        .map_err(Refused)?;
                    stack = vec![self.root_node().map_err(Failed)?];
                    base_is_root = true;
                    judge = None;
                } else {
                    judge = Some(node);
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push_front((n.to_os_string(), true)),
                        Component::ParentDir => todo.push_front(("..".into(), true)),
                        _ => {}
                    }
                }
                continue;
            }
            if node.is_dir() {
                check_transition(trust, judge.take().as_ref().unwrap_or(top), &node)
                    .map_err(Refused)?;
                stack.push(node);
            } else if todo.is_empty() {
                return Ok(Walk::Found(node));
            } else {
                return Err(Failed(anyhow!("{} is not a directory", show(&node.path))));
            }
        }
        Ok(Walk::Found(
            stack.pop().expect("the root never leaves the stack"),
        ))
    }

    /// The fast path for the common case, an existing directory reached without any symlink:
    /// one `openat2` resolving inside the root. `None` means "take the careful walk".
    pub fn existing_dir_fast(&self, path: &Path) -> Option<Node> {
        self.open_in_root(
            path,
            OFlag::O_DIRECTORY,
            ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS,
        )
    }

    /// One `openat2` (`O_PATH`, plus `flags`) of an inside path, resolved inside the root as
    /// `resolve` says (magic links always refused); `None` on any failure.
    fn open_in_root(&self, path: &Path, flags: OFlag, resolve: ResolveFlag) -> Option<Node> {
        let path = paths::normalize(path);
        let rel = path.strip_prefix("/").ok()?;
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | flags)
            .resolve(resolve | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let target = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let fd = openat2(&self.root.fd, target, how).ok()?;
        let st = fstat(&fd).ok()?;
        Some(Node { fd, st, path })
    }
}

/// `rel` as a relative path (a leading `/` is taken as relative to the start).
fn start_rel(rel: &Path) -> PathBuf {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    Path::new("/").join(rel)
}

/// [`Trust::RootOwned`]'s rule for one object on the way.
fn check_root_owned(n: &Node) -> Result<()> {
    root_owned(&n.path, &n.st)
}

/// [`Trust::RootOwned`]'s rule for what `st` says of `path`: root's, and a directory nobody
/// else may write to unless it is sticky.
pub fn root_owned(path: &Path, st: &FileStat) -> Result<()> {
    if st.st_uid != 0 {
        bail!("{} is owned by uid {}, not root", show(path), st.st_uid);
    }
    let mode = st.st_mode;
    if is_dir(st) && mode & 0o022 != 0 && mode & 0o1000 == 0 {
        bail!(
            "{} may be written by others (mode {:04o}) and is not sticky",
            show(path),
            mode & 0o7777
        );
    }
    Ok(())
}

fn check_transition(trust: Trust, from: &Node, to: &Node) -> Result<()> {
    if trust == Trust::Owners && from.st.st_uid != 0 && from.st.st_uid != to.st.st_uid {
        bail!(
            "unsafe path transition from {} (owned by uid {}) to {} (owned by uid {})",
            show(&from.path),
            from.st.st_uid,
            show(&to.path),
            to.st.st_uid
        );
    }
    Ok(())
}

/// The names in directory `dir` (without `.` and `..`).
pub fn list_dir(dir: &Node) -> Result<Vec<OsString>> {
    let fd = openat(
        &dir.fd,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", show(&dir.path)))?;
    names_of(fd.as_fd()).with_context(|| format!("cannot read {}", show(&dir.path)))
}

/// The names in the directory open at `fd`, read from its offset on (a fresh descriptor: all
/// of them), `.` and `..` left out: `getdents64` and nothing else.
pub fn names_of(fd: BorrowedFd) -> std::io::Result<Vec<OsString>> {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
    let mut dir = rustix::fs::RawDir::new(fd, &mut buf);
    let mut names = Vec::new();
    while let Some(entry) = dir.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// Is this object the root of a mount? (statx `STATX_ATTR_MOUNT_ROOT`, Linux 5.8+.)
pub fn is_mount_root(fd: BorrowedFd) -> Result<bool> {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
    let stx = rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )
    .context("statx")?;
    let mask = stx.stx_attributes_mask;
    if !mask.contains(StatxAttributes::MOUNT_ROOT) {
        bail!("this kernel does not report mount roots (statx, Linux 5.8 or later needed)");
    }
    Ok(stx.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

/// One line of /proc/self/mountinfo: what this code asks of a mount.
pub struct MountLine {
    /// The mount id (what `statx(STATX_MNT_ID)` gives).
    pub id: u64,
    /// Where it is mounted (unescaped).
    pub at: PathBuf,
    /// Per-mount options (`rw,nosuid,...,idmapped`).
    pub options: String,
    /// The file system's source (`/dev/vda`, a tmpfs's chosen name).
    pub source: String,
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> Result<Vec<MountLine>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            let head: Vec<&str> = head.split(' ').collect();
            Some(MountLine {
                id: head.first()?.parse().ok()?,
                at: unescape_mountinfo(head.get(4)?),
                options: head.get(5)?.to_string(),
                source: tail.split(' ').nth(1)?.to_string(),
            })
        })
        .collect())
}

/// A path as /proc/self/mountinfo writes it (space, tab, newline, backslash as `\ooo`).
fn unescape_mountinfo(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The bytes of regular file `name` in `dir`, opened without following a symlink: `None` when
/// there is none; an error naming it when it is a symlink, not a regular file, larger than
/// `max`, or (with `owner`) owned by someone else. One `openat` and one `fstat`: what is read
/// is what was checked.
pub fn read_at(dir: &Node, name: &OsStr, max: u64, owner: Option<u32>) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let at = || crate::fs::paths::show(&dir.path.join(name));
    let fd = match openat(
        &dir.fd,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!(e)).with_context(|| format!("cannot open {}", at())),
    };
    let st = fstat(&fd)?;
    if !is_regular(&st) {
        bail!("{} is not a regular file", at());
    }
    if let Some(o) = owner.filter(|o| *o != st.st_uid) {
        bail!("{} is owned by uid {}, not {o}", at(), st.st_uid);
    }
    if st.st_size as u64 > max {
        bail!("{} is larger than {max} bytes", at());
    }
    let mut out = Vec::new();
    std::fs::File::from(fd)
        .take(max.saturating_add(1))
        .read_to_end(&mut out)?;
    Ok(Some(out))
}

/// Reads a file root believes (the config, a runner file, a `/run` record): found through a
/// [`Trust::RootOwned`] walk (from `start`, or the tree's root), a regular root-owned file, at
/// most `limit` bytes. `None` when it does not exist. Nothing that fails the rule is opened
/// for reading, so no error can quote what a user put there.
pub fn read_trusted(
    tree: &Tree,
    start: Option<&Node>,
    path: &Path,
    limit: u64,
) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let walk = match start {
        Some(dir) => tree.walk_from(dir, path, Trust::RootOwned)?,
        None => tree.walk(path, Trust::RootOwned)?,
    };
    let node = match walk {
        Walk::Found(n) => n,
        Walk::Missing { .. } => return Ok(None),
    };
    if SFlag::from_bits_truncate(node.st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        bail!("{} is not a regular file", show(&node.path));
    }
    let fd = openat(
        nix::fcntl::AT_FDCWD,
        &node.proc_path(),
        OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", show(&node.path)))?;
    // Room up front spares read_to_end its small probe read: one read, then end of file.
    let mut text = Vec::with_capacity(4096);
    std::fs::File::from(fd)
        .take(limit)
        .read_to_end(&mut text)
        .with_context(|| format!("cannot read {}", show(&node.path)))?;
    Ok(Some(text))
}

/// [`read_trusted`] of the entry `name` of the trusted directory `dir` (a [`Trust::RootOwned`]
/// walk found it): one open for reading, a stat and a read when it is a regular root-owned
/// file (`O_NONBLOCK`, so nothing stalls the open before the check; only root makes entries
/// there), else the careful walk and its error. For a link that reads every VM's record.
pub fn read_trusted_in(
    tree: &Tree,
    dir: &Node,
    name: &OsStr,
    limit: u64,
) -> Result<Option<Vec<u8>>> {
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = match openat(&dir.fd, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(_) => return read_trusted(tree, Some(dir), Path::new(name), limit),
    };
    match fstat(&fd) {
        Ok(st) if st.st_uid == 0 && st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits() => {
            read_sized(fd, &st, limit)
                .map(Some)
                .with_context(|| format!("cannot read {}", show(&dir.path.join(name))))
        }
        _ => read_trusted(tree, Some(dir), Path::new(name), limit),
    }
}

/// The regular file `fd` (stat `st`): its size's worth of bytes, at most `limit`, in one read
/// as a rule. Root's files read this way are replaced whole (a rename) or never change (the
/// Nix store), so the size is the content's.
pub fn read_sized(fd: OwnedFd, st: &FileStat, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let want = (st.st_size.max(0) as u64).min(limit) as usize;
    let mut text = vec![0; want];
    let mut file = std::fs::File::from(fd);
    let mut got = 0;
    while got < want {
        match file.read(&mut text[got..])? {
            0 => break,
            n => got += n,
        }
    }
    text.truncate(got);
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(
            unescape_mountinfo("/a\\040b\\134c"),
            PathBuf::from("/a b\\c")
        );
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
        assert!(mounts().unwrap().iter().any(|m| m.at == Path::new("/")));
    }

    /// Needs no root: a dangling link, a directory others may write where only root's is
    /// believed, a relative path; each typed, and `walk` gives the same errors as before.
    #[test]
    fn walk_errors_are_typed_and_walk_keeps_them_as_they_were() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/nowhere", t.path().join("dangling")).unwrap();
        std::fs::create_dir(t.path().join("open")).unwrap();
        std::fs::set_permissions(
            t.path().join("open"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let tree = Tree::open(&Root::from_args(Some(t.path())).unwrap()).unwrap();

        let p = Path::new("/dangling/x");
        match tree.try_walk(p, Trust::Owners) {
            Err(WalkError::Dangling(d)) => assert_eq!(d.missing, Path::new("/nowhere")),
            other => panic!("{other:?}"),
        }
        let e = tree.walk(p, Trust::Owners).unwrap_err();
        assert!(e.downcast_ref::<Dangling>().is_some(), "{e:#}");

        let p = Path::new("/open/x");
        let typed = match tree.try_walk(p, Trust::RootOwned) {
            Err(e @ WalkError::Refused(_)) => e,
            other => panic!("{other:?}"),
        };
        let old = tree.walk(p, Trust::RootOwned).unwrap_err();
        let chain = |e: &dyn std::error::Error| {
            let mut out = vec![e.to_string()];
            let mut at = e.source();
            while let Some(s) = at {
                out.push(s.to_string());
                at = s.source();
            }
            out
        };
        let old_chain: Vec<String> = old.chain().map(ToString::to_string).collect();
        assert_eq!(chain(&typed), old_chain);
        assert!(
            old_chain[0].contains("/open/x is not trusted"),
            "{old_chain:?}"
        );

        assert!(matches!(
            tree.try_walk(Path::new("relative"), Trust::All),
            Err(WalkError::Failed(_))
        ));
        assert!(matches!(
            tree.try_walk(Path::new("/open"), Trust::All),
            Ok(Walk::Found(_))
        ));
    }
}
