//! Pools of VMs for parallel work (docs/reference/config.md#pools): which VM a worktree gets,
//! as a pure function of the pool's slots (each VM's lease and link record, engine::facts),
//! who asks and the worktree. engine::link::lease observes the slots and applies the choice
//! holding the workspace lock, so that for every other caller choosing and recording are one
//! step: two callers never get one VM.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::engine::facts::{LeaseFacts, Slot};
use crate::fs::paths::show;
use crate::model::config::user_name;
use crate::model::names::{PoolName, VmName};

/// What a lease call gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The worktree holds a lease on this VM already: found again, nothing new recorded.
    Own(VmName),
    /// The pool's first VM nobody holds: leased now.
    Take(VmName),
}

impl Choice {
    pub fn vm(&self) -> &VmName {
        match self {
            Choice::Own(vm) | Choice::Take(vm) => vm,
        }
    }
}

/// A lease ended by a lease call because its worktree is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub vm: VmName,
    pub lease: LeaseFacts,
}

/// A VM of a full pool, and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub vm: VmName,
    pub owner: u32,
    /// The worktree of its lease, or the repo of a link made without one.
    pub path: PathBuf,
    /// Held by a lease (else by a link made by hand, `microvm-link VM`).
    pub leased: bool,
}

/// Every VM of the pool is held: the refusal, naming each holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    pub pool: PoolName,
    pub held: Vec<Holder>,
}

impl fmt::Display for Full {
    /// `pool agents is full (2 leased: a1 by alice for /home/alice/wt1, a2 by bob for
    /// /home/bob/wt2)`; a VM linked by hand reads `a3 linked by carol to /home/carol/x
    /// without a lease` (and the count says `in use`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all_leased = self.held.iter().all(|h| h.leased);
        let each: Vec<String> = self
            .held
            .iter()
            .map(|h| match h.leased {
                true => format!("{} by {} for {}", h.vm, user_name(h.owner), show(&h.path)),
                false => format!(
                    "{} linked by {} to {} without a lease",
                    h.vm,
                    user_name(h.owner),
                    show(&h.path)
                ),
            })
            .collect();
        write!(
            f,
            "pool {} is full ({} {}: {})",
            self.pool,
            self.held.len(),
            if all_leased { "leased" } else { "in use" },
            each.join(", ")
        )
    }
}

impl std::error::Error for Full {}

/// What a lease call decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub choice: Result<Choice, Full>,
    /// Leases of the pool whose worktree is gone: this call ends them (the VM it takes among
    /// them is leased anew instead).
    pub released: Vec<Released>,
}

/// Which VM of the pool `slots` (in the pool's order) the worktree `worktree` of `owner` (0:
/// root) gets:
/// * its own lease, if it holds one (the same worktree and holder, the worktree still there);
/// * else the first VM that nobody holds: no lease (or one whose worktree is gone), and no
///   link, or a link whose repo is gone, or a link of this very worktree by this owner;
/// * else the pool is full, naming every holder.
///
/// Every lease whose worktree is gone is released on the way (a refusal changes nothing).
pub fn choose(pool: &PoolName, slots: &[Slot], owner: u32, worktree: &Path) -> Decision {
    let released: Vec<Released> = slots
        .iter()
        .filter_map(|s| {
            let l = s.lease.as_ref().filter(|l| l.gone)?;
            Some(Released {
                vm: s.vm.clone(),
                lease: l.clone(),
            })
        })
        .collect();
    let live = |s: &Slot| s.lease.as_ref().filter(|l| !l.gone).cloned();
    if let Some(s) = slots
        .iter()
        .find(|s| live(s).is_some_and(|l| l.owner == owner && l.worktree == worktree))
    {
        return Decision {
            choice: Ok(Choice::Own(s.vm.clone())),
            released,
        };
    }
    let free = |s: &Slot| {
        live(s).is_none()
            && s.link
                .as_ref()
                .is_none_or(|r| !r.repo_found || (r.owner == owner && r.target == worktree))
    };
    let choice = match slots.iter().find(|s| free(s)) {
        Some(s) => Ok(Choice::Take(s.vm.clone())),
        None => Err(Full {
            pool: pool.clone(),
            held: slots
                .iter()
                .filter_map(|s| match (live(s), &s.link) {
                    (Some(l), _) => Some(Holder {
                        vm: s.vm.clone(),
                        owner: l.owner,
                        path: l.worktree,
                        leased: true,
                    }),
                    (None, Some(r)) => Some(Holder {
                        vm: s.vm.clone(),
                        owner: r.owner,
                        path: r.target.clone(),
                        leased: false,
                    }),
                    (None, None) => None,
                })
                .collect(),
        }),
    };
    Decision { choice, released }
}

/// Whose work the guest of `slot`'s VM may still hold, and since when it is over (unix
/// seconds; `now` for what ends with this lease): a lease of someone whose worktree is gone,
/// a link of someone's whose repo is gone, else who last held a lease. A new holder other
/// than them gets a freshly started guest if the VM has run since then (flow's rule): what
/// ran in it for one person must not meet the next one's worktree, which the guest writes
/// as its holder.
pub fn previous_holder(slot: &Slot, now: i64) -> Option<(u32, i64)> {
    if let Some(l) = &slot.lease {
        return Some((l.owner, now));
    }
    if let Some(r) = &slot.link {
        return Some((r.owner, now));
    }
    slot.last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::facts::Rec;

    const ALICE: u32 = 4242;
    const BOB: u32 = 4343;

    fn pool() -> PoolName {
        PoolName::try_from("agents").unwrap()
    }

    fn vm(n: &str) -> VmName {
        VmName::try_from(n).unwrap()
    }

    fn free(n: &str) -> Slot {
        Slot {
            vm: vm(n),
            lease: None,
            link: None,
            last: None,
        }
    }

    /// `n` leased by `owner` for `wt` (and linked to it, as a lease call leaves it).
    fn leased(n: &str, owner: u32, wt: &str, gone: bool) -> Slot {
        Slot {
            vm: vm(n),
            lease: Some(LeaseFacts {
                worktree: wt.into(),
                owner,
                since: 1_700_000_000,
                gone,
            }),
            link: Some(Rec {
                target: wt.into(),
                owner,
                repo_found: !gone,
                legacy: false,
            }),
            last: None,
        }
    }

    fn linked(n: &str, owner: u32, repo: &str, found: bool) -> Slot {
        Slot {
            vm: vm(n),
            lease: None,
            link: Some(Rec {
                target: repo.into(),
                owner,
                repo_found: found,
                legacy: false,
            }),
            last: None,
        }
    }

    fn take(slots: &[Slot], owner: u32, wt: &str) -> Result<Choice, String> {
        choose(&pool(), slots, owner, Path::new(wt))
            .choice
            .map_err(|f| f.to_string())
    }

    #[test]
    fn the_first_free_vm_in_the_pools_order_is_taken() {
        let slots = [
            leased("a1", BOB, "/home/bob/wt", false),
            free("a2"),
            free("a3"),
        ];
        assert_eq!(
            take(&slots, ALICE, "/home/alice/wt1"),
            Ok(Choice::Take(vm("a2")))
        );
        assert_eq!(
            take(&[free("a3"), free("a2")], ALICE, "/w"),
            Ok(Choice::Take(vm("a3")))
        );
    }

    #[test]
    fn the_same_worktree_finds_its_own_lease_and_no_other() {
        let slots = [
            free("a1"),
            leased("a2", ALICE, "/home/alice/wt1", false),
            leased("a3", ALICE, "/home/alice/wt2", false),
        ];
        assert_eq!(
            take(&slots, ALICE, "/home/alice/wt1"),
            Ok(Choice::Own(vm("a2")))
        );
        assert_eq!(
            take(&slots, ALICE, "/home/alice/wt2"),
            Ok(Choice::Own(vm("a3")))
        );
        // Another worktree of hers gets a new VM; a lease of the same path by someone else
        // is not hers (root's lease of her worktree neither).
        assert_eq!(
            take(&slots, ALICE, "/home/alice/wt3"),
            Ok(Choice::Take(vm("a1")))
        );
        let bobs = [leased("a1", BOB, "/home/alice/wt1", false), free("a2")];
        assert_eq!(
            take(&bobs, ALICE, "/home/alice/wt1"),
            Ok(Choice::Take(vm("a2")))
        );
        assert_eq!(
            take(&bobs, 0, "/home/alice/wt1"),
            Ok(Choice::Take(vm("a2")))
        );
    }

    #[test]
    fn a_full_pool_names_every_holder_in_one_line() {
        let slots = [
            leased("a1", ALICE, "/home/alice/wt1", false),
            leased("a2", BOB, "/home/bob/wt2", false),
        ];
        assert_eq!(
            take(&slots, ALICE, "/home/alice/wt3"),
            Err("pool agents is full (2 leased: a1 by uid 4242 for /home/alice/wt1, a2 by uid 4343 for /home/bob/wt2)".into())
        );
        // A VM linked by hand (no lease) is held too, and said so.
        let slots = [
            leased("a1", ALICE, "/home/alice/wt1", false),
            linked("a2", BOB, "/home/bob/r\nx", true),
        ];
        assert_eq!(
            take(&slots, ALICE, "/home/alice/wt3"),
            Err("pool agents is full (2 in use: a1 by uid 4242 for /home/alice/wt1, a2 linked by uid 4343 to /home/bob/r\\nx without a lease)".into())
        );
    }

    #[test]
    fn a_link_is_free_when_its_repo_is_gone_or_it_is_this_worktrees() {
        let slots = [linked("a1", BOB, "/home/bob/gone", false), free("a2")];
        assert_eq!(take(&slots, ALICE, "/w"), Ok(Choice::Take(vm("a1"))));
        // Her own worktree linked by hand: leased, not passed over.
        let slots = [linked("a1", ALICE, "/home/alice/wt1", true), free("a2")];
        assert_eq!(
            take(&slots, ALICE, "/home/alice/wt1"),
            Ok(Choice::Take(vm("a1")))
        );
        assert_eq!(
            take(&slots, ALICE, "/home/alice/wt2"),
            Ok(Choice::Take(vm("a2")))
        );
    }

    #[test]
    fn leases_whose_worktree_is_gone_are_released_and_their_vms_free() {
        let slots = [
            leased("a1", ALICE, "/home/alice/wt1", false),
            leased("a2", BOB, "/home/bob/deleted", true),
            leased("a3", BOB, "/home/bob/moved", true),
        ];
        let d = choose(&pool(), &slots, ALICE, Path::new("/home/alice/wt2"));
        assert_eq!(d.choice, Ok(Choice::Take(vm("a2"))));
        let gone: Vec<&str> = d.released.iter().map(|r| r.vm.as_str()).collect();
        assert_eq!(gone, ["a2", "a3"]);
        // Found again, the own lease releases the gone ones as well.
        let d = choose(&pool(), &slots, ALICE, Path::new("/home/alice/wt1"));
        assert_eq!((d.choice, d.released.len()), (Ok(Choice::Own(vm("a1"))), 2));
        // A gone lease is not found again even by its own worktree path.
        let d = choose(&pool(), &slots, BOB, Path::new("/home/bob/deleted"));
        assert_eq!(d.choice, Ok(Choice::Take(vm("a2"))));
    }

    #[test]
    fn the_previous_holder_is_the_lease_or_link_ending_now_else_the_last_lease() {
        let now = 1_800_000_000;
        assert_eq!(previous_holder(&free("a1"), now), None);
        let mut s = free("a1");
        s.last = Some((BOB, 1_700_000_000));
        assert_eq!(previous_holder(&s, now), Some((BOB, 1_700_000_000)));
        let gone = leased("a1", BOB, "/home/bob/x", true);
        assert_eq!(previous_holder(&gone, now), Some((BOB, now)));
        let hand = linked("a1", BOB, "/home/bob/x", false);
        assert_eq!(previous_holder(&hand, now), Some((BOB, now)));
    }
}
