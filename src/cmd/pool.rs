//! Pools in microvm-link (docs/reference/cli.md#pool): leases as reports and `status` show
//! them, a worktree's own leases (read with the caller's rights), and the check that a pool
//! VM's shares really hold its live workspace share.

use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::engine::entry::Workspace;
use crate::engine::facts::LeaseFacts;
use crate::engine::leases::Lease;
use crate::fs::chase::Tree;
use crate::fs::paths::show;
use crate::model::config::{user_name, Config};
use crate::model::names::{PoolName, VmName};
use crate::model::runner;

/// A lease, as reports and `status --json` give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseView {
    pub vm: VmName,
    /// The pool the VM is in now (`null`: in none any more, the config changed).
    pub pool: Option<PoolName>,
    pub uid: u32,
    /// The holder's name, or `uid N`.
    pub user: String,
    pub worktree: String,
    /// When it was taken: unix seconds, and the same in words (UTC).
    pub since: i64,
    pub since_utc: String,
    /// Its worktree is gone: the next lease call of the pool ends it.
    pub worktree_gone: bool,
}

impl LeaseView {
    pub fn of(cfg: &Config, vm: &VmName, l: &LeaseFacts) -> LeaseView {
        LeaseView {
            vm: vm.clone(),
            pool: cfg.pool_of(vm).cloned(),
            uid: l.owner,
            user: user_name(l.owner),
            worktree: show(&l.worktree),
            since: l.since,
            since_utc: utc(l.since),
            worktree_gone: l.gone,
        }
    }

    /// `a1 (pool agents) leased by alice for /home/alice/wt1 since 2026-01-05 12:00:03 UTC`.
    pub fn words(&self) -> String {
        let pool = match &self.pool {
            Some(p) => format!(" (pool {p})"),
            None => String::new(),
        };
        let gone = match self.worktree_gone {
            true => "; its worktree is gone",
            false => "",
        };
        format!(
            "{}{pool} leased by {} for {} since {}{gone}",
            self.vm, self.user, self.worktree, self.since_utc
        )
    }
}

/// What a lease call says of its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseReport {
    #[serde(flatten)]
    pub lease: LeaseView,
    /// Recorded by this call (else the worktree's own lease, found again).
    pub new: bool,
}

impl LeaseReport {
    pub fn line(&self, dry_run: bool) -> String {
        let l = &self.lease;
        let pool = l.pool.as_ref().map(|p| p.as_str()).unwrap_or("?");
        match (self.new, dry_run) {
            (true, false) => format!("leased {} from pool {pool} for {}", l.vm, l.worktree),
            (true, true) => format!("would lease {} from pool {pool} for {}", l.vm, l.worktree),
            (false, _) => format!(
                "{} is leased for {} already (pool {pool}, since {})",
                l.vm, l.worktree, l.since_utc
            ),
        }
    }
}

/// A lease this run ended, and why when it is not its holder's (or root's) `release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleasedLease {
    #[serde(flatten)]
    pub lease: LeaseView,
    pub why: Option<String>,
}

impl ReleasedLease {
    pub fn line(&self, dry_run: bool) -> String {
        let l = &self.lease;
        let why = match &self.why {
            Some(why) => format!(": {why}"),
            None => String::new(),
        };
        format!(
            "{} the lease of {} ({} for {}, since {}){why}",
            if dry_run { "would end" } else { "released" },
            l.vm,
            l.user,
            l.worktree,
            l.since_utc,
        )
    }
}

/// The leases `owner` holds for `worktree` (an inside path), in VM order.
pub fn own_leases(
    tree: &Tree,
    cfg: &Config,
    owner: u32,
    worktree: &Path,
) -> Result<Vec<(VmName, Lease)>> {
    let Some(ws) = Workspace::find(tree, cfg)? else {
        return Ok(Vec::new());
    };
    Ok(ws
        .all_leases()?
        .into_iter()
        .filter(|(_, l)| l.owner == owner && l.worktree == worktree)
        .collect())
}

/// The VM `owner` leases from `pool` for `worktree`, if any (read-only: `shell` asks it with
/// the caller's rights to skip sudo).
pub fn own_lease_in(
    tree: &Tree,
    cfg: &Config,
    pool: &PoolName,
    owner: u32,
    worktree: &Path,
) -> Option<VmName> {
    let vms = cfg.pools.get(pool)?;
    own_leases(tree, cfg, owner, worktree)
        .ok()?
        .into_iter()
        .map(|(vm, _)| vm)
        .find(|vm| vms.contains(vm))
}

/// The VMs of `pool`, or the one-line refusal of an unknown pool naming the known ones.
pub fn vms_of<'c>(cfg: &'c Config, pool: &PoolName) -> Result<&'c [VmName]> {
    match cfg.pools.get(pool) {
        Some(vms) => Ok(vms),
        None if cfg.pools.is_empty() => bail!(
            "there is no pool {pool}: the config declares no pools (pools.<pool> in config.json; NixOS: services.microvm-workspaces.pools)"
        ),
        None => bail!(
            "there is no pool {pool}; the config's pools: {}",
            cfg.pools
                .keys()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Every VM of `pool` has, among the shares it will run with (microvm.nix's runner and the
/// config, `runner::shares`), the live share of its own entry: else a lease could not switch
/// it without a restart. The config says so when it is read; a runner can still differ.
pub fn check_live_shares(tree: &Tree, cfg: &Config, pool: &PoolName) -> Result<()> {
    for vm in vms_of(cfg, pool)? {
        let want = cfg.live_workspace(vm);
        let shares = runner::shares(tree, cfg, vm)?;
        if !shares.iter().any(|s| s.path == want) {
            bail!(
                "pool {pool}: VM {vm} has no live workspace share: none of its shares has the source {} (its runner overrides the config?)",
                show(&want)
            );
        }
    }
    Ok(())
}

/// One pool in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub pool: PoolName,
    pub vms: Vec<PoolVm>,
}

/// One VM of a pool in `status`, and its lease.
#[derive(Debug, Clone, Serialize)]
pub struct PoolVm {
    pub vm: VmName,
    pub lease: Option<LeaseView>,
}

/// Every pool with each VM's lease (only the pool of `only`, and only that VM, when given).
/// Leases of VMs in no pool any more are [`stray_leases`].
pub fn collect(tree: &Tree, cfg: &Config, only: Option<&VmName>) -> Result<Vec<PoolStatus>> {
    let ws = Workspace::find(tree, cfg)?;
    let leases = match &ws {
        Some(ws) => ws.all_leases()?,
        None => Vec::new(),
    };
    let view = |vm: &VmName| {
        let (ws, l) = (ws.as_ref()?, leases.iter().find(|(v, _)| v == vm)?);
        Some(LeaseView::of(cfg, vm, &ws.lease_facts(&l.1)))
    };
    Ok(cfg
        .pools
        .iter()
        .filter(|(_, vms)| only.is_none_or(|o| vms.contains(o)))
        .map(|(pool, vms)| PoolStatus {
            pool: pool.clone(),
            vms: vms
                .iter()
                .filter(|vm| only.is_none_or(|o| o == *vm))
                .map(|vm| PoolVm {
                    vm: vm.clone(),
                    lease: view(vm),
                })
                .collect(),
        })
        .collect())
}

/// Leases of VMs that are in no pool (the config changed since they were taken).
pub fn stray_leases(tree: &Tree, cfg: &Config) -> Result<Vec<LeaseView>> {
    let Some(ws) = Workspace::find(tree, cfg)? else {
        return Ok(Vec::new());
    };
    Ok(ws
        .all_leases()?
        .into_iter()
        .filter(|(vm, _)| cfg.pool_of(vm).is_none())
        .map(|(vm, l)| LeaseView::of(cfg, &vm, &ws.lease_facts(&l)))
        .collect())
}

/// The pools for people: `POOL  VM  LEASE`, one row per VM.
pub fn table(pools: &[PoolStatus], stray: &[LeaseView]) -> String {
    let mut rows = vec![["POOL".to_string(), "VM".into(), "LEASE".into()]];
    for p in pools {
        for (i, v) in p.vms.iter().enumerate() {
            let lease = match &v.lease {
                None => "free".to_string(),
                Some(l) => {
                    let gone = if l.worktree_gone {
                        " (worktree gone)"
                    } else {
                        ""
                    };
                    format!("{} for {} since {}{gone}", l.user, l.worktree, l.since_utc)
                }
            };
            let pool = if i == 0 {
                p.pool.to_string()
            } else {
                String::new()
            };
            rows.push([pool, v.vm.to_string(), lease]);
        }
    }
    let w0 = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r[1].chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        out.push_str(format!("{:<w0$}  {:<w1$}  {}", r[0], r[1], r[2]).trim_end());
        out.push('\n');
    }
    for l in stray {
        out.push_str(&format!("{}, in no pool now\n", l.words()));
    }
    out
}

/// `2026-01-05 12:00:03 UTC` for unix seconds (the proleptic Gregorian calendar, as `date -u`).
pub fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_is_what_date_prints() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
        assert_eq!(utc(-1), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn the_pools_table_says_who_holds_what() {
        let vm = |n: &str| VmName::try_from(n).unwrap();
        let pools = [PoolStatus {
            pool: PoolName::try_from("agents").unwrap(),
            vms: vec![
                PoolVm {
                    vm: vm("a1"),
                    lease: Some(LeaseView {
                        vm: vm("a1"),
                        pool: Some(PoolName::try_from("agents").unwrap()),
                        uid: 4242,
                        user: "uid 4242".into(),
                        worktree: "/home/alice/wt1".into(),
                        since: 1_700_000_000,
                        since_utc: utc(1_700_000_000),
                        worktree_gone: true,
                    }),
                },
                PoolVm {
                    vm: vm("a2"),
                    lease: None,
                },
            ],
        }];
        assert_eq!(
            table(&pools, &[]),
            "POOL    VM  LEASE\n\
             agents  a1  uid 4242 for /home/alice/wt1 since 2023-11-14 22:13:20 UTC (worktree gone)\n\
             \x20       a2  free\n"
        );
    }
}
