//! Leases of pool VMs (docs/reference/workspace.md#leases): `<workspaceDir>/.leases/<vm>`,
//! beside the link records and written the same way (engine::links): a symlink to the
//! worktree, owned by whoever holds the lease, its mtime when it was taken (so `ls -l` says
//! who, since when and for what), surviving reboots. `.leases` is a trusted place: only root
//! writes there, so a lease's owner is who took it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;

use crate::engine::entry::{RepoNow, Workspace};
use crate::engine::facts::{LeaseFacts, Rec, Slot};
use crate::engine::links::{self, read_record, Record};
use crate::engine::observe::Held;
use crate::fs::chase::{self, is_symlink, Node};
use crate::fs::paths::{self, show};
use crate::model::names::VmName;

/// A lease as it is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub worktree: PathBuf,
    pub owner: u32,
    /// When it was taken: the record's mtime (unix seconds).
    pub since: i64,
}

/// Reads `.leases/<vm>`; `None` when there is none.
pub fn read_lease(leases: Option<&Node>, vm: &OsStr) -> Result<Option<Lease>> {
    let Some(dir) = leases else { return Ok(None) };
    let node = match dir.child(vm) {
        Ok(n) => n,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => {
            return Err(anyhow!(e))
                .with_context(|| format!("cannot open lease {}", show(&dir.path.join(vm))))
        }
    };
    if !is_symlink(&node.st) {
        bail!("lease {} is not a symbolic link", show(&node.path));
    }
    let target = nix::fcntl::readlinkat(&node.fd, "")
        .with_context(|| format!("cannot read lease {}", show(&node.path)))?;
    Ok(Some(Lease {
        worktree: PathBuf::from(target),
        owner: node.uid(),
        since: node.st.st_mtime,
    }))
}

/// Writes `.leases/<vm>` atomically, owned by `owner` (a symlink under a temporary name,
/// chowned through its descriptor, renamed into place: `links::write_record`).
pub fn write_lease(leases: &Node, vm: &OsStr, worktree: &Path, owner: u32) -> Result<()> {
    links::write_record(
        leases,
        vm,
        &Record {
            target: worktree.to_path_buf(),
            owner,
        },
    )
}

/// Removes `.leases/<vm>` (nothing there is fine): a new lease that could not be linked.
pub fn remove_lease(leases: &Node, vm: &OsStr) -> Result<()> {
    links::remove_record(leases, vm)
}

/// The name that keeps who last held `vm`: `.last-<vm>` (no VM name starts with `.`).
pub fn last_name(vm: &OsStr) -> std::ffi::OsString {
    let mut n = std::ffi::OsString::from(".last-");
    n.push(vm);
    n
}

/// Ends the lease `.leases/<vm>`: renamed over `.leases/.last-<vm>`, which then says who last
/// held the VM and (its ctime) when that ended, for the next lease's rule of a fresh guest
/// for a new holder (`engine::pool::previous_holder`). Nothing there is fine.
pub fn end_lease(leases: &Node, vm: &OsStr) -> Result<()> {
    match nix::fcntl::renameat(&leases.fd, vm, &leases.fd, &*last_name(vm)) {
        Ok(()) => {
            crate::fs::failpoint::step("end a lease");
            Ok(())
        }
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(anyhow!(e))
            .with_context(|| format!("cannot end lease {}", show(&leases.path.join(vm)))),
    }
}

/// Who last held `vm` and when that ended (`.leases/.last-<vm>`: its owner, its ctime).
pub fn read_last(leases: Option<&Node>, vm: &OsStr) -> Option<(u32, i64)> {
    let node = leases?.child(&last_name(vm)).ok()?;
    is_symlink(&node.st).then(|| (node.uid(), node.st.st_ctime))
}

impl Workspace<'_> {
    /// `<workspaceDir>/.leases`, if it exists (a trusted place).
    pub fn leases(&self) -> Result<Option<Node>> {
        self.trusted_dir(paths::LEASES)
    }

    /// What a lease is now: gone when its worktree is no longer a directory of its holder's
    /// (the rule of [`Workspace::repo_now`], as for a link's repo).
    pub fn lease_facts(&self, l: &Lease) -> LeaseFacts {
        let now = self.repo_now(&Record {
            target: l.worktree.clone(),
            owner: l.owner,
        });
        LeaseFacts {
            worktree: l.worktree.clone(),
            owner: l.owner,
            since: l.since,
            gone: !matches!(now, RepoNow::Found(_)),
        }
    }

    /// Every VM of a pool with its lease and link record, in the pool's order; `.leases` and
    /// `.links` kept for the applier.
    pub fn observe_pool(&self, vms: &[VmName], held: &mut Held) -> Result<Vec<Slot>> {
        let leases = self.leases()?;
        let links = self.links()?;
        let mut out = Vec::new();
        for vm in vms {
            let name = OsStr::new(vm.as_str());
            let lease = read_lease(leases.as_ref(), name)?.map(|l| self.lease_facts(&l));
            let link = read_record(links.as_ref(), name)?.map(|r| Rec {
                repo_found: matches!(self.repo_now(&r), RepoNow::Found(_)),
                target: r.target,
                owner: r.owner,
                legacy: false,
            });
            out.push(Slot {
                vm: vm.clone(),
                lease,
                link,
                last: read_last(leases.as_ref(), name),
            });
        }
        held.keep(self.node.try_clone()?);
        for dir in [leases, links].into_iter().flatten() {
            held.keep(dir);
        }
        Ok(out)
    }

    /// Every lease in `.leases`, by VM (names that are not VM names, such as a killed run's
    /// temporary ones, are skipped).
    pub fn all_leases(&self) -> Result<Vec<(VmName, Lease)>> {
        let Some(dir) = self.leases()? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for name in chase::list_dir(&dir)? {
            let Some(vm) = name.to_str().and_then(|n| VmName::try_from(n).ok()) else {
                continue;
            };
            if let Some(l) = read_lease(Some(&dir), &name)? {
                out.push((vm, l));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}
