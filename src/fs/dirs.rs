//! Trusted places and creating directories as root: the workspace dir and its bookkeeping
//! directories (`.links`, `.displaced`), the runtime dir, the lock, leftovers of killed runs,
//! and directories made with a user's credentials inside their tree
//! (docs/security.md#path-safety).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

use crate::fs::chase::{is_symlink, list_dir, Node, Tree, Trust, Walk};
use crate::fs::failpoint::step;
use crate::fs::paths::{self, show};
use crate::fs::{placeholder, seal};

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
    let prefix = paths::TMP_PREFIX.as_bytes();
    let names: Vec<OsString> = list_dir(dir)?
        .into_iter()
        .filter(|n| n.as_bytes().starts_with(prefix))
        .collect();
    let mut strays = Vec::new();
    for name in names {
        let name = name.as_os_str();
        let Ok(node) = dir.child(name) else {
            continue;
        };
        let flag = if node.is_dir() {
            let half_made = node.st.st_uid == 0 && node.st.st_mode & 0o7777 == 0o700;
            if !placeholder::has_mark(node.fd.as_fd()) && !half_made {
                strays.push(name.to_os_string());
                continue;
            }
            // A sweep may have sealed it (it skips nothing a guest could write into).
            if let Err(e) = seal::lift(&node) {
                tracing::warn!(path = %show(&dir.path.join(name)), "cannot remove leftover: {e:#}");
                continue;
            }
            nix::unistd::UnlinkatFlags::RemoveDir
        } else if is_symlink(&node.st) {
            nix::unistd::UnlinkatFlags::NoRemoveDir
        } else {
            continue;
        };
        let removed = nix::unistd::unlinkat(&dir.fd, name, flag);
        if removed.is_err() && node.is_dir() {
            // Still there (a guest filled it, a sweep quarantined that): sealed again.
            let _ = seal::seal(&node);
        }
        match removed {
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
