//! How each workspace entry's guests see a linked repo (docs/security.md#idmap): from the
//! config, which VMs share it and with which mapping and git view; the checks a repo must
//! pass to be mounted for them.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::path::Path;

use anyhow::{bail, Result};

use crate::fs::chase::Node;
use crate::fs::idmap::Ids;
use crate::fs::paths::{self, show};
use crate::model::config::{self, user_label, Config, Seen};
use crate::model::names::VmName;
use crate::model::workspace::entry_name_of;

/// How each entry's guests are to see a linked repo, from the config.
pub struct Guests {
    /// Entry name -> the VMs whose configured shares pass through it, and how each one's
    /// guest is to see a linked repo (docs/security.md#idmap).
    by_entry: BTreeMap<OsString, Vec<(VmName, Seen)>>,
    /// Entry name -> a VM sharing it over 9p (qemu's own server: see `check_mappable`).
    nine_p: BTreeMap<OsString, VmName>,
    /// Entries a configured share has as its source itself (not a live root, not below it).
    pinned_roots: BTreeSet<OsString>,
}

impl Guests {
    pub fn of(cfg: &Config) -> Guests {
        Guests {
            by_entry: guests_by_entry(cfg),
            nine_p: nine_p_by_entry(cfg),
            pinned_roots: pinned_roots(cfg),
        }
    }

    /// Does a guest see entry `name`'s own root through a pinned share (so that its view of a
    /// repo whose `.git` is a file needs room in the repo: docs/security.md#git-file)? Yes
    /// when a configured share's source is the entry, and when the config names no share
    /// through it at all (a VM only a runner knows); no when every configured share through
    /// it is live or below its root (a pool's).
    pub fn pinned_root(&self, name: &OsStr) -> bool {
        !self.by_entry.contains_key(name) || self.pinned_roots.contains(name)
    }

    /// How the guests of entry `name` see a linked repo: the one mapping every VM sharing it
    /// asks for (the default when none is configured); VMs that disagree are an error naming
    /// two of them, since one mount cannot show a repo two ways.
    pub fn guest_of(&self, name: &OsStr) -> Result<Seen> {
        let Some(list) = self.by_entry.get(name) else {
            return Ok(Seen::default());
        };
        let (vm, g) = &list[0];
        if let Some((other, h)) = list.iter().find(|(_, h)| h != g) {
            bail!(
                "VMs {vm} ({g}) and {other} ({h}) share entry {}: one mount cannot show it both ways; make their guestUid, idmap and git agree",
                paths::show_bytes(name)
            );
        }
        Ok(*g)
    }

    /// The ids a mount of `repo` for entry `name` gets.
    pub fn ids_for(&self, name: &OsStr, repo: &Node) -> Result<Ids> {
        self.guest_of(name)?.ids.ids_for(repo)
    }

    /// A repo the guests of entry `name` could not work in through its mount is refused at
    /// link time, saying why: a repo of root's (never mapped), or one whose group is not the
    /// owner's primary group (the only group that maps: the guest could create nothing).
    pub(crate) fn check_mappable(&self, name: &OsStr, repo: &Node) -> Result<()> {
        let ids = self.ids_for(name, repo)?;
        if let (Ids::Mapped(_), Some(vm)) = (&ids, self.nine_p.get(name)) {
            bail!(
                "VM {vm} shares entry {} over 9p: qemu's 9p server writes as the hypervisor user, whom an idmapped link does not map, so the guest could write nothing; share it over virtiofs, or set idmap = false for {vm}",
                paths::show_bytes(name)
            );
        }
        if let Ids::Mapped(m) = ids {
            if repo.st.st_gid != m.host_gid {
                bail!(
                    "{} belongs to group {}, not to {}'s primary group {}: through the idmapped mount the guest could create nothing in it; chgrp -R {} it, or set idmap = false for the VM",
                    show(&repo.path),
                    repo.st.st_gid,
                    user_label(m.host_uid),
                    m.host_gid,
                    m.host_gid
                );
            }
        }
        Ok(())
    }
}

/// Which entries a configured 9p share passes through, and the VM of one.
fn nine_p_by_entry(cfg: &Config) -> BTreeMap<OsString, VmName> {
    let mut out = BTreeMap::new();
    for (vm, v) in &cfg.vms {
        for s in v.shares.iter().filter(|s| s.proto == config::Proto::NineP) {
            if let Some(name) = entry_name_of(&cfg.workspace_dir, Path::new(&s.source)) {
                out.entry(name).or_insert_with(|| vm.clone());
            }
        }
    }
    out
}

/// Entries some configured share has as its source.
fn pinned_roots(cfg: &Config) -> BTreeSet<OsString> {
    let mut out = BTreeSet::new();
    for (vm, v) in &cfg.vms {
        for s in &v.shares {
            let path = paths::normalize(&cfg.state_dir.join(vm).join(&s.source));
            if let Ok(rest) = path.strip_prefix(&cfg.workspace_dir) {
                let mut c = rest.components();
                if let (Some(std::path::Component::Normal(n)), None) = (c.next(), c.next()) {
                    out.insert(n.to_os_string());
                }
            }
        }
    }
    out
}

/// Which configured VM shares pass through which entry, with each VM's guest mapping.
fn guests_by_entry(cfg: &Config) -> BTreeMap<OsString, Vec<(VmName, Seen)>> {
    let mut out: BTreeMap<OsString, Vec<(VmName, Seen)>> = BTreeMap::new();
    for (vm, v) in &cfg.vms {
        for s in &v.shares {
            if let Some(name) = entry_name_of(&cfg.workspace_dir, Path::new(&s.source)) {
                let list = out.entry(name).or_default();
                if !list.iter().any(|(n, _)| n == vm) {
                    list.push((vm.clone(), v.seen()));
                }
            }
        }
    }
    out
}
