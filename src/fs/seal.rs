//! Sealed directories: the directories of ours a guest can see through a share (placeholders,
//! live roots, `current`) carry the immutable inode flag (`FS_IMMUTABLE_FL`, `chattr +i`), so
//! that nobody, root included, creates, removes or renames anything in them or changes their
//! owner, mode or attributes. virtiofsd runs as root and serves them: without the flag the
//! guest's root could leave files there, set-uid-root ones among them, which host users could
//! run (docs/security.md#sealed). Only CAP_LINUX_IMMUTABLE lifts the flag, which virtiofsd does
//! not keep; a mount on a sealed directory still works, so linking is unchanged.
//!
//! This code lifts the flag only around its own change in such a directory (`opened`, under
//! the workspace lock) and puts it back after; a run killed in between leaves it lifted until
//! the next start of a VM that shares it (`engine::prepare` seals what it serves).

use std::os::fd::OwnedFd;

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use rustix::fs::IFlags;

use crate::fs::chase::Node;
use crate::fs::failpoint::step;
use crate::fs::paths::show;

/// Whether a directory is sealed, as far as its file system can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Sealed,
    Open,
    /// The file system has no immutable flag (`ENOTTY`, `EOPNOTSUPP`): nothing to do.
    Unsupported,
}

/// An `O_RDONLY` descriptor of the directory `dir` holds as `O_PATH` (ioctls need one).
fn readable(dir: &Node) -> Result<OwnedFd> {
    openat(
        &dir.fd,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", show(&dir.path)))
}

fn unsupported(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::NOTTY || e == rustix::io::Errno::OPNOTSUPP
}

/// Is the directory `dir` sealed?
pub fn state(dir: &Node) -> Result<State> {
    let fd = readable(dir)?;
    match rustix::fs::ioctl_getflags(&fd) {
        Ok(f) if f.contains(IFlags::IMMUTABLE) => Ok(State::Sealed),
        Ok(_) => Ok(State::Open),
        Err(e) if unsupported(e) => Ok(State::Unsupported),
        Err(e) => {
            Err(anyhow!(e)).with_context(|| format!("cannot read the flags of {}", show(&dir.path)))
        }
    }
}

/// Sets or clears the flag on `dir`; `Ok(false)` when it already was so, or the file system
/// has no such flag.
fn set(dir: &Node, sealed: bool) -> Result<bool> {
    let fd = readable(dir)?;
    let what = || {
        format!(
            "cannot {} {}",
            if sealed { "seal" } else { "unseal" },
            show(&dir.path)
        )
    };
    let flags = match rustix::fs::ioctl_getflags(&fd) {
        Ok(f) => f,
        Err(e) if unsupported(e) => return Ok(false),
        Err(e) => return Err(anyhow!(e)).with_context(what),
    };
    if flags.contains(IFlags::IMMUTABLE) == sealed {
        return Ok(false);
    }
    let new = if sealed {
        flags | IFlags::IMMUTABLE
    } else {
        flags - IFlags::IMMUTABLE
    };
    match rustix::fs::ioctl_setflags(&fd, new) {
        Ok(()) => {
            step(if sealed {
                "seal a directory"
            } else {
                "unseal a directory"
            });
            Ok(true)
        }
        Err(e) if unsupported(e) => Ok(false),
        Err(e) => Err(anyhow!(e)).with_context(what),
    }
}

/// Seals `dir`; `Ok(true)` when this call did it.
pub fn seal(dir: &Node) -> Result<bool> {
    set(dir, true)
}

/// Runs `f`, which changes what is in `dir`, with `dir`'s seal lifted if it has one, and puts
/// the seal back afterwards, whatever `f` returned.
pub fn opened<T>(dir: &Node, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let lifted = set(dir, false)?;
    let out = f();
    if lifted {
        let again = seal(dir);
        if out.is_ok() {
            again?;
        }
    }
    out
}

/// Did creating in `dir` fail only because `dir` is sealed (`EPERM` from a directory of
/// root's that carries the flag)?
pub fn refused_by_seal(dir: &Node, e: Errno) -> bool {
    e == Errno::EPERM && dir.uid() == 0 && matches!(state(dir), Ok(State::Sealed))
}
