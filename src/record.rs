//! The runtime record `/run/microvm-workspaces/<vm>.json`: what each share's source resolved
//! to when the VM last started (docs/design.md#runtime-record).
//!
//! Only prepare writes it; microvm-link, when it ensures other VMs' sources, leaves their
//! records alone or their staleness would be hidden.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode;

use crate::chase::{self, Tree, Trust, Walk};
use crate::config::Config;
use crate::dirs;
use crate::failpoint::step;
use crate::paths::{self, show, tmp_name};
use crate::prepare::{Kind, Prepared};
use crate::shows::{self, Shows};

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
    /// What it showed, in words' terms (docs/design.md#status). Absent in records written
    /// before it existed: they still read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shows: Option<Shows>,
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
                    shows: None,
                })
                .collect(),
        }
    }

    /// The record of this start, with what each share showed (a placeholder, whose repo, a
    /// directory): what `status` later says the VM started on.
    pub fn observed(tree: &Tree, cfg: &Config, vm: &str, prepared: &[Prepared]) -> VmRecord {
        let mut rec = VmRecord::new(vm, prepared);
        for (s, p) in rec.shares.iter_mut().zip(prepared) {
            s.shows = Some(shows::at_start(tree, cfg, p));
        }
        rec
    }
}

pub fn record_path(vm: &str) -> PathBuf {
    Path::new(paths::RUNTIME_DIR).join(format!("{vm}.json"))
}

/// Writes the record atomically: a new file under a temporary name in the runtime dir (a
/// trusted place), then renamed over the old record, all through the directory's descriptor.
pub fn write(tree: &Tree, rec: &VmRecord) -> Result<()> {
    let dir = dirs::ensure_root_dir(tree, Path::new(paths::RUNTIME_DIR))?;
    let path = record_path(&rec.vm);
    dirs::remove_dead_tmp_files(&dir);
    let tmp = tmp_name();
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
    step("write the runtime record");
    Ok(())
}

/// The record of `vm`, if there is one; only a root-owned file is believed.
pub fn read(tree: &Tree, vm: &str) -> Result<Option<VmRecord>> {
    let path = record_path(vm);
    match chase::read_trusted(tree, None, &path, 16 << 20)? {
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
    let mut vms: Vec<String> = chase::list_dir(&dir)
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
