//! Where a VM's share sources come from (docs/reference/config.md#share-sources): microvm.nix's runner, for every
//! VM declarative or imperative, and the config file, which alone knows 9p shares. The union is
//! taken by tag; the runner wins, since it is what will run.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, SFlag};

use crate::fs::chase::{self, Node, Tree, Trust, Walk};
use crate::fs::paths::{self, show};
use crate::model::config::{check_source, Config, Proto};
use crate::model::names::VmName;

/// One share of a VM, its source resolved to an absolute, normalized inside path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub tag: String,
    pub proto: Proto,
    /// The source exactly as the user wrote it.
    pub source: String,
    /// Absolute inside path: relative sources are taken against `<stateDir>/<vm>`.
    pub path: PathBuf,
    pub read_only: bool,
}

/// Where a runner records its virtiofs shares, below `current`.
const VIRTIOFS: &str = "share/microvm/virtiofs";

/// Does a runner exist for `vm`?
pub fn has_runner(tree: &Tree, cfg: &Config, vm: &str) -> bool {
    let current = cfg.state_dir.join(vm).join("current");
    matches!(tree.walk(&current, Trust::All), Ok(Walk::Found(n)) if n.is_dir())
}

/// VMs that have a runner in the state dir or an entry in the config, sorted.
pub fn known_vms(tree: &Tree, cfg: &Config) -> Vec<VmName> {
    let mut vms: Vec<VmName> = candidates(tree, cfg)
        .into_iter()
        .filter(|vm| cfg.vms.contains_key(vm) || has_runner(tree, cfg, vm))
        .collect();
    vms.dedup();
    vms
}

/// The config's VMs and every valid name in the state dir (a runner or not), sorted: for
/// a caller that reads each one's shares anyway ([`shares`] finds no runner as none), so
/// that no runner is looked at twice.
pub fn candidates(tree: &Tree, cfg: &Config) -> Vec<VmName> {
    let mut vms: Vec<VmName> = cfg.vm_names().collect();
    if let Ok(Walk::Found(dir)) = tree.walk(&cfg.state_dir, Trust::All) {
        for name in chase::list_dir(&dir).unwrap_or_default() {
            if let Some(Ok(vm)) = name.to_str().map(VmName::try_from) {
                vms.push(vm);
            }
        }
    }
    vms.sort();
    vms.dedup();
    vms
}

/// Reads `<tag>/source` below the runner's virtiofs directory `dir` (which was checked to be
/// root's): one `openat2` when no symlink lies on the way (a runner as Nix builds it), else
/// the careful walk. Either way only a regular, root-owned file is believed; `O_NONBLOCK` so
/// that a FIFO cannot stall the open before that check.
fn read_source(tree: &Tree, dir: &Node, tag: &OsStr) -> Result<Vec<u8>> {
    use nix::fcntl::{openat2, OpenHow, ResolveFlag};
    let rel = Path::new(tag).join("source");
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let fast = openat2(&dir.fd, &rel, how)
        .ok()
        .and_then(|fd| match fstat(&fd) {
            Ok(st)
                if st.st_uid == 0 && st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits() =>
            {
                Some((fd, st))
            }
            _ => None,
        });
    let mut text = match fast {
        Some((fd, st)) => chase::read_sized(fd, &st, 64 * 1024)
            .with_context(|| format!("cannot read {}", show(&dir.path.join(&rel))))?,
        None => chase::read_trusted(tree, Some(dir), &rel, 64 * 1024)?
            .with_context(|| format!("{} does not exist", show(&dir.path.join(&rel))))?,
    };
    if text.last() == Some(&b'\n') {
        text.pop();
    }
    Ok(text)
}

/// The runner's virtiofs directory and its names, when it is as Nix builds it: no symlink on
/// the way and every step root's (checked as [`Trust::RootOwned`] checks them). One
/// `openat2` for reading and a stat per step instead of a careful walk and a second open to
/// list it: a link reads every VM's runner. `None`: anything else, left to the careful walk.
fn virtiofs_fast(runner: &Node, dir: &Path) -> Option<(Node, Vec<std::ffi::OsString>)> {
    use nix::fcntl::{openat2, AtFlags, OpenHow, ResolveFlag};
    use nix::sys::stat::fstatat;
    chase::root_owned(&runner.path, &runner.st).ok()?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let fd = openat2(&runner.fd, VIRTIOFS, how).ok()?;
    let st = fstat(&fd).ok()?;
    chase::root_owned(dir, &st).ok()?;
    // The steps between: root's too (nobody else could have swapped them since).
    let mut step = PathBuf::new();
    for c in Path::new(VIRTIOFS).parent()?.components() {
        step.push(c);
        let s = fstatat(&runner.fd, &step, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
        chase::root_owned(&runner.path.join(&step), &s).ok()?;
    }
    // Listed on the very descriptor (its offset is of no further use: the sources are
    // opened relative to it).
    let names = chase::names_of(std::os::fd::AsFd::as_fd(&fd)).ok()?;
    Some((
        Node {
            fd,
            st,
            path: dir.to_path_buf(),
        },
        names,
    ))
}

/// The virtiofs shares microvm.nix recorded in the VM's runner (none if it has no runner).
pub fn runner_shares(tree: &Tree, cfg: &Config, vm: &str) -> Result<Vec<Share>> {
    // `<stateDir>/<vm>` and its `current` link belong to microvm.nix's user, so `current` may
    // lead anywhere; what it leads to decides what root creates, so it must be root's (the
    // Nix store's), and so must everything read below it.
    let current = cfg.state_dir.join(vm).join("current");
    let runner = match tree.walk(&current, Trust::All) {
        Ok(Walk::Found(n)) if n.is_dir() => n,
        _ => return Ok(Vec::new()),
    };
    let dir = current.join(VIRTIOFS);
    let (node, names) = match virtiofs_fast(&runner, &dir) {
        Some(found) => found,
        None => {
            let node = match tree.walk_from(&runner, Path::new(VIRTIOFS), Trust::RootOwned) {
                Ok(Walk::Found(n)) if n.is_dir() => n,
                Ok(_) => return Ok(Vec::new()),
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "runner {} is not root's; refusing to take share sources from it",
                            show(&dir)
                        )
                    })
                }
            };
            let names = chase::list_dir(&node)?;
            (node, names)
        }
    };
    let mut tags: Vec<Vec<u8>> = names.into_iter().map(|n| n.into_vec()).collect();
    tags.sort();
    let mut shares = Vec::new();
    for tag in tags {
        let file = dir.join(OsStr::from_bytes(&tag)).join("source");
        let raw = read_source(tree, &node, OsStr::from_bytes(&tag))?;
        let tag = String::from_utf8(tag).map_err(|e| {
            anyhow!(
                "runner tag {} is not valid UTF-8",
                show(&dir.join(OsStr::from_bytes(e.as_bytes())))
            )
        })?;
        let source = String::from_utf8(raw).map_err(|e| {
            anyhow!(
                "{}: source {} is not valid UTF-8",
                show(&file),
                show(Path::new(OsStr::from_bytes(e.as_bytes())))
            )
        })?;
        check_source(&source).with_context(|| show(&file))?;
        shares.push(make_share(cfg, vm, tag, Proto::Virtiofs, source, false));
    }
    Ok(shares)
}

fn make_share(
    cfg: &Config,
    vm: &str,
    tag: String,
    proto: Proto,
    source: String,
    read_only: bool,
) -> Share {
    let path = paths::normalize(&cfg.state_dir.join(vm).join(&source));
    Share {
        tag,
        proto,
        source,
        path,
        read_only,
    }
}

/// Every share of `vm`: the runner's and the config's, by tag, the runner winning. Sorted so
/// that parents come before children.
pub fn shares(tree: &Tree, cfg: &Config, vm: &str) -> Result<Vec<Share>> {
    let mut by_tag: BTreeMap<String, Share> = BTreeMap::new();
    if let Some(v) = cfg.vms.get(vm) {
        for s in &v.shares {
            let share = make_share(
                cfg,
                vm,
                s.tag.clone(),
                s.proto,
                s.source.clone(),
                s.read_only,
            );
            by_tag.insert(s.tag.clone(), share);
        }
    }
    for mut s in runner_shares(tree, cfg, vm)? {
        if let Some(c) = by_tag.get(&s.tag) {
            s.read_only = c.read_only;
        }
        by_tag.insert(s.tag.clone(), s);
    }
    let mut out: Vec<Share> = by_tag.into_values().collect();
    out.sort_by_key(|s| s.path.components().count());
    Ok(out)
}

/// Is `vm` known (a runner or a config entry)? Otherwise the error lists the known VMs.
pub fn check_known(tree: &Tree, cfg: &Config, vm: &VmName) -> Result<()> {
    if cfg.vm(vm).is_some() || has_runner(tree, cfg, vm) {
        return Ok(());
    }
    let known = known_vms(tree, cfg);
    let list = if known.is_empty() {
        "none".to_string()
    } else {
        known
            .iter()
            .map(VmName::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    bail!(
        "unknown VM {vm:?}: no runner at {} and no entry in the config (known VMs: {list})",
        show(&cfg.state_dir.join(vm).join("current"))
    )
}
