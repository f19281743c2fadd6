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

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{fchmod, fstat, Mode};
use rustix::fs::IFlags;

use crate::fs::chase::{is_dir, is_mount_root, is_regular, is_symlink, list_dir, Node};
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

fn state_of(fd: &OwnedFd, n: &Node) -> Result<State> {
    match rustix::fs::ioctl_getflags(fd) {
        Ok(f) if f.contains(IFlags::IMMUTABLE) => Ok(State::Sealed),
        Ok(_) => Ok(State::Open),
        Err(e) if unsupported(e) => Ok(State::Unsupported),
        Err(e) => {
            Err(anyhow!(e)).with_context(|| format!("cannot read the flags of {}", show(&n.path)))
        }
    }
}

/// Is `n` (a directory or a regular file) sealed?
pub fn state(n: &Node) -> Result<State> {
    state_of(&readable(n)?, n)
}

/// Sets or clears the flag of the object `fd` opens; `Ok(false)` when it already was so, or
/// its file system has no such flag.
fn set_on(fd: &OwnedFd, n: &Node, sealed: bool) -> Result<bool> {
    let what = || {
        let verb = if sealed { "seal" } else { "lift the seal of" };
        format!("cannot {verb} {}", show(&n.path))
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
    set_on(&readable(n)?, n, true)
}

/// Lifts the seal of `n`; `Ok(true)` when it had one. For what is about to be removed (a
/// leftover of a killed run) or changed by us under the lock.
pub fn lift(n: &Node) -> Result<bool> {
    set_on(&readable(n)?, n, false)
}

/// Runs `f`, which changes what is in `dir` (a directory of ours: the caller decides), with
/// `dir`'s seal lifted if it has one; then seals it again, whatever `f` returned, and sweeps
/// it for what a guest made meanwhile ([`sweep`]).
pub fn opened<T>(dir: &Node, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let lifted = lift(dir)?;
    let out = f();
    if lifted {
        match seal(dir) {
            Ok(_) => {}
            Err(e) if out.is_ok() => return Err(e),
            Err(e) => {
                tracing::warn!(path = %show(&dir.path), "{} is left without its seal: {e:#}", show(&dir.path))
            }
        }
        let swept = sweep(dir, Sweep::Act)?;
        for q in &swept.quarantined {
            tracing::warn!(path = %show(q), "quarantined {} (mode 0, sealed): it appeared in {} while its seal was lifted, made by a guest", show(q), show(&dir.path));
        }
    }
    out
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
    let mut out = Swept::default();
    let mut seen = 0;
    let mut todo = vec![(dir.try_clone()?, 0)];
    while let Some((d, depth)) = todo.pop() {
        let names = list_dir(&d)?;
        seen += names.len();
        if depth >= MAX_DEPTH || seen > MAX_ENTRIES {
            if !quarantined(&d)? {
                out.quarantined.push(d.path.clone());
                if how == Sweep::Act {
                    quarantine(&d)?;
                }
            }
            continue;
        }
        for name in names {
            let Ok(c) = d.child(&name) else { continue };
            if is_symlink(&c.st) || is_mount_root(c.fd.as_fd())? {
                continue;
            }
            if is_dir(&c.st) {
                todo.push((c, depth + 1));
            } else if !quarantined(&c)? {
                out.quarantined.push(c.path.clone());
                if how == Sweep::Act {
                    quarantine(&c)?;
                }
            }
        }
        if state(&d)? == State::Open {
            out.sealed.push(d.path.clone());
            if how == Sweep::Act {
                seal(&d)?;
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
        set_on(&fd, n, false)?;
        fchmod(&fd, Mode::empty())
            .with_context(|| format!("cannot quarantine {}", show(&n.path)))?;
        set_on(&fd, n, true)?;
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
