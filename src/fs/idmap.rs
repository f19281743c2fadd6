//! Mounting a repo for a guest (docs/security.md#idmap): every link mount is a clone of the
//! repo's mount, `nosuid,nodev`, and (unless a VM opts out) *idmapped*, so that the guest's
//! user is the linker and nobody else is anybody.
//!
//! An idmapped mount shows a file whose owner on disk is `host_uid` as owned by `guest_uid`
//! and creates what `guest_uid` creates as `host_uid`; root is `nobody` (65534) on disk (see
//! [`NOBODY`] for why not unmapped); every other id shows as the overflow id and cannot
//! create, chown or own anything (EOVERFLOW). virtiofsd, root on the host, creates files with
//! the guest caller's ids, so through such a mount the guest's user is the linker and the
//! guest's root is nobody, whatever the numbers: no root-owned or set-uid-root file can land.
//!
//! The mapping lives in a user namespace, which only a single-threaded process can make
//! (unshare(2)); without `unsafe` there is no fork here, so a short-lived `unshare --user
//! cat` holds one while root writes its maps and opens it.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use rustix::mount::OpenTreeFlags;

use crate::fs::chase::{is_mount_root, proc_path, Node};
use crate::fs::failpoint::step;
use crate::fs::paths::show;

/// `vms.<vm>.guestUid` when the config says nothing: the first user of NixOS and Debian.
pub const DEFAULT_GUEST_UID: u32 = 1000;

/// How a VM's guest is to see linked repos (from `vms.<vm>.guestUid` and `idmap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    /// Its user `uid` is the repo's owner, its group `gid` (default: the number of the
    /// owner's primary group) the owner's primary group; nobody else is anybody.
    Mapped { uid: u32, gid: Option<u32> },
    /// Ids pass through as they are (`idmap = false`).
    Plain,
}

impl Default for Guest {
    fn default() -> Self {
        Guest::Mapped {
            uid: DEFAULT_GUEST_UID,
            gid: None,
        }
    }
}

impl std::fmt::Display for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Guest::Mapped { uid, gid: None } => {
                write!(f, "guest uid {uid} as the linker, root as nobody")
            }
            Guest::Mapped { uid, gid: Some(g) } => {
                write!(f, "guest uid {uid} gid {g} as the linker, root as nobody")
            }
            Guest::Plain => f.write_str("unmapped (idmap = false)"),
        }
    }
}

impl Guest {
    /// The ids of a mount of `repo` for this guest: the guest user is the repo's owner (for a
    /// user's link the linker; root may link a user's repo, and then it is that user). A repo
    /// of root's is never mapped to a guest user.
    pub fn ids_for(&self, repo: &Node) -> Result<Ids> {
        match *self {
            Guest::Plain => Ok(Ids::Plain),
            Guest::Mapped { uid, gid } => {
                if repo.st.st_uid == 0 {
                    bail!(
                        "{} is root's: the guest's user would be root on it; link a user's repo, or set idmap = false for the VM",
                        show(&repo.path)
                    );
                }
                Ok(Ids::Mapped(IdMap::for_linker(
                    repo.st.st_uid,
                    repo.st.st_gid,
                    uid,
                    gid,
                )))
            }
        }
    }
}

/// One guest user seen as one host user, in both uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// The linker: the owner of the link record.
    pub host_uid: u32,
    /// The linker's primary group.
    pub host_gid: u32,
    /// The guest user (`vms.<vm>.guestUid`).
    pub guest_uid: u32,
    /// The guest group: the number of the linker's primary group
    /// (docs/security.md#idmap: the guest's gid of the same number).
    pub guest_gid: u32,
}

impl IdMap {
    /// The mapping for a repo of `host_uid` in a VM whose user is `guest_uid`: the owner's
    /// primary group (from the user database) maps to the guest's gid of the same number. An
    /// owner with no entry there (only root can link such a repo: sudo needs one) gets
    /// `repo_gid`, the repo's own group, which root chose by linking it.
    pub fn for_linker(
        host_uid: u32,
        repo_gid: u32,
        guest_uid: u32,
        guest_gid: Option<u32>,
    ) -> IdMap {
        let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(host_uid))
            .ok()
            .flatten()
            .map_or(repo_gid, |u| u.gid.as_raw());
        IdMap {
            host_uid,
            host_gid: gid,
            guest_uid,
            guest_gid: guest_gid.unwrap_or(gid),
        }
    }

    /// What a file owned by (uid, gid) on disk shows as through the mount.
    pub fn shown(&self, uid: u32, gid: u32) -> (u32, u32) {
        let shown = |id: u32, host: u32, guest: u32| match id {
            _ if id == host => guest,
            NOBODY if self.maps_root() => 0,
            _ => OVERFLOW_ID,
        };
        (
            shown(uid, self.host_uid, self.guest_uid),
            shown(gid, self.host_gid, self.guest_gid),
        )
    }

    /// Is the host's (and the guest's) root mapped to nobody? Always, but where nobody is a
    /// side of the mapping already.
    pub fn maps_root(&self) -> bool {
        self.host_uid != NOBODY
            && self.host_gid != NOBODY
            && self.guest_uid != 0
            && self.guest_gid != 0
    }

    /// The `uid_map` and `gid_map` lines of the mount's user namespace: `<on disk> <seen> 1`.
    pub fn maps(&self) -> (String, String) {
        let mut u = format!("{} {} 1\n", self.host_uid, self.guest_uid);
        let mut g = format!("{} {} 1\n", self.host_gid, self.guest_gid);
        if self.maps_root() {
            u.push_str(&format!("{NOBODY} 0 1\n"));
            g.push_str(&format!("{NOBODY} 0 1\n"));
        }
        (u, g)
    }
}

impl std::fmt::Display for IdMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "guest uid {} = host uid {}, gid {} = gid {}",
            self.guest_uid, self.host_uid, self.guest_gid, self.host_gid
        )
    }
}

/// What the kernel shows for an id an idmapped mount does not map (`/proc/sys/fs/overflowuid`).
pub const OVERFLOW_ID: u32 = 65534;

/// On disk, what root through a link is: `nobody` (and `nogroup`/`nobody` group), 65534 on
/// NixOS and Debian. virtiofsd 1.14 renames and hard-links with its own root credentials (only
/// creating switches to the guest caller's), and the kernel refuses both on an idmapped mount
/// whose mapping lacks the caller's fsuid (EOVERFLOW): with root unmapped, no guest could
/// `mv a b` or commit. So root maps to nobody: what the guest's root creates is nobody's, never
/// root's (docs/security.md#idmap).
pub const NOBODY: u32 = 65534;

/// How a link is mounted: idmapped (the default), or a plain clone (`vms.<vm>.idmap = false`).
/// Both are `nosuid,nodev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ids {
    Mapped(IdMap),
    Plain,
}

impl std::fmt::Display for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ids::Mapped(m) => write!(f, "idmapped ({m})"),
            Ids::Plain => f.write_str("unmapped"),
        }
    }
}

impl Ids {
    /// What a directory owned by (uid, gid) on disk must show as through a mount made so.
    pub fn shown(&self, uid: u32, gid: u32) -> (u32, u32) {
        match self {
            Ids::Mapped(m) => m.shown(uid, gid),
            Ids::Plain => (uid, gid),
        }
    }
}

/// The `unshare` root runs: the one the package was built with (the flake sets
/// `MICROVM_WORKSPACES_UNSHARE` to util-linux's), else the first root-owned one in the
/// system's fixed directories. Never the caller's PATH.
fn unshare_program() -> Result<PathBuf> {
    if let Some(p) = option_env!("MICROVM_WORKSPACES_UNSHARE") {
        return Ok(PathBuf::from(p));
    }
    for dir in [
        "/run/current-system/sw/bin",
        "/usr/bin",
        "/bin",
        "/usr/sbin",
        "/sbin",
    ] {
        let p = Path::new(dir).join("unshare");
        if std::fs::metadata(&p).is_ok_and(|m| m.uid() == 0 && m.is_file() && m.mode() & 0o022 == 0)
        {
            return Ok(p);
        }
    }
    bail!("no unshare (util-linux) in the system's directories: cannot make an idmapped mount")
}

/// A user namespace whose maps are `m`: `host_uid` inside is `guest_uid` outside (and so for
/// the gids). For idmapped mounts the inside is the file system's side: the kernel maps an
/// owner on disk *down* through these maps to what the mount shows. Made once per mapping
/// in a process (a view is up to eight mounts with one mapping; each `unshare` costs a
/// process start).
pub fn userns(m: &IdMap) -> Result<OwnedFd> {
    static MADE: std::sync::Mutex<Vec<(IdMap, OwnedFd)>> = std::sync::Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, fd)) = made.iter().find(|(k, _)| k == m) {
        return Ok(fd.try_clone()?);
    }
    let fd = new_userns(m)?;
    made.push((*m, fd.try_clone()?));
    Ok(fd)
}

fn new_userns(m: &IdMap) -> Result<OwnedFd> {
    let mut child = Command::new(unshare_program()?)
        .args(["--user", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_clear()
        .spawn()
        .context("cannot start unshare for an idmapped mount")?;
    let made = (|| -> Result<OwnedFd> {
        let (stdin, stdout) = (
            child.stdin.as_mut().unwrap(),
            child.stdout.as_mut().unwrap(),
        );
        // Echo one byte through cat: once it answers, it runs in its own namespace.
        stdin.write_all(b"\n")?;
        let mut b = [0u8; 1];
        stdout
            .read_exact(&mut b)
            .context("unshare --user did not start (user namespaces disabled?)")?;
        let proc = PathBuf::from(format!("/proc/{}", child.id()));
        let (uid_map, gid_map) = m.maps();
        std::fs::write(proc.join("uid_map"), uid_map)
            .context("cannot write the uid map of the mount's user namespace")?;
        std::fs::write(proc.join("gid_map"), gid_map)
            .context("cannot write the gid map of the mount's user namespace")?;
        let ns = std::fs::File::open(proc.join("ns/user"))
            .context("cannot open the mount's user namespace")?;
        Ok(ns.into())
    })();
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    made
}

/// Mounts a clone of `repo` (named by descriptor; a directory or a file) on `target` (by
/// descriptor): `nosuid,nodev`, read-only if `ro`, idmapped as `ids` says. The clone is
/// private: nothing mounted later on or under it travels back to the repo's own path, and
/// nothing from there comes in. Returns a descriptor of the new mount's root.
pub fn mount_repo(repo: &Node, target: &Node, ids: &Ids, ro: bool) -> Result<OwnedFd> {
    let what = || {
        format!(
            "cannot mount {} on {}",
            show(&repo.path),
            show(&target.path)
        )
    };
    let tree = rustix::mount::open_tree(
        repo.fd.as_fd(),
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .with_context(what)?;
    if let Ids::Mapped(m) = ids {
        let ns = userns(m).with_context(what)?;
        composefs_ioctls::mount::mount_setattr_idmap(&tree, &ns).map_err(|e| {
            if e.raw_os_error() == Some(libc_einval()) {
                anyhow!(
                    "{}: the file system of {} ({}) cannot make idmapped mounts; set vms.<vm>.idmap = false to link it unmapped",
                    what(),
                    show(&repo.path),
                    fs_type(repo)
                )
            } else {
                anyhow!(e).context(what())
            }
        })?;
    }
    attach(&tree, target).with_context(what)?;
    step("mount");
    // The old API on the mount's root (the tree's descriptor now names the attached mount):
    // private first (a clone of a shared mount joined its peer group), then nosuid,nodev.
    let at = crate::fs::chase::proc_path(tree.as_fd());
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        &at,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .with_context(what)?;
    // What the repo's own mount has (read-only, noexec) stays; atime settings are kept by
    // the kernel.
    let have = rustix::fs::fstatvfs(repo.fd.as_fd())
        .context("statvfs")?
        .f_flag;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if ro || have.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        flags |= MsFlags::MS_RDONLY;
    }
    if have.contains(rustix::fs::StatVfsMountFlags::NOEXEC) {
        flags |= MsFlags::MS_NOEXEC;
    }
    mount(None::<&str>, &at, None::<&str>, flags, None::<&str>).with_context(what)?;
    step("mount flags");
    Ok(tree)
}

fn libc_einval() -> i32 {
    nix::errno::Errno::EINVAL as i32
}

/// Tries an idmapped clone of `dir` (never attached; gone when dropped): `Ok` when its file
/// system and the kernel can make one.
pub fn try_idmap(dir: &Node) -> Result<()> {
    let tree = rustix::mount::open_tree(
        dir.fd.as_fd(),
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .context("open_tree")?;
    let ns = userns(&IdMap {
        host_uid: 0,
        host_gid: 0,
        guest_uid: 1,
        guest_gid: 1,
    })?;
    composefs_ioctls::mount::mount_setattr_idmap(&tree, &ns)
        .with_context(|| format!("mount_setattr on {}", fs_type(dir)))?;
    Ok(())
}

/// The file system type of `n`, in words (for the one-line refusal).
pub fn fs_type(n: &Node) -> String {
    let t = match rustix::fs::fstatfs(n.fd.as_fd()) {
        Ok(s) => s.f_type as u64,
        Err(e) => return format!("unknown type: {e}"),
    };
    let name = match t {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x2FC1_2FC1 => "zfs",
        0x794C_7630 => "overlay",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        0x0102_1997 => "9p",
        0xF2F5_2010 => "f2fs",
        _ => return format!("file system type {t:#x}"),
    };
    name.to_string()
}

/// Is the mount whose root `n` is idmapped? (The `idmapped` option in /proc/self/mountinfo,
/// found by the mount id statx gives; `false` for a mount no longer attached.)
pub fn is_idmapped(n: &Node) -> Result<bool> {
    let id = mount_id(n)?;
    // Not there: detached since `n` was opened (a relink racing a look without the lock).
    Ok(crate::fs::chase::mounts()?
        .iter()
        .find(|m| m.id == id)
        .is_some_and(|m| m.options.split(',').any(|o| o == "idmapped")))
}

fn mount_id(n: &Node) -> Result<u64> {
    use rustix::fs::{AtFlags, StatxFlags};
    let stx = rustix::fs::statx(
        n.fd.as_fd(),
        "",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::MNT_ID,
    )
    .context("statx")?;
    Ok(stx.stx_mnt_id)
}

/// Does the mount on `entry` (root of a mount of `repo`) show `repo` as `ids` would: mapped
/// or not, and with the same ids? A plain bind made by an older version, or a mapping for
/// another guest uid, is not.
pub fn mounted_as(entry: &Node, repo: &Node, ids: &Ids) -> Result<bool> {
    let want = ids.shown(repo.st.st_uid, repo.st.st_gid);
    let flags = rustix::fs::fstatvfs(entry.fd.as_fd())
        .context("statvfs")?
        .f_flag;
    let nosuid = flags.contains(rustix::fs::StatVfsMountFlags::NOSUID);
    Ok(nosuid
        && (entry.st.st_uid, entry.st.st_gid) == want
        && is_idmapped(entry)? == matches!(ids, Ids::Mapped(_)))
}

/// A new tmpfs of ours, not yet attached anywhere: root-owned 0755, `nosuid,nodev,noexec`,
/// with the tmpfs `options` (`size`, `nr_inodes`, `source`). Fill it through the returned
/// descriptor, then [`attach`] it.
pub fn tmpfs(options: &[(&str, &str)]) -> rustix::io::Result<OwnedFd> {
    use rustix::mount::{self as m, FsMountFlags, FsOpenFlags, MountAttrFlags};
    let fs = m::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for (k, v) in options.iter().chain(&[("mode", "0755")]) {
        m::fsconfig_set_string(&fs, *k, *v)?;
    }
    m::fsconfig_create(&fs)?;
    m::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )
}

/// Attaches the detached mount `mnt` on the directory `on` (by descriptor: the directory
/// that was checked).
pub fn attach(mnt: &OwnedFd, on: &Node) -> rustix::io::Result<()> {
    use rustix::mount::MoveMountFlags as F;
    rustix::mount::move_mount(
        mnt.as_fd(),
        "",
        on.fd.as_fd(),
        "",
        F::MOVE_MOUNT_F_EMPTY_PATH | F::MOVE_MOUNT_T_EMPTY_PATH,
    )
}

/// Detaches the mount whose root `node` is (lazily: a busy mount goes when its last user
/// does). It is named by descriptor, so the mount unmounted is the one that was checked, not
/// whatever a path names by the time the call runs.
pub fn unmount(node: &Node) -> Result<()> {
    if !is_mount_root(node.fd.as_fd())? {
        bail!(
            "{} is not a mount point; not unmounting it",
            show(&node.path)
        );
    }
    rustix::mount::unmount(
        proc_path(node.fd.as_fd()),
        rustix::mount::UnmountFlags::DETACH,
    )
    .with_context(|| format!("cannot unmount {}", show(&node.path)))?;
    step("unmount");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_linker_maps() {
        let m = IdMap {
            host_uid: 1001,
            host_gid: 100,
            guest_uid: 1000,
            guest_gid: 100,
        };
        assert_eq!(m.shown(1001, 100), (1000, 100));
        assert_eq!(m.shown(0, 0), (OVERFLOW_ID, OVERFLOW_ID));
        assert_eq!(m.shown(NOBODY, NOBODY), (0, 0));
        assert_eq!(m.maps().0, "1001 1000 1\n65534 0 1\n");
        assert_eq!(m.shown(1000, 1001), (OVERFLOW_ID, OVERFLOW_ID));
        assert_eq!(Ids::Plain.shown(0, 5), (0, 5));
    }
}
