//! The runtime record `/run/microvm-workspaces/<vm>.json`: what each share's source resolved
//! to when systemd last started the VM, and staleness (what it resolves to now differs).
//!
//! Only the prepare that systemd runs for a start writes it; microvm-link, when it ensures
//! other VMs' sources, leaves their records alone or their staleness would be hidden.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode;

use crate::fsafe::{self, Tree, Trust, Walk};
use crate::paths::{self, show, Root};
use crate::prepare::{Kind, Prepared};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VmRecord {
    pub vm: String,
    /// Seconds since the epoch when prepare ran.
    pub prepared_at: u64,
    pub shares: Vec<ShareRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShareRecord {
    pub tag: String,
    pub source: String,
    /// The absolute source path prepare worked on.
    pub path: String,
    /// Where it resolved (symlinks followed).
    pub resolved: String,
    pub device: u64,
    pub inode: u64,
    pub kind: Kind,
}

impl VmRecord {
    pub fn new(vm: &str, prepared: &[Prepared]) -> VmRecord {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        VmRecord {
            vm: vm.to_string(),
            prepared_at: now,
            shares: prepared
                .iter()
                .map(|p| ShareRecord {
                    tag: p.share.tag.clone(),
                    source: p.share.source.clone(),
                    // The path is read back to compute staleness, so it is stored as is
                    // (sources are UTF-8, checked when read); `resolved` is for people.
                    path: p.share.path.to_string_lossy().into_owned(),
                    resolved: show(&p.resolved),
                    device: p.dev,
                    inode: p.ino,
                    kind: p.kind,
                })
                .collect(),
        }
    }
}

fn record_path(vm: &str) -> PathBuf {
    Path::new(paths::RUNTIME_DIR).join(format!("{vm}.json"))
}

/// Writes the record atomically: a new file under a temporary name in the runtime dir (a
/// trusted place), then renamed over the old record, all through the directory's descriptor.
pub fn write(tree: &Tree, rec: &VmRecord) -> Result<()> {
    let dir = fsafe::ensure_root_dir(tree, Path::new(paths::RUNTIME_DIR))?;
    let path = record_path(&rec.vm);
    fsafe::remove_dead_tmp_files(&dir);
    let tmp = fsafe::tmp_name();
    // World-readable like the rest of /run: `microvm-link status` runs as a normal user too.
    let fd = openat(
        &dir.fd,
        &*tmp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .with_context(|| format!("cannot write in {}", show(&dir.path)))?;
    let mut text = serde_json::to_vec_pretty(rec)?;
    text.push(b'\n');
    // One write: serde_json emits token by token (this was about 80 system calls per share).
    let written = std::fs::File::from(fd)
        .write_all(&text)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            Ok(renameat(
                &dir.fd,
                &*tmp,
                &dir.fd,
                Path::new(path.file_name().expect("a file name")),
            )?)
        });
    if let Err(e) = written {
        let _ = nix::unistd::unlinkat(&dir.fd, &*tmp, nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(e).with_context(|| format!("cannot write {}", show(&path)));
    }
    fsafe::step("write the runtime record");
    Ok(())
}

/// The record of `vm`, if there is one; only a root-owned file is believed.
pub fn read(tree: &Tree, vm: &str) -> Result<Option<VmRecord>> {
    let path = record_path(vm);
    match fsafe::read_trusted(tree, None, &path, 16 << 20)? {
        Some(t) => serde_json::from_slice(&t)
            .map(Some)
            .with_context(|| format!("runtime record {}", show(&path))),
        None => Ok(None),
    }
}

/// VMs that have a runtime record.
pub fn recorded_vms(tree: &Tree) -> Vec<String> {
    let dir = match tree.walk(Path::new(paths::RUNTIME_DIR), Trust::RootOwned) {
        Ok(Walk::Found(n)) if n.is_dir() => n,
        _ => return Vec::new(),
    };
    let mut vms: Vec<String> = fsafe::list_dir(&dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| {
            n.into_string()
                .ok()?
                .strip_suffix(".json")
                .map(str::to_string)
        })
        .filter(|vm| paths::check_name("VM", vm).is_ok())
        .collect();
    vms.sort();
    vms
}

/// A share's identity now: `None` if its source does not resolve to a directory.
pub fn current_id(tree: &Tree, path: &Path) -> Option<(u64, u64)> {
    match tree.walk(path, Trust::All) {
        Ok(Walk::Found(n)) if n.is_dir() => Some(n.id()),
        _ => None,
    }
}

/// Is this share stale: does its source no longer resolve to what it did at the VM's start?
pub fn is_stale(tree: &Tree, s: &ShareRecord) -> bool {
    current_id(tree, Path::new(&s.path)) != Some((s.device, s.inode))
}

/// One share in `microvm-link status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShareStatus {
    pub tag: String,
    pub source: String,
    pub path: String,
    /// What it was at the VM's last start (from the runtime record), if recorded.
    pub kind: Option<Kind>,
    pub at_start: Option<Ident>,
    pub now: Option<Ident>,
    /// Recorded at start and resolving to something else now.
    pub stale: bool,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Ident {
    pub device: u64,
    pub inode: u64,
}

/// One VM in `microvm-link status`.
#[derive(Debug, Clone, Serialize)]
pub struct VmStatus {
    pub vm: String,
    /// `microvm@<vm>` active; `null` when systemd cannot be asked (re-rooted, no systemd).
    pub running: Option<bool>,
    pub workspace: crate::link::EntryView,
    pub shares: Vec<ShareStatus>,
    pub stale: bool,
}

/// The status of `vm`: its workspace entry, and each share at start vs now.
pub fn status_of(
    tree: &Tree,
    cfg: &crate::config::Config,
    root: &Root,
    vm: &str,
) -> anyhow::Result<VmStatus> {
    let running = if root.is_rerooted() {
        None
    } else {
        crate::systemd::is_active(&crate::units::unit_name("microvm@", vm))
    };
    let mut workspace = crate::link::view_entry(tree, &cfg.workspace_dir, vm)?;
    // One unreadable record must not take status (or a link's stale list) down with it.
    let record = read(tree, vm).unwrap_or_else(|e| {
        tracing::warn!(vm, "ignoring it: {}", crate::logging::one_line(&e));
        None
    });
    let mut shares: Vec<ShareStatus> = Vec::new();
    let current = crate::runner::shares(tree, cfg, vm).unwrap_or_default();
    let recorded = record
        .as_ref()
        .map(|r| r.shares.clone())
        .unwrap_or_default();
    for s in &current {
        let path = s.path.to_string_lossy().into_owned();
        let rec = recorded.iter().find(|r| r.tag == s.tag);
        shares.push(share_status(
            tree,
            s.tag.clone(),
            s.source.clone(),
            path,
            rec,
        ));
    }
    // Tags recorded at start but gone from the runner since (a rebuilt VM not restarted).
    for r in recorded
        .iter()
        .filter(|r| !current.iter().any(|s| s.tag == r.tag))
    {
        shares.push(share_status(
            tree,
            r.tag.clone(),
            r.source.clone(),
            r.path.clone(),
            Some(r),
        ));
    }
    // A VM that shares nothing through `<workspaceDir>/<vm>` (it mounts another VM's, say)
    // has no workspace of its own: "none", not "missing", which would read as a fault.
    let own = cfg.workspace_dir.join(vm);
    if workspace.state == "missing"
        && workspace.target.is_none()
        && !current.iter().any(|s| s.path.starts_with(&own))
    {
        workspace.state = "none";
    }
    let stale = shares.iter().any(|s| s.stale);
    Ok(VmStatus {
        vm: vm.to_string(),
        running,
        workspace,
        shares,
        stale,
    })
}

fn share_status(
    tree: &Tree,
    tag: String,
    source: String,
    path: String,
    rec: Option<&ShareRecord>,
) -> ShareStatus {
    let now = current_id(tree, Path::new(&path)).map(|(device, inode)| Ident { device, inode });
    let at_start = rec.map(|r| Ident {
        device: r.device,
        inode: r.inode,
    });
    ShareStatus {
        tag,
        source,
        path,
        kind: rec.map(|r| r.kind),
        stale: at_start.is_some() && at_start != now,
        at_start,
        now,
    }
}
