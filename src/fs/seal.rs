//! Sealed directories: the directories of ours a guest can see through a share (placeholders,
//! live roots, `current`) carry the immutable inode flag (`FS_IMMUTABLE_FL`, `chattr +i`), so
//! that nobody, root included, creates, removes or renames anything in them or changes their
//! owner, mode or attributes. virtiofsd runs as root and serves them: without the flag the
//! guest's root could leave files there, set-uid-root ones among them, which host users could
//! run (docs/security.md#sealed). Lifting the flag takes CAP_LINUX_IMMUTABLE and an ioctl
//! virtiofsd does not pass on; a mount on a sealed directory still works, so linking is
//! unchanged.
//!
//! This code lifts a seal only around its own change in such a directory ([`opened`], under
//! the workspace lock), puts it back, and then [`sweep`]s the directory: whatever a running
//! guest managed to create in that window is sealed (a directory) or quarantined (anything
//! else: mode 0 and sealed, so no host user can run or read it). A run killed in between
//! leaves the seal lifted until the next start of a VM that shares it, whose sweep
//! (`engine::sealed`) does the same.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{fchmod, fstat, Mode};
use rustix::fs::IFlags;

use crate::fs::chase::{is_dir, is_mount_root, is_regular, names_of, Node};
use crate::fs::failpoint::step;
use crate::fs::paths::show;

/// Whether an object is sealed, as far as its file system can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Sealed,
    Open,
    /// The file system has no immutable flag (`ENOTTY`, `EOPNOTSUPP`): nothing to do.
    Unsupported,
}

/// An `O_RDONLY` descriptor of what `n` holds as `O_PATH` (ioctls and fchmod need one),
/// through its `/proc/self/fd` link, which names that very object. Never blocks (a FIFO).
fn readable(n: &Node) -> Result<OwnedFd> {
    let how = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let fd = match n.is_dir() {
        true => openat(&n.fd, ".", how | OFlag::O_DIRECTORY, Mode::empty()),
        false => open(&n.proc_path(), how, Mode::empty()),
    };
    fd.with_context(|| format!("cannot open {}", show(&n.path)))
}

fn unsupported(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::NOTTY || e == rustix::io::Errno::OPNOTSUPP
}

fn state_of(fd: &OwnedFd, path: &Path) -> Result<State> {
    match rustix::fs::ioctl_getflags(fd) {
        Ok(f) if f.contains(IFlags::IMMUTABLE) => Ok(State::Sealed),
        Ok(_) => Ok(State::Open),
        Err(e) if unsupported(e) => Ok(State::Unsupported),
        Err(e) => {
            Err(anyhow!(e)).with_context(|| format!("cannot read the flags of {}", show(path)))
        }
    }
}

/// Is `n` (a directory or a regular file) sealed?
pub fn state(n: &Node) -> Result<State> {
    state_of(&readable(n)?, &n.path)
}

/// Sets or clears the flag of the object `fd` opens; `Ok(false)` when it already was so, or
/// its file system has no such flag.
fn set_on(fd: &OwnedFd, path: &Path, sealed: bool) -> Result<bool> {
    let what = || {
        let verb = if sealed { "seal" } else { "lift the seal of" };
        format!("cannot {verb} {}", show(path))
    };
    let flags = match rustix::fs::ioctl_getflags(fd) {
        Ok(f) => f,
        Err(e) if unsupported(e) => return Ok(false),
        Err(e) => return Err(anyhow!(e)).with_context(what),
    };
    if flags.contains(IFlags::IMMUTABLE) == sealed {
        return Ok(false);
    }
    let new = match sealed {
        true => flags | IFlags::IMMUTABLE,
        false => flags - IFlags::IMMUTABLE,
    };
    rustix::fs::ioctl_setflags(fd, new)
        .map_err(|e| anyhow!(e))
        .with_context(what)?;
    step(if sealed { "seal" } else { "lift a seal" });
    Ok(true)
}

/// Seals `n`; `Ok(true)` when this call did it.
pub fn seal(n: &Node) -> Result<bool> {
    set_on(&readable(n)?, &n.path, true)
}

/// Lifts the seal of `n`; `Ok(true)` when it had one. For what is about to be removed (a
/// leftover of a killed run) or changed by us under the lock.
pub fn lift(n: &Node) -> Result<bool> {
    set_on(&readable(n)?, &n.path, false)
}

/// Runs `f`, which changes what is in `dir` (a directory of ours: the caller decides, and
/// holds the workspace lock), with `dir`'s seal lifted if it has one; then seals it again,
/// whatever `f` returned, and sweeps every entry that appeared or was replaced meanwhile (by
/// name and inode): `f`'s own work, and whatever a guest that serves `dir` made in that
/// window.
pub fn opened<T>(dir: &Node, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let fd = readable(dir)?;
    if state_of(&fd, &dir.path)? != State::Sealed {
        return f();
    }
    let before = entries(&readable(dir)?, &dir.path)?;
    set_on(&fd, &dir.path, false)?;
    let out = f();
    match set_on(&fd, &dir.path, true) {
        Ok(_) => {}
        Err(e) if out.is_ok() => return Err(e),
        Err(e) => {
            tracing::warn!(path = %show(&dir.path), "{} is left without its seal: {e:#}", show(&dir.path))
        }
    }
    let seen: BTreeSet<(OsString, u64)> = before.into_iter().map(|e| (e.name, e.ino)).collect();
    let mut swept = Swept::default();
    walk(&fd, &dir.path, 0, Sweep::Act, Some(&seen), &mut swept).with_context(|| {
        format!(
            "{}: what appeared while its seal was lifted",
            show(&dir.path)
        )
    })?;
    for (what, q) in swept.planted() {
        tracing::warn!(path = %show(q), "{what} {}: it appeared in {} while its seal was lifted, made by a guest", show(q), show(&dir.path));
    }
    out
}

/// How [`sweep`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Say what it would do; change nothing.
    Look,
    /// Do it; the caller holds the workspace lock (removing a link lifts a seal).
    Act,
}

/// What a sweep sealed, quarantined and removed (or would).
#[derive(Debug, Default)]
pub struct Swept {
    pub sealed: Vec<PathBuf>,
    pub quarantined: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    /// Seals lifted to remove something: a guest that keeps planting in those windows is
    /// not raced for ever.
    lifts: usize,
}

impl Swept {
    /// What only a guest can have made, in words for a journal line.
    pub fn planted(&self) -> impl Iterator<Item = (&'static str, &PathBuf)> {
        let q = self
            .quarantined
            .iter()
            .map(|p| ("quarantined (mode 0, sealed)", p));
        q.chain(self.removed.iter().map(|p| ("removed", p)))
    }
}

/// A guest may have made a deep or wide tree where it found no seal; past these bounds a
/// directory of its (not a placeholder) is quarantined whole instead of walked.
const MAX_DEPTH: usize = 16;
const MAX_ENTRIES: usize = 4096;
const MAX_LIFTS: usize = 64;

/// Seals `dir` and every directory below it and deals with every other object there, never
/// crossing into a mount. Below a directory of ours that a guest sees (a placeholder, a live
/// root) nothing but our own directories belongs; anything else was written by a guest,
/// through virtiofsd, as root, where no seal stopped it (an older version, or the window of
/// [`opened`]). A regular file is quarantined: mode 0 and sealed, so no host user can run or
/// read it and the guest cannot change it back. What cannot be sealed, or is not only the
/// guest's, is removed: a symlink (root would follow it out of the tree), a device, FIFO or
/// socket, a file with other hard links (the other names may be someone's). On a file system
/// without the flag nothing is done: nothing could keep it so.
pub fn sweep(dir: &Node, how: Sweep) -> Result<Swept> {
    let mut out = Swept::default();
    walk(&readable(dir)?, &dir.path, 0, how, None, &mut out)?;
    Ok(out)
}

/// One entry of a directory listing.
struct Entry {
    name: OsString,
    ino: u64,
    kind: rustix::fs::FileType,
}

/// Every entry of the directory open at `fd` (a fresh descriptor), `.` and `..` left out.
fn entries(fd: &OwnedFd, path: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
    let mut raw = rustix::fs::RawDir::new(fd, &mut buf);
    while let Some(e) = raw.next() {
        let e = e.with_context(|| format!("cannot list {}", show(path)))?;
        let name = e.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(Entry {
                name: OsStr::from_bytes(name).to_os_string(),
                ino: e.ino(),
                kind: e.file_type(),
            });
        }
    }
    Ok(out)
}

/// [`sweep`] of the directory open at `fd`, `depth` below where it began; with `only`, just
/// the entries not in it (by name and inode), leaving the directory itself as it is. One
/// descriptor a level: the walk is depth-first.
fn walk(
    fd: &OwnedFd,
    path: &Path,
    depth: usize,
    how: Sweep,
    only: Option<&BTreeSet<(OsString, u64)>>,
    out: &mut Swept,
) -> Result<()> {
    match state_of(fd, path)? {
        State::Unsupported => return Ok(()),
        // Sealed before it is listed: nothing can enter it after the listing.
        State::Open if only.is_none() => {
            if how == Sweep::Act {
                set_on(fd, path, true)?;
            }
            out.sealed.push(path.to_path_buf());
        }
        _ => {}
    }
    let mut list = entries(&openat(fd, ".", dir_flags(), Mode::empty())?, path)?;
    if let Some(seen) = only {
        list.retain(|e| !seen.contains(&(e.name.clone(), e.ino)));
    }
    let mut gone = Vec::new();
    for e in list {
        let at = path.join(&e.name);
        if e.kind == rustix::fs::FileType::Directory || e.kind == rustix::fs::FileType::Unknown {
            match openat(
                fd,
                e.name.as_os_str(),
                dir_flags() | OFlag::O_NOFOLLOW,
                Mode::empty(),
            ) {
                Ok(c) => {
                    if !is_mount_root(c.as_fd())? {
                        dir_below(&c, &at, depth + 1, how, out)?;
                    }
                    continue;
                }
                Err(nix::errno::Errno::ENOTDIR | nix::errno::Errno::ELOOP) => {}
                Err(nix::errno::Errno::ENOENT) => continue,
                Err(e) => {
                    return Err(anyhow!(e)).with_context(|| format!("cannot open {}", show(&at)))
                }
            }
        }
        let c = match Node::open_at(fd.as_fd(), &e.name, at.clone()) {
            Ok(c) => c,
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(anyhow!(e)).with_context(|| format!("cannot open {}", show(&at))),
        };
        if is_dir(&c.st) {
            continue; // a directory where there was none a moment ago: the next sweep's
        }
        if is_regular(&c.st) && c.st.st_nlink == 1 {
            if !quarantined(&c)? {
                out.quarantined.push(at);
                if how == Sweep::Act {
                    quarantine(&c)?;
                }
            }
        } else {
            gone.push(e.name);
        }
    }
    if !gone.is_empty() {
        remove(fd, path, gone, how, out)?;
    }
    Ok(())
}

/// The flags a directory is opened with to be looked at.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC
}

/// A directory below the one a sweep began at: walked, or, if it is a guest's (not a
/// placeholder) and too deep or too wide, quarantined whole.
fn dir_below(c: &OwnedFd, at: &Path, depth: usize, how: Sweep, out: &mut Swept) -> Result<()> {
    let node = Node {
        fd: c.try_clone().context("cannot duplicate a descriptor")?,
        st: fstat(c).with_context(|| format!("cannot stat {}", show(at)))?,
        path: at.to_path_buf(),
    };
    if quarantined(&node)? {
        return Ok(());
    }
    let theirs = !node.is_placeholder()
        && (depth > MAX_DEPTH
            || names_of(openat(c, ".", dir_flags(), Mode::empty())?.as_fd())?.len() > MAX_ENTRIES);
    if theirs {
        out.quarantined.push(at.to_path_buf());
        if how == Sweep::Act {
            quarantine(&node)?;
        }
        return Ok(());
    }
    walk(c, at, depth, how, None, out)
}

/// Removes `names` from the directory open at `fd` (what cannot be quarantined), its seal
/// lifted meanwhile; what a guest slipped in during that lift is swept in turn.
fn remove(
    fd: &OwnedFd,
    path: &Path,
    names: Vec<OsString>,
    how: Sweep,
    out: &mut Swept,
) -> Result<()> {
    out.removed.extend(names.iter().map(|n| path.join(n)));
    if how == Sweep::Look {
        return Ok(());
    }
    out.lifts += 1;
    if out.lifts > MAX_LIFTS {
        bail!(
            "{}: something keeps appearing in it while its seal is lifted to remove what a guest planted",
            show(path)
        );
    }
    let before: BTreeSet<(OsString, u64)> =
        entries(&openat(fd, ".", dir_flags(), Mode::empty())?, path)?
            .into_iter()
            .map(|e| (e.name, e.ino))
            .collect();
    let lifted = set_on(fd, path, false)?;
    let mut done = Ok(());
    for n in &names {
        match nix::unistd::unlinkat(fd, n.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => step("remove what a guest planted"),
            Err(e) => {
                done = Err(anyhow!(e))
                    .with_context(|| format!("cannot remove {}", show(&path.join(n))));
                break;
            }
        }
    }
    if lifted {
        set_on(fd, path, true)?;
    }
    done?;
    walk(fd, path, 0, how, Some(&before), out)
}

/// Mode 0 and, where it can be (a directory, a regular file), sealed already?
fn quarantined(n: &Node) -> Result<bool> {
    if n.st.st_mode & 0o7777 != 0 {
        return Ok(false);
    }
    if is_dir(&n.st) || is_regular(&n.st) {
        return Ok(state(n)? != State::Open);
    }
    Ok(true)
}

/// Mode 0, then sealed; again while a guest changed the mode before the seal held.
fn quarantine(n: &Node) -> Result<()> {
    let sealable = is_dir(&n.st) || is_regular(&n.st);
    for _ in 0..8 {
        if !sealable {
            // A FIFO or socket (mknod is filtered for virtiofsd): only its mode.
            return nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                &n.proc_path(),
                Mode::empty(),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .with_context(|| format!("cannot quarantine {}", show(&n.path)));
        }
        let fd = readable(n)?;
        set_on(&fd, &n.path, false)?;
        fchmod(&fd, Mode::empty())
            .with_context(|| format!("cannot quarantine {}", show(&n.path)))?;
        set_on(&fd, &n.path, true)?;
        let st = fstat(&fd).with_context(|| format!("cannot stat {}", show(&n.path)))?;
        if st.st_mode & 0o7777 == 0 {
            step("quarantine");
            return Ok(());
        }
    }
    Err(anyhow!(
        "cannot quarantine {}: its mode keeps changing",
        show(&n.path)
    ))
}
