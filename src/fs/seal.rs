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

use anyhow::{anyhow, Context, Result};
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{fchmod, fstat, Mode};
use rustix::fs::IFlags;

use crate::fs::chase::{is_dir, is_mount_root, is_regular, is_symlink, names_of, Node};
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

/// Runs `f`, which changes what is in `dir` (a directory of ours: the caller decides), with
/// `dir`'s seal lifted if it has one; then seals it again, whatever `f` returned, and sweeps
/// what appeared in it meanwhile ([`sweep`]): `f`'s own work, and whatever a guest that
/// serves `dir` made in that window.
pub fn opened<T>(dir: &Node, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let fd = readable(dir)?;
    if state_of(&fd, &dir.path)? != State::Sealed {
        return f();
    }
    let before = names(dir)?;
    set_on(&fd, &dir.path, false)?;
    let out = f();
    match set_on(&fd, &dir.path, true) {
        Ok(_) => {}
        Err(e) if out.is_ok() => return Err(e),
        Err(e) => {
            tracing::warn!(path = %show(&dir.path), "{} is left without its seal: {e:#}", show(&dir.path))
        }
    }
    let new: BTreeSet<OsString> = names(dir)?
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect();
    let swept = sweep_in(dir, Sweep::Act, Some(&new))?;
    for q in &swept.quarantined {
        tracing::warn!(path = %show(q), "quarantined {} (mode 0, sealed): it appeared in {} while its seal was lifted, made by a guest", show(q), show(&dir.path));
    }
    out
}

fn names(dir: &Node) -> Result<BTreeSet<OsString>> {
    let fd = readable(dir)?;
    Ok(names_of(fd.as_fd())
        .with_context(|| format!("cannot list {}", show(&dir.path)))?
        .into_iter()
        .collect())
}

/// How [`sweep`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Say what it would do; change nothing.
    Look,
    Act,
}

/// What a sweep sealed and quarantined (or would).
#[derive(Debug, Default)]
pub struct Swept {
    pub sealed: Vec<PathBuf>,
    pub quarantined: Vec<PathBuf>,
}

/// A guest may have made a deep or wide tree where it found no seal; past these bounds a
/// directory is quarantined whole instead of walked.
const MAX_DEPTH: usize = 16;
const MAX_ENTRIES: usize = 4096;

/// Seals `dir` and every directory below it, and quarantines every other object there
/// (symlinks aside: they have no mode to give anyone), never crossing into a mount. Below a
/// directory of ours that a guest sees (a placeholder, a live root) nothing but our own
/// directories belongs; anything else was written by a guest, through virtiofsd, as root,
/// where no seal stopped it (an older version, or the window of [`opened`]). Quarantined: mode
/// 0 and sealed, so no host user can run or read it and the guest cannot change it back.
pub fn sweep(dir: &Node, how: Sweep) -> Result<Swept> {
    sweep_in(dir, how, None)
}

/// [`sweep`], or with `only` just those names in `dir` (and all below them), leaving `dir`
/// itself as it is.
fn sweep_in(dir: &Node, how: Sweep, only: Option<&BTreeSet<OsString>>) -> Result<Swept> {
    let mut out = Swept::default();
    let mut seen = 0;
    let mut todo = vec![(readable(dir)?, dir.path.clone(), 0)];
    while let Some((fd, path, depth)) = todo.pop() {
        // Sealed before it is listed: nothing can enter it after the listing.
        if (depth > 0 || only.is_none()) && state_of(&fd, &path)? == State::Open {
            if how == Sweep::Act {
                set_on(&fd, &path, true)?;
            }
            out.sealed.push(path.clone());
        }
        let mut names = Vec::new();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
        let mut raw = rustix::fs::RawDir::new(&fd, &mut buf);
        while let Some(e) = raw.next() {
            let e = e.with_context(|| format!("cannot list {}", show(&path)))?;
            let name = e.file_name().to_bytes();
            let name = OsStr::from_bytes(name).to_os_string();
            let wanted = depth > 0 || only.is_none_or(|o| o.contains(&name));
            if name != "." && name != ".." && wanted {
                names.push((name, e.file_type()));
            }
        }
        seen += names.len();
        // (Never `dir` itself when only some of its names are asked for: it is ours.)
        if (depth >= MAX_DEPTH || seen > MAX_ENTRIES) && (depth > 0 || only.is_none()) {
            let d = Node {
                fd: fd.try_clone().context("cannot duplicate a descriptor")?,
                st: fstat(&fd).with_context(|| format!("cannot stat {}", show(&path)))?,
                path: path.clone(),
            };
            if !quarantined(&d)? {
                out.quarantined.push(path.clone());
                if how == Sweep::Act {
                    quarantine(&d)?;
                }
            }
            continue;
        }
        for (name, kind) in names {
            let cpath = path.join(&name);
            if kind == rustix::fs::FileType::Symlink {
                continue;
            }
            // A directory is opened to be walked; anything else (or an unknown type that
            // turns out not to be one) is looked at by its O_PATH descriptor.
            if matches!(
                kind,
                rustix::fs::FileType::Directory | rustix::fs::FileType::Unknown
            ) {
                let flags = OFlag::O_RDONLY
                    | OFlag::O_DIRECTORY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NONBLOCK
                    | OFlag::O_CLOEXEC;
                match openat(&fd, name.as_os_str(), flags, Mode::empty()) {
                    Ok(c) => {
                        if is_mount_root(c.as_fd())? {
                            continue;
                        }
                        todo.push((c, cpath, depth + 1));
                        continue;
                    }
                    Err(nix::errno::Errno::ENOTDIR | nix::errno::Errno::ELOOP) => {}
                    Err(nix::errno::Errno::ENOENT) => continue,
                    Err(e) => {
                        return Err(anyhow!(e))
                            .with_context(|| format!("cannot open {}", show(&cpath)))
                    }
                }
            }
            let Ok(c) = Node::open_at(fd.as_fd(), &name, cpath) else {
                continue;
            };
            if is_symlink(&c.st) || is_mount_root(c.fd.as_fd())? {
                continue;
            }
            if !quarantined(&c)? {
                out.quarantined.push(c.path.clone());
                if how == Sweep::Act {
                    quarantine(&c)?;
                }
            }
        }
    }
    Ok(out)
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
