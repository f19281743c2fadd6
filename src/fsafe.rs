//! File-system safety: resolving and creating paths as root without being tricked.
//!
//! Everything here works on file descriptors, one path component at a time, starting from a
//! descriptor of the root directory, so that:
//! * a re-rooted tree (`MICROVM_WORKSPACES_ROOT`) resolves absolute symlink targets inside the
//!   root, as `systemd-tmpfiles --root` does;
//! * the owner check (systemd's "unsafe path transition" rule) and the later use see the same
//!   objects: a user swapping a directory for a symlink after the check gains nothing;
//! * directories inside a user's tree are created with that user's credentials (`setfsuid`),
//!   never created or chowned as root.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, renameat2, OFlag, OpenHow, RenameFlags, ResolveFlag};
use nix::sys::stat::{fstat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

use crate::paths::{self, show, Root};

/// Extended attribute marking a placeholder. The `trusted.` namespace needs CAP_SYS_ADMIN, so
/// an unprivileged user cannot forge it on a directory of their own.
pub const MARK_NAME: &str = "trusted.microvm-workspaces";
pub const MARK_VALUE: &[u8] = b"placeholder";

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

    fn open_at(dir: BorrowedFd, name: &OsStr, path: PathBuf) -> nix::Result<Node> {
        let fd = openat(
            dir,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = fstat(&fd)?;
        Ok(Node { fd, st, path })
    }

    /// The child `name` of this directory, not following a final symlink.
    pub fn child(&self, name: &OsStr) -> nix::Result<Node> {
        Node::open_at(self.fd.as_fd(), name, self.path.join(name))
    }

    /// Is this directory one of our placeholders? The mark is the proof: only CAP_SYS_ADMIN
    /// sets `trusted.*`. (Not the owner: the config may give placeholders to any user.)
    pub fn is_placeholder(&self) -> bool {
        self.is_dir() && has_mark(self.fd.as_fd())
    }
}

pub fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

fn is_symlink(st: &FileStat) -> bool {
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
        if !path.is_absolute() {
            bail!("{} is not an absolute path", show(path));
        }
        if trust == Trust::All {
            if let Some(node) =
                self.open_in_root(path, OFlag::empty(), ResolveFlag::RESOLVE_IN_ROOT)
            {
                return Ok(Walk::Found(node));
            }
        }
        self.walk_below(self.root_node()?, true, path, trust)
    }

    /// Resolves `rel` below the directory `start` (found earlier) as [`Tree::walk`] does; `..`
    /// may not climb above `start`, and an absolute symlink restarts at the tree's root.
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
        self.walk_below(start, false, &start_rel(rel)?, trust)
    }

    fn walk_below(
        &self,
        base: Node,
        base_is_root: bool,
        path: &Path,
        trust: Trust,
    ) -> Result<Walk> {
        let mut todo: VecDeque<(OsString, bool)> = paths::normalize(path)
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some((n.to_os_string(), false)),
                _ => None,
            })
            .collect();
        let path = &base.path.join(path.strip_prefix("/").unwrap_or(path));
        let mut base_is_root = base_is_root;
        let mut stack = vec![base];
        let mut links = 0;
        // The symlink just followed: as in systemd's chase(), the step after a symlink is
        // judged from the symlink's owner, not from the directory holding it, so a user's
        // link in a root-owned sticky directory (/tmp) cannot lead root anywhere.
        let mut judge: Option<Node> = None;
        while let Some((name, from_link)) = todo.pop_front() {
            let top = stack.last().expect("the root never leaves the stack");
            if name == ".." {
                if stack.len() == 1 && !base_is_root {
                    // Above where `walk_from` started: the real parent, never above the root.
                    let here = &stack[0];
                    if here.id() == self.root.id() {
                        stack[0] = self.root_node()?;
                        base_is_root = true;
                    } else {
                        let label = here.path.parent().unwrap_or(Path::new("/")).to_path_buf();
                        let parent = Node::open_at(here.fd.as_fd(), OsStr::new(".."), label)
                            .with_context(|| {
                                format!("cannot open the parent of {}", show(&here.path))
                            })?;
                        if trust == Trust::RootOwned {
                            check_root_owned(&parent)?;
                        }
                        check_transition(trust, judge.as_ref().unwrap_or(here), &parent)?;
                        stack[0] = parent;
                    }
                    judge = None;
                    continue;
                }
                if stack.len() > 1 {
                    let child = stack.pop().expect("checked length");
                    let parent = stack.last().expect("checked length");
                    check_transition(trust, judge.as_ref().unwrap_or(&child), parent)?;
                } else if let Some(j) = &judge {
                    check_transition(trust, j, &self.root)?;
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
                        .with_context(|| format!("{} is not trusted", show(path)))?;
                    n
                }
                Ok(n) => n,
                Err(Errno::ENOENT) => {
                    if from_link {
                        bail!(
                            "{} leads through a dangling symbolic link (missing: {})",
                            show(path),
                            show(&top.path.join(&name))
                        );
                    }
                    let dir = stack.pop().expect("the root never leaves the stack");
                    let mut rest = vec![name];
                    rest.extend(todo.into_iter().map(|(n, _)| n));
                    return Ok(Walk::Missing { dir, rest });
                }
                Err(e) => {
                    return Err(anyhow!(e))
                        .with_context(|| format!("cannot open {}", show(&top.path.join(&name))))
                }
            };
            if is_symlink(&node.st) {
                links += 1;
                if links > MAX_LINKS {
                    bail!("too many levels of symbolic links in {}", show(path));
                }
                let target = nix::fcntl::readlinkat(&node.fd, "")
                    .with_context(|| format!("cannot read link {}", show(&node.path)))?;
                let target = PathBuf::from(target);
                let context = || format!("symbolic link {} -> {}", show(&node.path), show(&target));
                check_transition(trust, judge.as_ref().unwrap_or(top), &node)
                    .with_context(context)?;
                if target.is_absolute() {
                    check_transition(trust, &node, &self.root).with_context(context)?;
                    stack = vec![self.root_node()?];
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
                check_transition(trust, judge.take().as_ref().unwrap_or(top), &node)?;
                stack.push(node);
            } else if todo.is_empty() {
                return Ok(Walk::Found(node));
            } else {
                bail!("{} is not a directory", show(&node.path));
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
fn start_rel(rel: &Path) -> Result<PathBuf> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    Ok(Path::new("/").join(rel))
}

/// [`Trust::RootOwned`]'s rule for one object on the way.
fn check_root_owned(n: &Node) -> Result<()> {
    if n.uid() != 0 {
        bail!("{} is owned by uid {}, not root", show(&n.path), n.uid());
    }
    let mode = n.st.st_mode;
    if is_dir(&n.st) && mode & 0o022 != 0 && mode & 0o1000 == 0 {
        bail!(
            "{} may be written by others (mode {:04o}) and is not sticky",
            show(&n.path),
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

// ---- crash-safety failpoint ----

/// Crash-safety tests set `MICROVM_WORKSPACES_FAILPOINT=N` to make the process kill itself
/// (SIGKILL, like a power cut or the OOM killer) right after its Nth change to the file system
/// or the mount table, so every point between two steps can be hit deterministically.
pub const FAILPOINT_ENV: &str = "MICROVM_WORKSPACES_FAILPOINT";

/// Marks one completed change (`what` names it). Unset (always, outside the tests) this is
/// one environment lookup.
pub fn step(what: &str) {
    static DONE: AtomicU32 = AtomicU32::new(0);
    let n = DONE.fetch_add(1, Ordering::Relaxed) + 1;
    let Some(at) = std::env::var_os(FAILPOINT_ENV) else {
        return;
    };
    if at.to_str().and_then(|s| s.parse::<u32>().ok()) == Some(n) {
        eprintln!("failpoint: killed after step {n} ({what})");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

// ---- extended attribute marker ----

fn has_mark(fd: BorrowedFd) -> bool {
    // An O_PATH descriptor cannot be asked for xattrs directly; its /proc path can.
    let mut buf = [0u8; 32];
    matches!(rustix::fs::getxattr(proc_path(fd), MARK_NAME, &mut buf[..]), Ok(n) if &buf[..n] == MARK_VALUE)
}

fn set_mark(fd: BorrowedFd) -> Result<()> {
    rustix::fs::fsetxattr(fd, MARK_NAME, MARK_VALUE, rustix::fs::XattrFlags::empty()).map_err(|e| {
        anyhow!("cannot set the {MARK_NAME} attribute ({e}); the file system must support trusted extended attributes")
    })
}

// ---- creating ----

/// Owner and mode of placeholders, resolved to numbers.
#[derive(Clone, Copy, Debug)]
pub struct PlaceholderSpec {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other process will pick, with the prefix that marks leftovers.
pub fn tmp_name() -> OsString {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}{}-{}", paths::TMP_PREFIX, std::process::id(), n).into()
}

/// Creates `name` in `dir` as a finished placeholder: it is made under a temporary name,
/// marked, owned and chmod-ed there, then renamed into place, so nobody ever sees a half-made
/// one. If `name` appeared meanwhile, that one is returned untouched.
pub fn create_placeholder(dir: &Node, name: &OsStr, spec: PlaceholderSpec) -> Result<Node> {
    let tmp = tmp_placeholder(dir, spec)?;
    match renameat2(&dir.fd, &*tmp, &dir.fd, name, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => step("rename the placeholder into place"),
        Err(Errno::EEXIST) => {
            let _ = nix::unistd::unlinkat(&dir.fd, &*tmp, nix::unistd::UnlinkatFlags::RemoveDir);
        }
        Err(e) => {
            let _ = nix::unistd::unlinkat(&dir.fd, &*tmp, nix::unistd::UnlinkatFlags::RemoveDir);
            return Err(anyhow!(e))
                .with_context(|| format!("cannot create {}", show(&dir.path.join(name))));
        }
    }
    let node = dir
        .child(name)
        .with_context(|| format!("cannot open {}", show(&dir.path.join(name))))?;
    // If another process won the race, it must have made a placeholder too.
    if !node.is_placeholder() {
        bail!(
            "{} appeared meanwhile and is not a placeholder",
            show(&node.path)
        );
    }
    Ok(node)
}

/// Puts a fresh placeholder where `name` is, atomically (`RENAME_EXCHANGE`), so the path
/// never disappears; the old object is returned under its new temporary name in `dir`.
pub fn swap_in_placeholder(dir: &Node, name: &OsStr, spec: PlaceholderSpec) -> Result<OsString> {
    let tmp = tmp_placeholder(dir, spec)?;
    if let Err(e) = renameat2(&dir.fd, &*tmp, &dir.fd, name, RenameFlags::RENAME_EXCHANGE) {
        let _ = nix::unistd::unlinkat(&dir.fd, &*tmp, nix::unistd::UnlinkatFlags::RemoveDir);
        return Err(anyhow!(e)).with_context(|| {
            format!(
                "cannot put a placeholder in place of {}",
                show(&dir.path.join(name))
            )
        });
    }
    step("exchange a placeholder with the old entry");
    Ok(tmp)
}

fn tmp_placeholder(dir: &Node, spec: PlaceholderSpec) -> Result<OsString> {
    let tmp = tmp_name();
    let at = || dir.path.join(&tmp);
    mkdirat(&dir.fd, &*tmp, Mode::from_bits_truncate(0o700))
        .with_context(|| format!("cannot create {}", show(&at())))?;
    step("mkdir a temporary placeholder");
    let made = (|| -> Result<()> {
        let fd = openat(
            &dir.fd,
            &*tmp,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        set_mark(fd.as_fd())?;
        step("mark the placeholder");
        nix::unistd::fchown(
            &fd,
            Some(Uid::from_raw(spec.uid)),
            Some(Gid::from_raw(spec.gid)),
        )?;
        step("chown the placeholder");
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(spec.mode))?;
        step("chmod the placeholder");
        Ok(())
    })();
    if let Err(e) = made {
        let _ = nix::unistd::unlinkat(&dir.fd, &*tmp, nix::unistd::UnlinkatFlags::RemoveDir);
        return Err(e).with_context(|| format!("cannot make placeholder {}", show(&at())));
    }
    Ok(tmp)
}

/// Creates directory `name` in `dir` (mode 0755) with the file-system credentials of
/// `uid:gid`; an existing directory there is fine (another process won the race).
pub fn mkdir_as(dir: &Node, name: &OsStr, uid: u32, gid: u32) -> Result<Node> {
    let at = dir.path.join(name);
    let made = with_fs_creds(uid, gid, || {
        mkdirat(&dir.fd, name, Mode::from_bits_truncate(0o755))
    });
    match made {
        Ok(()) => step("mkdir"),
        Err(Errno::EEXIST) => {}
        Err(e) => {
            return Err(anyhow!(e))
                .with_context(|| format!("cannot create {} as uid {uid}", show(&at)))
        }
    }
    let node = dir
        .child(name)
        .with_context(|| format!("cannot open {}", show(&at)))?;
    if !node.is_dir() {
        bail!("{} exists but is not a directory", show(&at));
    }
    // What appeared meanwhile (EEXIST) must be what we would have made: in a world-writable
    // parent another user could have put their own directory there, and root would then go
    // on creating inside it as root.
    if node.uid() != uid {
        bail!(
            "{} appeared meanwhile, owned by uid {} instead of {uid}",
            show(&at),
            node.uid()
        );
    }
    Ok(node)
}

/// Runs `f` with the thread's file-system uid and gid switched (Linux `setfsuid`); the
/// effective ids, and so every other permission, stay root's.
fn with_fs_creds<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> T {
    if uid == 0 {
        return f();
    }
    let old_gid = nix::unistd::setfsgid(Gid::from_raw(gid));
    let old_uid = nix::unistd::setfsuid(Uid::from_raw(uid));
    let out = f();
    nix::unistd::setfsuid(old_uid);
    nix::unistd::setfsgid(old_gid);
    out
}

/// Creates (if needed) and opens a root-owned 0755 directory at an inside path whose parent
/// exists, for our own bookkeeping directories.
///
/// These are trusted places (the workspace dir, `.links`, `.displaced`, the runtime dir): one
/// found there already must be root's and not writable by group or others, or a user could
/// plant or swap what root then acts on.
pub fn ensure_root_dir(tree: &Tree, path: &Path) -> Result<Node> {
    match tree.walk(path, Trust::Owners)? {
        Walk::Found(n) if n.is_dir() => {
            check_trusted_place(&n)?;
            Ok(n)
        }
        Walk::Found(n) => bail!("{} exists but is not a directory", show(&n.path)),
        Walk::Missing { mut dir, rest } => {
            for name in rest {
                if dir.uid() != 0 {
                    bail!(
                        "{} is owned by uid {}; refusing to create {} in it as root",
                        show(&dir.path),
                        dir.uid(),
                        paths::show_bytes(&name)
                    );
                }
                dir = mkdir_as(&dir, &name, 0, 0)?;
            }
            Ok(dir)
        }
    }
}

/// A trusted place is root's and nobody else may write to it (a directory or the lock file).
pub fn check_trusted_place(n: &Node) -> Result<()> {
    if n.uid() != 0 || n.st.st_mode & 0o022 != 0 {
        bail!(
            "{} must be owned by root and not writable by group or others (it is uid {}, mode {:04o}); refusing to use it",
            show(&n.path),
            n.uid(),
            n.st.st_mode & 0o7777
        );
    }
    Ok(())
}

/// An exclusive lock on `<dir>/.lock`, held until the descriptor is dropped.
pub fn lock(dir: &Node) -> Result<OwnedFd> {
    let at = || dir.path.join(paths::LOCK);
    let fd = openat(
        &dir.fd,
        paths::LOCK,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .with_context(|| format!("cannot open lock {}", show(&at())))?;
    step("open the lock file");
    let st = fstat(&fd).with_context(|| format!("cannot stat lock {}", show(&at())))?;
    check_trusted_place(&Node {
        fd: fd.try_clone()?,
        st,
        path: at(),
    })?;
    loop {
        match rustix::fs::flock(&fd, rustix::fs::FlockOperation::LockExclusive) {
            Ok(()) => return Ok(fd),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                return Err(anyhow!(e)).with_context(|| format!("cannot lock {}", show(&at())))
            }
        }
    }
}

/// Removes leftovers of interrupted runs (temporary names) from `dir`; call with the lock held.
/// Only what is provably ours goes: symlinks (temporary records, and legacy links whose
/// target was recorded before they were swapped out) and empty directories that are our
/// placeholders, marked or still half-made (root, 0700, before the mark). Any other directory
/// under a temporary name holds user data (a user's directory whose move aside a killed run
/// interrupted): it is returned, for the caller to move into `.displaced/`, never deleted.
pub fn remove_leftovers(dir: &Node) -> Result<Vec<OsString>> {
    let fd = openat(
        &dir.fd,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let prefix = paths::TMP_PREFIX.as_bytes();
    let names: Vec<CString> = d
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.to_bytes().starts_with(prefix))
        .collect();
    let mut strays = Vec::new();
    for name in names {
        let name = OsStr::from_bytes(name.to_bytes());
        let Ok(node) = dir.child(name) else {
            continue;
        };
        let flag = if node.is_dir() {
            let half_made = node.st.st_uid == 0 && node.st.st_mode & 0o7777 == 0o700;
            if !has_mark(node.fd.as_fd()) && !half_made {
                strays.push(name.to_os_string());
                continue;
            }
            nix::unistd::UnlinkatFlags::RemoveDir
        } else if is_symlink(&node.st) {
            nix::unistd::UnlinkatFlags::NoRemoveDir
        } else {
            continue;
        };
        match nix::unistd::unlinkat(&dir.fd, name, flag) {
            Ok(()) => {
                step("remove a leftover");
                tracing::info!(path = %show(&dir.path.join(name)), "removed leftover")
            }
            Err(Errno::ENOTEMPTY) => strays.push(name.to_os_string()),
            Err(e) => {
                tracing::warn!(path = %show(&dir.path.join(name)), "cannot remove leftover: {e}")
            }
        }
    }
    Ok(strays)
}

/// Removes regular files under a temporary name whose writer is gone (the name carries its
/// pid: see [`tmp_name`]), in a trusted place written without the workspace lock (the
/// runtime dir), where a live writer's file must be left alone.
pub fn remove_dead_tmp_files(dir: &Node) {
    for name in list_dir(dir).unwrap_or_default() {
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(paths::TMP_PREFIX))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            if let Ok(n) = dir.child(&name) {
                if SFlag::from_bits_truncate(n.st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
                {
                    let _ = nix::unistd::unlinkat(
                        &dir.fd,
                        &*name,
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    );
                }
            }
        }
    }
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
    let mut d =
        nix::dir::Dir::from_fd(fd).with_context(|| format!("cannot read {}", show(&dir.path)))?;
    Ok(d.iter()
        .filter_map(|e| e.ok())
        .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
        .filter(|n| n != "." && n != "..")
        .collect())
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
