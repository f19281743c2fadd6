//! Where a VM's share sources come from (DESIGN.md section 3): microvm.nix's runner, for every
//! VM declarative or imperative, and the config file, which alone knows 9p shares. The union is
//! taken by tag; the runner wins, since it is what will run.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

use crate::config::{check_source, Config, Proto};
use crate::fsafe::{Node, Tree, Trust, Walk};
use crate::paths::{self, show};

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

/// `<stateDir>/<vm>/current/share/microvm/virtiofs`.
fn virtiofs_dir(cfg: &Config, vm: &str) -> PathBuf {
    cfg.state_dir
        .join(vm)
        .join("current/share/microvm/virtiofs")
}

/// Does a runner exist for `vm`?
pub fn has_runner(tree: &Tree, cfg: &Config, vm: &str) -> bool {
    let current = cfg.state_dir.join(vm).join("current");
    matches!(tree.walk(&current, Trust::All), Ok(Walk::Found(n)) if n.is_dir())
}

/// VMs that have a runner in the state dir or an entry in the config, sorted.
pub fn known_vms(tree: &Tree, cfg: &Config) -> Vec<String> {
    let mut vms: Vec<String> = cfg.vms.keys().cloned().collect();
    if let Ok(entries) = std::fs::read_dir(
        tree.real_root
            .join(cfg.state_dir.strip_prefix("/").unwrap_or(&cfg.state_dir)),
    ) {
        for e in entries.flatten() {
            if let Some(name) = e.file_name().to_str() {
                if paths::check_name("VM", name).is_ok() && has_runner(tree, cfg, name) {
                    vms.push(name.to_string());
                }
            }
        }
    }
    vms.sort();
    vms.dedup();
    vms
}

/// Reads one runner file inside the root: its text with one trailing newline removed.
fn read_runner_file(tree: &Tree, path: &Path) -> Result<Vec<u8>> {
    let node = match tree.walk(path, Trust::All)? {
        Walk::Found(n) => n,
        Walk::Missing { .. } => bail!("{} does not exist", show(path)),
    };
    let fd = openat(
        nix::fcntl::AT_FDCWD,
        &node.proc_path(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", show(path)))?;
    read_text(fd, path)
}

/// Reads `<tag>/source` below the runner's virtiofs directory `dir` (at inside path `path`):
/// one `openat2` when no symlink lies on the way (a runner as Nix builds it), else the careful
/// walk from the root (which resolves symlinks inside the root). The walk per share was about
/// 35 system calls.
fn read_source(tree: &Tree, dir: &Node, tag: &OsStr, path: &Path) -> Result<Vec<u8>> {
    use nix::fcntl::{openat2, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    match openat2(&dir.fd, &Path::new(tag).join("source"), how) {
        Ok(fd) => read_text(fd, path),
        Err(_) => read_runner_file(tree, path),
    }
}

fn read_text(fd: std::os::fd::OwnedFd, path: &Path) -> Result<Vec<u8>> {
    // Room up front spares read_to_end its small probe read: one read, then end of file.
    let mut text = Vec::with_capacity(4096);
    std::fs::File::from(fd)
        .take(64 * 1024)
        .read_to_end(&mut text)
        .with_context(|| format!("cannot read {}", show(path)))?;
    if text.last() == Some(&b'\n') {
        text.pop();
    }
    Ok(text)
}

/// The virtiofs shares microvm.nix recorded in the VM's runner (none if it has no runner).
pub fn runner_shares(tree: &Tree, cfg: &Config, vm: &str) -> Result<Vec<Share>> {
    let dir = virtiofs_dir(cfg, vm);
    let node = match tree.walk(&dir, Trust::All) {
        Ok(Walk::Found(n)) if n.is_dir() => n,
        _ => return Ok(Vec::new()),
    };
    // The runner decides what root creates; whoever owns `<stateDir>/<vm>` can point
    // `current` anywhere, so only a root-owned runner (the Nix store's) is believed.
    if node.uid() != 0 {
        bail!(
            "runner {} is owned by uid {}, not root; refusing to take share sources from it",
            show(&dir),
            node.uid()
        );
    }
    let fd = openat(
        nix::fcntl::AT_FDCWD,
        &node.proc_path(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", show(&dir)))?;
    let mut tags: Vec<Vec<u8>> = nix::dir::Dir::from_fd(fd)
        .with_context(|| format!("cannot read {}", show(&dir)))?
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect();
    tags.sort();
    let mut shares = Vec::new();
    for tag in tags {
        let file = dir.join(OsStr::from_bytes(&tag)).join("source");
        let tag = String::from_utf8(tag).map_err(|e| {
            anyhow!(
                "runner tag {} is not valid UTF-8",
                show(&dir.join(OsStr::from_bytes(e.as_bytes())))
            )
        })?;
        let raw = read_source(tree, &node, OsStr::new(&tag), &file)?;
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
pub fn check_known(tree: &Tree, cfg: &Config, vm: &str) -> Result<()> {
    if cfg.vms.contains_key(vm) || has_runner(tree, cfg, vm) {
        return Ok(());
    }
    let known = known_vms(tree, cfg);
    let list = if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    };
    bail!(
        "unknown VM {vm:?}: no runner at {} and no entry in the config (known VMs: {list})",
        show(&cfg.state_dir.join(vm).join("current"))
    )
}
