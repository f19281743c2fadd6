//! Where things live, and the `MICROVM_WORKSPACES_ROOT` re-rooting.
//!
//! Every path the project reads or writes is kept as it would be on the host ("inside" path,
//! absolute) and turned into a real path only at the moment of I/O, through [`Root`]. Under a
//! root, symlink targets and repo paths are inside paths too (like `systemd-tmpfiles --root`),
//! which is why path resolution goes through [`crate::fs::chase`] rather than the kernel alone.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const ROOT_ENV: &str = "MICROVM_WORKSPACES_ROOT";
pub const CONFIG_FILE: &str = "/etc/microvm-workspaces/config.json";
pub const STATE_DIR: &str = "/var/lib/microvms";
pub const WORKSPACE_DIR: &str = "/var/lib/microvm-workspaces";
pub const RUNTIME_DIR: &str = "/run/microvm-workspaces";
/// Inside the workspace dir: link records, displaced user directories, and the lock.
pub const LINKS: &str = ".links";
/// Inside the workspace dir: the leases of pool VMs, beside the link records.
pub const LEASES: &str = ".leases";
pub const DISPLACED: &str = ".displaced";
pub const LOCK: &str = ".lock";
/// Prefix of every temporary name this project creates; leftovers are removed under the lock.
pub const TMP_PREFIX: &str = ".mvw-tmp-";
/// Inside the workspace dir: the live roots (docs/design.md#live-links).
pub const LIVE: &str = ".live";
/// Inside a live root: the directory that shows the entry (docs/design.md#live-links).
pub const LIVE_CURRENT: &str = "current";
/// The room for the git dir of a repo whose `.git` is a file (docs/security.md#git-file): in
/// the repo for an entry's view, beside `current` in a live root for a live one.
pub const GIT_ROOM: &str = ".microvm-git";

/// A name no other process will pick, with the prefix that marks leftovers and the pid of
/// the process that made it (so a leftover's writer can be known to be gone).
pub fn tmp_name() -> std::ffi::OsString {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{TMP_PREFIX}{}-{n}", std::process::id()).into()
}

/// The directory every absolute path is taken under (`/` when not re-rooted).
#[derive(Clone, Debug)]
pub struct Root {
    dir: Option<PathBuf>,
}

impl Root {
    pub fn host() -> Root {
        Root { dir: None }
    }

    /// `--root` wins over `MICROVM_WORKSPACES_ROOT`; an empty value or `/` means no re-rooting.
    ///
    /// Refused for a caller who came through sudo: a tree of the caller's choosing would let
    /// them pick every file root then reads and every directory root acts on. Only this
    /// checks the name; [`crate::fs::chase::Tree::open`] opens it once and everything after goes
    /// through that descriptor.
    pub fn from_args(cli: Option<&Path>) -> Result<Root> {
        let env = std::env::var_os(ROOT_ENV).filter(|v| !v.is_empty());
        let given = match cli {
            Some(p) => Some(p.to_path_buf()),
            None => env.map(PathBuf::from),
        };
        let Some(dir) = given else {
            return Ok(Root::host());
        };
        if let Some(uid) = sudo_uid() {
            bail!(
                "--root and {ROOT_ENV} are refused through sudo (SUDO_UID={}): only root itself may re-root",
                show_bytes(&uid)
            );
        }
        let dir = if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir()
                .context("cannot read the working directory to resolve the root")?
                .join(dir)
        };
        let dir = normalize(&dir);
        if dir == Path::new("/") {
            return Ok(Root::host());
        }
        Ok(Root { dir: Some(dir) })
    }

    pub fn is_rerooted(&self) -> bool {
        self.dir.is_some()
    }

    /// The real directory standing for `/`.
    pub fn dir(&self) -> &Path {
        self.dir.as_deref().unwrap_or(Path::new("/"))
    }

    /// The real path of an inside path.
    pub fn real(&self, inside: &Path) -> PathBuf {
        match &self.dir {
            None => inside.to_path_buf(),
            Some(d) => d.join(inside.strip_prefix("/").unwrap_or(inside)),
        }
    }

    /// The inside path of a real path, if it lies under the root.
    pub fn inside(&self, real: &Path) -> Option<PathBuf> {
        match &self.dir {
            None => Some(real.to_path_buf()),
            Some(d) => real
                .strip_prefix(d)
                .ok()
                .map(|rest| Path::new("/").join(rest)),
        }
    }
}

/// `SUDO_UID` when it names someone other than root: the caller came through sudo.
pub fn sudo_uid() -> Option<std::ffi::OsString> {
    std::env::var_os("SUDO_UID").filter(|v| v != "0")
}

/// Lexical normalization: drops `.` and empty components and applies `..` to what precedes
/// it (never above `/`). Used on paths an administrator wrote, where `..` means the text.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from(if p.is_absolute() { "/" } else { "" });
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() && !p.is_absolute() {
                    out.push("..");
                }
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// A path for one-line messages: valid UTF-8 as is, anything else (control characters,
/// invalid bytes) escaped, so a hostile name can never break a line or the terminal.
pub fn show(p: &Path) -> String {
    show_bytes(p.as_os_str())
}

pub fn show_bytes(s: &OsStr) -> String {
    let mut out = String::new();
    for chunk in s.as_bytes().utf8_chunks() {
        for ch in chunk.valid().chars() {
            if ch.is_control() {
                out.extend(ch.escape_default());
            } else {
                out.push(ch);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Serializes an optional path as [`show`] prints it (JSON strings must be UTF-8).
pub fn serialize_shown<S: serde::Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_some(&show(p)),
        None => s.serialize_none(),
    }
}

/// Why `name` cannot be a VM or workspace entry name (one visible path component we create
/// under our directories: `<workspaceDir>/<name>`, `/run/microvm-workspaces/<name>.json`), or
/// `None` when it can. The one rule: `model::names::{VmName, EntryName}` are made through it
/// (this layer cannot name them; see [`check_name`]).
pub fn component_fault(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.starts_with('.') {
        Some("starts with '.'")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.chars().any(|c| c.is_control()) {
        Some("contains a control character")
    } else if name.len() > 200 {
        Some("is longer than 200 bytes")
    } else {
        None
    }
}

/// [`component_fault`] as an error (`{what} name "..." starts with '.'`). Only for the engine's
/// check of the entry names it holds as `String` (`engine::link`'s `check_targets`, on
/// `entry::Change::name`); everything else holds a `model::names::VmName` or `EntryName`,
/// valid by construction.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    match component_fault(name) {
        Some(why) => bail!("{what} name {:?} {why}", name),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_lexical_and_never_climbs_above_the_root() {
        for (p, want) in [
            ("/a/./b//c/", "/a/b/c"),
            ("/a/b/../c", "/a/c"),
            ("/../../x", "/x"),
            ("a/../../b", "../b"),
            ("/", "/"),
        ] {
            assert_eq!(normalize(Path::new(p)), Path::new(want), "{p}");
        }
    }

    #[test]
    fn shown_paths_stay_on_one_line() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(OsStr::from_bytes(b"/a\nb/\xff\x1b[31m"));
        assert_eq!(show(p), "/a\\nb/\\xff\\u{1b}[31m");
    }

    #[test]
    fn the_root_maps_inside_paths_both_ways() {
        let t = std::env::temp_dir();
        let root = Root::from_args(Some(&t)).unwrap();
        let real = root.real(Path::new("/var/lib/x"));
        assert_eq!(real, t.join("var/lib/x"));
        assert_eq!(root.inside(&real).unwrap(), Path::new("/var/lib/x"));
        assert!(root.inside(Path::new("/elsewhere")).is_none());
        assert!(!Root::from_args(Some(Path::new("/"))).unwrap().is_rerooted());
    }
}
