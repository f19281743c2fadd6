//! The sudo boundary, in one place: what a caller may have root do to the workspace.
//!
//! microvm-link runs as root for users through a sudo rule that allows any arguments. Owners
//! decide: a user changes only entries that are not linked or are linked by them, links only
//! repos of their own, has only their own directories (or nobody's: root's, the
//! hypervisor's) moved aside, and releases only their own leases (or nobody's: one whose
//! worktree is gone); a pool VM changes hands only through leases. Root itself may do anything. Every rule is a pure function of
//! what was observed, so it is tested without root; the engine asks it before planning.

use std::path::Path;

use anyhow::{bail, Result};

use crate::engine::facts::{Entry, EntryFacts, LeaseFacts};
use crate::fs::paths::show;
use crate::host::caller::Caller;
use crate::model::config::user_label;

/// "<at> is <what> of <owner><detail>; only they or root may change it".
fn not_yours(at: &Path, what: &str, owner: u32, detail: &str) -> String {
    format!(
        "{} is {what} of {}{detail}; only they or root may change it",
        show(at),
        user_label(owner)
    )
}

/// May `caller` change entry `f` (link it, `linking`, or unlink it)? Only when it is not
/// linked (a placeholder, nothing, a link whose repo is gone, a legacy symlink) or its record
/// is theirs; and a directory in the way moves aside only as [`may_move_aside`] says.
pub fn may_change(f: &EntryFacts, caller: Caller, linking: bool) -> Result<()> {
    let Caller::User(uid) = caller else {
        return Ok(());
    };
    if let Some(rec) = f.record.as_ref().filter(|r| !r.legacy) {
        if rec.repo_found && rec.owner != uid {
            let to = format!(" to {}", show(&rec.target));
            bail!("{}", not_yours(&f.at, "a link", rec.owner, &to));
        }
        return Ok(());
    }
    match &f.entry {
        Entry::Directory { owner, nobodys } if linking => {
            may_move_aside(&f.at, *owner, *nobodys, caller)
        }
        _ => Ok(()),
    }
}

/// A directory in the way of a link moves aside for its owner, for root, and for any allowed
/// linker when nobody's work is in it (`nobodys`: root's, or the hypervisor's: microvm.nix's
/// tmpfiles make every share source `microvm:kvm 0775` at boot, and guests write there). A
/// directory of another person is refused, naming them.
pub fn may_move_aside(at: &Path, owner: u32, nobodys: bool, caller: Caller) -> Result<()> {
    match caller {
        Caller::User(uid) if owner != uid && !nobodys => {
            bail!("{}", not_yours(at, "a directory", owner, ""))
        }
        _ => Ok(()),
    }
}

/// May `caller` link the directory at `path`, owned by `owner`? Only their own (root: any).
pub fn may_link(path: &Path, owner: u32, caller: Caller) -> Result<()> {
    match caller {
        Caller::User(uid) if owner != uid => bail!(
            "{} is owned by uid {owner}, not by the linking user (uid {uid})",
            show(path)
        ),
        _ => Ok(()),
    }
}

/// May `caller` end the lease `l` of pool VM `vm`? Its holder and root may; anyone may end a
/// lease whose worktree is gone (nobody's any more, as a link whose repo is gone). A lease is
/// only ever taken for the caller's own worktree (the repo check of every link), so nobody
/// leases for someone else.
pub fn may_release(vm: &str, l: &LeaseFacts, caller: Caller) -> Result<()> {
    match caller {
        Caller::User(uid) if l.owner != uid && !l.gone => bail!(
            "{vm} is leased by {} for {}; only they or root may release it",
            user_label(l.owner),
            show(&l.worktree)
        ),
        _ => Ok(()),
    }
}

/// May `caller` link or unlink pool VM `vm` (in `pool`, if it is in one) by hand, outside a
/// lease? Only root: a pool VM's link is its lease's, so that a link by hand neither takes a
/// VM someone holds (a lease whose link a kill cut short) nor hands a guest to its next holder
/// without the fresh start a lease gives it, nor leaves a link a later lease may not end.
pub fn may_link_by_hand(vm: &str, pool: Option<&str>, caller: Caller) -> Result<()> {
    match (pool, caller) {
        (Some(pool), Caller::User(_)) => bail!(
            "{vm} is in pool {pool}: lease it with microvm-link --pool {pool} and end the lease with microvm-link release (only root links a pool VM by hand)"
        ),
        _ => Ok(()),
    }
}

/// Where people's uids start (NixOS `isNormalUser`, Debian's `UID_MIN`); below are services'.
pub const FIRST_PERSON_UID: u32 = 1000;

/// Is a directory owned by (`uid`, `gid`) nobody's work: root's, the hypervisor user's, or
/// the hypervisor group's with a system uid (below [`FIRST_PERSON_UID`]: a service's, such as
/// a renumbered or removed hypervisor user)? A person's directory stays theirs whatever its
/// group.
pub fn nobodys(
    uid: u32,
    gid: u32,
    hypervisor_uid: Option<u32>,
    hypervisor_gid: Option<u32>,
) -> bool {
    uid == 0
        || hypervisor_uid == Some(uid)
        || (uid < FIRST_PERSON_UID && hypervisor_gid == Some(gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobodys_work_is_roots_or_the_hypervisors_never_a_persons() {
        let (kvm_uid, kvm_gid) = (Some(993), Some(302));
        assert!(nobodys(0, 0, kvm_uid, kvm_gid));
        assert!(nobodys(993, 302, kvm_uid, kvm_gid));
        // A renumbered service user in the hypervisor group.
        assert!(nobodys(990, 302, kvm_uid, kvm_gid));
        // A person in the hypervisor group is still a person.
        assert!(!nobodys(1000, 302, kvm_uid, kvm_gid));
        assert!(!nobodys(990, 100, kvm_uid, kvm_gid));
    }

    #[test]
    fn only_owners_link_and_move_and_root_does_anything() {
        let p = Path::new("/home/bob/r");
        assert!(may_link(p, 4343, Caller::User(4343)).is_ok());
        assert!(may_link(p, 4343, Caller::Root).is_ok());
        let e = may_link(p, 4343, Caller::User(4242)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/home/bob/r is owned by uid 4343, not by the linking user (uid 4242)"
        );
        assert!(may_move_aside(p, 4343, false, Caller::User(4242)).is_err());
        assert!(may_move_aside(p, 0, true, Caller::User(4242)).is_ok());
        assert!(may_move_aside(p, 4242, false, Caller::User(4242)).is_ok());
    }

    #[test]
    fn a_lease_is_released_by_its_holder_or_root_or_anyone_once_its_worktree_is_gone() {
        let mut l = LeaseFacts {
            worktree: "/home/bob/wt".into(),
            owner: 4343,
            since: 0,
            gone: false,
        };
        assert!(may_release("a1", &l, Caller::User(4343)).is_ok());
        assert!(may_release("a1", &l, Caller::Root).is_ok());
        let e = may_release("a1", &l, Caller::User(4242)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a1 is leased by uid 4343 for /home/bob/wt; only they or root may release it"
        );
        l.gone = true;
        assert!(may_release("a1", &l, Caller::User(4242)).is_ok());
    }

    #[test]
    fn only_root_links_a_pool_vm_by_hand() {
        assert!(may_link_by_hand("a1", Some("agents"), Caller::Root).is_ok());
        assert!(may_link_by_hand("vm1", None, Caller::User(4242)).is_ok());
        let e = may_link_by_hand("a1", Some("agents"), Caller::User(4242)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a1 is in pool agents: lease it with microvm-link --pool agents and end the lease with microvm-link release (only root links a pool VM by hand)"
        );
    }
}
