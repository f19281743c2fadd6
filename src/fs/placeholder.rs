//! Placeholders: directories this project makes to stand in for a missing source, known by a
//! `trusted.` extended attribute no unprivileged user can set (docs/reference/workspace.md#placeholders).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat2, OFlag, RenameFlags};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{Gid, Uid};

use crate::fs::chase::{proc_path, Node};
use crate::fs::failpoint::step;
use crate::fs::paths::{show, tmp_name};
use crate::fs::seal;

/// Extended attribute marking a placeholder. The `trusted.` namespace needs CAP_SYS_ADMIN, so
/// an unprivileged user cannot forge it on a directory of their own.
pub const MARK_NAME: &str = "trusted.microvm-workspaces";
pub const MARK_VALUE: &[u8] = b"placeholder";

impl Node {
    /// Is this directory one of our placeholders? The mark is the proof: only CAP_SYS_ADMIN
    /// sets `trusted.*`. (Not the owner: the config may give placeholders to any user.)
    pub fn is_placeholder(&self) -> bool {
        self.is_dir() && has_mark(self.fd.as_fd())
    }
}

pub(crate) fn has_mark(fd: BorrowedFd) -> bool {
    // An O_PATH descriptor cannot be asked for xattrs directly; its /proc path can.
    let mut buf = [0u8; 32];
    matches!(rustix::fs::getxattr(proc_path(fd), MARK_NAME, &mut buf[..]), Ok(n) if &buf[..n] == MARK_VALUE)
}

fn set_mark(fd: BorrowedFd) -> Result<()> {
    rustix::fs::fsetxattr(fd, MARK_NAME, MARK_VALUE, rustix::fs::XattrFlags::empty()).map_err(|e| {
        anyhow!("cannot set the {MARK_NAME} attribute ({e}); the file system must support trusted extended attributes")
    })
}

/// Owner and mode of placeholders, resolved to numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaceholderSpec {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl PlaceholderSpec {
    /// "uid 0, gid 0, 0555", for log lines.
    pub fn describe(&self) -> String {
        format!("uid {}, gid {}, {:04o}", self.uid, self.gid, self.mode)
    }
}

/// Creates `name` in `dir` as a finished placeholder: it is made under a temporary name,
/// marked, owned and chmod-ed there, then renamed into place, so nobody ever sees a half-made
/// one, and sealed once in place (`seal`); in a sealed `dir` the caller lifts that seal first
/// (`seal::opened`). If `name` appeared meanwhile, that one is returned untouched.
pub fn create(dir: &Node, name: &OsStr, spec: PlaceholderSpec) -> Result<Node> {
    let tmp = tmp_placeholder(dir, spec)?;
    let made = match renameat2(&dir.fd, &*tmp, &dir.fd, name, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => {
            step("rename the placeholder into place");
            true
        }
        Err(Errno::EEXIST) => {
            let _ = nix::unistd::unlinkat(&dir.fd, &*tmp, nix::unistd::UnlinkatFlags::RemoveDir);
            false
        }
        Err(e) => {
            let _ = nix::unistd::unlinkat(&dir.fd, &*tmp, nix::unistd::UnlinkatFlags::RemoveDir);
            return Err(anyhow!(e))
                .with_context(|| format!("cannot create {}", show(&dir.path.join(name))));
        }
    };
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
    if made {
        seal::seal(&node)?;
    }
    Ok(node)
}

/// Puts a fresh placeholder where `name` is, atomically (`RENAME_EXCHANGE`), so the path
/// never disappears; the old object is returned under its new temporary name in `dir`. The
/// new placeholder is sealed. (`dir` is the workspace dir, which is never sealed.)
pub fn swap_in(dir: &Node, name: &OsStr, spec: PlaceholderSpec) -> Result<OsString> {
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
    // The old object is out of the way now, under `tmp`: a seal that fails must not lose
    // track of it (the next start's sweep seals the placeholder).
    let sealed = dir
        .child(name)
        .map_err(anyhow::Error::from)
        .and_then(|n| seal::seal(&n));
    if let Err(e) = sealed {
        tracing::warn!(path = %show(&dir.path.join(name)), "{} is not sealed yet: {e:#}", show(&dir.path.join(name)));
    }
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
