//! Link records: `<workspaceDir>/.links/<name>`, a symlink to the repo owned by the user who
//! linked it (so `ls -l` says who), surviving reboots; and the shell era's symlink entries
//! they replace. Written atomically, through the directory's descriptor.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;

use crate::fs::chase::Node;
use crate::fs::failpoint::step;
use crate::fs::paths::{self, show, tmp_name};

/// A link record: where it points and who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub target: PathBuf,
    pub owner: u32,
}

/// The record a legacy symlink in the workspace dir stands for (its owner made it).
pub(crate) fn legacy_record(link: &Node, ws: &Path) -> Result<Record> {
    let target = PathBuf::from(nix::fcntl::readlinkat(&link.fd, "")?);
    Ok(Record {
        target: paths::normalize(&ws.join(target)),
        owner: link.uid(),
    })
}

/// Reads `.links/<name>`; `None` when there is no record. `.links` is a trusted place, so
/// whatever is there was made by root (on a user's behalf: the owner says whose).
pub fn read_record(links: Option<&Node>, name: &OsStr) -> Result<Option<Record>> {
    let Some(links) = links else { return Ok(None) };
    let node = match links.child(name) {
        Ok(n) => n,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => {
            return Err(anyhow!(e))
                .with_context(|| format!("cannot open record {}", show(&links.path.join(name))))
        }
    };
    let target = nix::fcntl::readlinkat(&node.fd, "")
        .with_context(|| format!("record {} is not a symbolic link", show(&node.path)))?;
    Ok(Some(Record {
        target: PathBuf::from(target),
        owner: node.st.st_uid,
    }))
}

/// Writes `.links/<name>` atomically: a symlink under a temporary name, chowned to `owner`
/// through its own descriptor, then renamed over the old record.
pub fn write_record(links: &Node, name: &OsStr, rec: &Record) -> Result<()> {
    let tmp = tmp_name();
    let at = links.path.join(name);
    nix::unistd::symlinkat(&rec.target, &links.fd, &*tmp)
        .with_context(|| format!("cannot write record {}", show(&at)))?;
    step("symlink a temporary record");
    let done = links
        .child(&tmp)
        .map_err(anyhow::Error::from)
        .and_then(|n| {
            rustix::fs::chownat(
                &n.fd,
                "",
                Some(rustix::fs::Uid::from_raw(rec.owner)),
                None,
                rustix::fs::AtFlags::EMPTY_PATH | rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )?;
            Ok(nix::fcntl::renameat(&links.fd, &*tmp, &links.fd, name)?)
        });
    if let Err(e) = done {
        let _ = nix::unistd::unlinkat(&links.fd, &*tmp, nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(e).with_context(|| format!("cannot write record {}", show(&at)));
    }
    step("rename the record into place");
    Ok(())
}

pub fn remove_record(links: &Node, name: &OsStr) -> Result<()> {
    match nix::unistd::unlinkat(&links.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) => {
            step("remove a record");
            Ok(())
        }
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(anyhow!(e))
            .with_context(|| format!("cannot remove record {}", show(&links.path.join(name)))),
    }
}
