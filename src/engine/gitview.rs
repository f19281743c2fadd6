//! What the guest sees of a linked repo's git metadata (docs/security.md#guest-git), and the
//! VM's own git dir of the `private` mode.
//!
//! The guest and the linker are one uid through the idmap, so ownership cannot keep a guest
//! from rewriting `.git/config` or hooks, which the user's next `git status` on the host would
//! run. The guest's view is therefore built apart from the host's: the repo is mounted on a
//! slot in a private staging mount, the chosen `.git` is mounted on the slot's `.git`, and the
//! whole tree is moved onto the entry (or a live `current`) in one step, so it reaches
//! virtiofsd's mount namespace whole, and nothing of it ever appears at the repo's own path.
//! A mount on `.git` as a whole (never on `.git/config`: git replaces that file by rename,
//! which a mount point forbids) cannot be renamed away by the guest.
//!
//! The private git dir, `<workspaceDir>/.git-private/<entry>/git`, kept per entry (one mount
//! serves every VM sharing the entry):
//!
//! ```text
//! .git-private/            root 0711
//!   <entry>/               the linker's, 0700 (only they and root get in)
//!     git/                 the linker's (git in the guest insists on owning its git dir)
//!       config, hooks/, commondir ("."), origin     root's; read-only mount points in the view
//!       HEAD, index, packed-refs, refs/, shallow   copied from the repo at creation, the linker's
//!       objects/           the linker's (info/alternates root's, read-only: ../host-objects)
//!       host-objects/      mount point in the view: the repo's objects, read-only
//! ```
//! The host reads nothing of it but objects and refs (`microvm-link fetch`, [`crate::cmd::fetch`]).

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, Mode};
use rustix::mount::MoveMountFlags;

use crate::fs::chase::{self, is_mount_root, Node, Tree, Trust, Walk};
use crate::fs::dirs;
use crate::fs::failpoint::step;
use crate::fs::idmap::{self, Ids};
use crate::fs::paths::{show, tmp_name};
use crate::model::config::GitMode;

/// `<workspaceDir>/.git-private`.
pub const PRIVATE_DIR: &str = ".git-private";
/// `<workspaceDir>/.stage`: a private mount where a guest's view is put together.
pub const STAGE_DIR: &str = ".stage";
/// The private git dir inside `.git-private/<entry>`.
const GIT: &str = "git";
const HOST_OBJECTS: &str = "host-objects";
const ORIGIN: &str = "origin";
/// A copied ref file, HEAD or packed-refs larger than this is not a git file.
const SMALL: u64 = 64 << 20;
/// The index may be large (one entry per tracked file).
const INDEX_MAX: u64 = 1 << 30;

/// The `.git` mount the guest gets for `repo` in mode `git`: `None` when the repo's own
/// `.git` is seen as it is (`shared`, or no `.git` at all).
pub fn wanted(tree: &Tree, repo: &Node, git: GitMode) -> Result<Option<Node>> {
    if git == GitMode::Shared {
        return Ok(None);
    }
    match tree.walk_within(repo, Path::new(".git"), Trust::Owners)? {
        Walk::Found(n) => Ok(Some(n)),
        Walk::Missing { .. } => Ok(None),
    }
}

/// Does the mount on `entry` show `.git` as `git` wants: no mount on it (shared, or no
/// `.git`), or a mount of exactly the directory the mode shows (the repo's `.git` read-only,
/// or entry `name`'s private git dir)? A mode switched in the config is seen at the next start.
pub fn view_is(
    tree: &Tree,
    ws: &Node,
    name: &OsStr,
    entry: &Node,
    repo: &Node,
    git: GitMode,
) -> Result<bool> {
    let have = match entry.child(OsStr::new(".git")) {
        Ok(n) if is_mount_root(n.fd.as_fd())? => Some(n.id()),
        _ => None,
    };
    let want = match wanted(tree, repo, git)? {
        None => None,
        Some(dotgit) if git == GitMode::Private && private_possible(&dotgit)? => {
            let own = ws
                .child(OsStr::new(PRIVATE_DIR))
                .and_then(|p| p.child(name))
                .and_then(|m| m.child(OsStr::new(GIT)));
            match own {
                Ok(g) => Some(g.id()),
                Err(_) => return Ok(false),
            }
        }
        Some(dotgit) => Some(dotgit.id()),
    };
    Ok(want == have)
}

/// Mounts the guest's view of `repo` on `target`: the repo (see [`idmap::mount_repo`]) with,
/// unless `git` is `shared`, the mode's `.git` on top, all attached in one move. `name` is
/// the entry (for the private git dir).
pub fn mount(
    tree: &Tree,
    ws: &Node,
    name: &OsStr,
    repo: &Node,
    target: &Node,
    ids: &Ids,
    git: GitMode,
) -> Result<()> {
    // Every view is put together on a slot (even one with no `.git` of its own): its flags
    // and propagation are set before it is anywhere a guest or another namespace sees it.
    let dotgit = wanted(tree, repo, git)?;
    let stage = stage(tree, ws)?;
    let slot_name = tmp_name();
    let slot = dirs::mkdir_as(&stage, &slot_name, 0, 0)?;
    let made = (|| -> Result<()> {
        let top = idmap::mount_repo(repo, &slot, ids, false)?;
        if let Some(dotgit) = dotgit {
            view_git(tree, ws, name, repo, &dotgit, &top, &slot, ids, git)?;
        }
        rustix::mount::move_mount(
            top.as_fd(),
            "",
            target.fd.as_fd(),
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .with_context(|| format!("cannot move the guest's view onto {}", show(&target.path)))?;
        step("move view");
        Ok(())
    })();
    if made.is_err() {
        // Whatever got mounted on the slot goes with it.
        let _ = rustix::mount::unmount(slot.proc_path(), rustix::mount::UnmountFlags::DETACH);
    }
    let _ = nix::unistd::unlinkat(
        &stage.fd,
        &*slot_name,
        nix::unistd::UnlinkatFlags::RemoveDir,
    );
    made
}

/// Mounts the mode's `.git` on the `.git` of the repo mounted on `slot` (`top`: its root).
#[allow(clippy::too_many_arguments)]
fn view_git(
    tree: &Tree,
    ws: &Node,
    name: &OsStr,
    repo: &Node,
    dotgit: &Node,
    top: &OwnedFd,
    slot: &Node,
    ids: &Ids,
    git: GitMode,
) -> Result<()> {
    let on = Node::open_at(top.as_fd(), OsStr::new(".git"), slot.path.join(".git"))
        .context("the slot's .git")?;
    match git {
        GitMode::Readonly => {
            idmap::mount_repo(dotgit, &on, ids, true)?;
        }
        GitMode::Private => {
            // A git dir it cannot start from (docs/security.md#guest-git), or one it cannot copy
            // (a file of root's in it, left by `sudo git`): the read-only view, said once.
            let own = match private_possible(dotgit) {
                Ok(true) => private_dir(tree, ws, name, repo, dotgit).map(Some),
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            }
            .unwrap_or_else(|e| {
                tracing::warn!(path = %show(&dotgit.path), action = "git-readonly",
                    "the guest gets {} read-only instead of a git dir of its own: {}",
                    show(&dotgit.path), crate::host::logging::one_line(&e));
                None
            });
            if let Some(own) = own {
                let g = idmap::mount_repo(&own, &on, ids, false)?;
                // What is root's in it stays so in the guest's view: each a read-only
                // mount point, which the guest can neither write nor rename away.
                for rel in ROOTS_OWN {
                    let theirs = own_child(&own, rel)?;
                    let view = Node::open_at(g.as_fd(), OsStr::new("."), on.path.clone())?;
                    let at = own_child(&view, rel)?;
                    idmap::mount_repo(&theirs, &at, ids, true)?;
                }
                let objects = match tree.walk_within(dotgit, Path::new("objects"), Trust::Owners)? {
                    Walk::Found(n) if n.is_dir() => n,
                    _ => bail!("{} has no objects directory", show(&dotgit.path)),
                };
                let ho = Node::open_at(
                    g.as_fd(),
                    OsStr::new(HOST_OBJECTS),
                    own.path.join(HOST_OBJECTS),
                )
                .context("host-objects")?;
                idmap::mount_repo(&objects, &ho, ids, true)?;
            } else {
                idmap::mount_repo(dotgit, &on, ids, true)?;
            }
        }
        GitMode::Shared => unreachable!("shared mounts no .git"),
    }
    Ok(())
}

/// `<workspaceDir>/.stage`, root 0700, a private mount of itself (so what is mounted in it
/// reaches no other namespace and may be moved out). Leftover slots of a killed run are
/// detached and removed.
fn stage(tree: &Tree, ws: &Node) -> Result<Node> {
    let at = ws.path.join(STAGE_DIR);
    let dir = dirs::ensure_root_dir(tree, &at)?;
    if dir.st.st_mode & 0o077 != 0 {
        dir.chmod(0o700)?;
    }
    if !is_mount_root(dir.fd.as_fd())? {
        use nix::mount::{mount, MsFlags};
        mount(
            Some(&dir.proc_path()),
            &dir.proc_path(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("cannot make {} a mount", show(&at)))?;
        step("stage mount");
    }
    let dir = ws.child(OsStr::new(STAGE_DIR))?;
    {
        use nix::mount::{mount, MsFlags};
        mount(
            None::<&str>,
            &dir.proc_path(),
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .with_context(|| format!("cannot make {} private", show(&at)))?;
    }
    clear_slots(&dir)?;
    Ok(dir)
}

/// Detaches and removes the slots of `.stage` (only root makes them, only while holding the
/// workspace lock).
fn clear_slots(stage: &Node) -> Result<()> {
    for leftover in chase::list_dir(stage)? {
        if let Ok(n) = stage.child(&leftover) {
            if n.is_dir() && is_mount_root(n.fd.as_fd())? {
                let _ = rustix::mount::unmount(n.proc_path(), rustix::mount::UnmountFlags::DETACH);
            }
        }
        let _ = nix::unistd::unlinkat(&stage.fd, &*leftover, nix::unistd::UnlinkatFlags::RemoveDir);
        step("clear slot");
    }
    Ok(())
}

/// What a killed run left (under the workspace lock): slots in `.stage`, detached and
/// removed; a private git dir made halfway (under its temporary name, so never mounted and
/// holding nothing of a guest's), removed.
pub fn clear_leftovers(ws: &Node) -> Result<()> {
    if let Ok(stage) = ws.child(OsStr::new(STAGE_DIR)) {
        if stage.is_dir() && stage.uid() == 0 {
            clear_slots(&stage)?;
        }
    }
    if let Ok(top) = ws.child(OsStr::new(PRIVATE_DIR)) {
        if top.is_dir() && top.uid() == 0 {
            for name in chase::list_dir(&top)? {
                let b = name.as_encoded_bytes();
                if b.starts_with(crate::fs::paths::TMP_PREFIX.as_bytes()) {
                    // Never mounted, so nothing of a guest's is in it: it goes.
                    if let Ok(half) = top.child(&name) {
                        remove_tree(&half, 0)?;
                    }
                    nix::unistd::unlinkat(&top.fd, &*name, nix::unistd::UnlinkatFlags::RemoveDir)?;
                    step("half-made private git dir");
                }
            }
        }
    }
    Ok(())
}

/// What `origin` says: the repo a private git dir was made from.
fn origin_of(repo: &Node) -> String {
    format!(
        "{}\n{}:{}\n",
        repo.path.display(),
        repo.st.st_dev,
        repo.st.st_ino
    )
}

/// The private git dir of entry `name` for `repo` (whose `.git` is `dotgit`): the existing one
/// when it was made from this repo (the guest's commits survive restarts and relinks), else
/// a new one, the old one moved aside (`<entry>.<time>`), never deleted.
pub fn private_dir(
    tree: &Tree,
    ws: &Node,
    name: &OsStr,
    repo: &Node,
    dotgit: &Node,
) -> Result<Node> {
    let top = dirs::ensure_root_dir(tree, &ws.path.join(PRIVATE_DIR))?;
    if top.st.st_mode & 0o7777 != 0o711 {
        top.chmod(0o711)?;
    }
    let owner = (repo.st.st_uid, repo.st.st_gid);
    if let Ok(mine) = top.child(name) {
        // Ours and whole: every root-kept file root's (an older layout, or one tampered
        // with, is set aside and made anew), and made from this very repo.
        let same = mine.is_dir()
            && mine.uid() == owner.0
            && mine
                .child(OsStr::new(GIT))
                .ok()
                .filter(|g| g.is_dir())
                .filter(|g| {
                    ROOTS_OWN
                        .iter()
                        .all(|r| own_child(g, r).is_ok_and(|n| n.uid() == 0))
                })
                .and_then(|g| {
                    chase::read_at(&g, OsStr::new(ORIGIN), 4096, Some(0))
                        .ok()
                        .flatten()
                })
                .is_some_and(|o| o == origin_of(repo).as_bytes());
        if same {
            return Ok(mine.child(OsStr::new(GIT))?);
        }
        let mut aside = name.to_os_string();
        // Seconds for people, nanoseconds so two relinks in one second never collide.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        aside.push(format!(".{}.{:09}", t.as_secs(), t.subsec_nanos()));
        nix::fcntl::renameat2(
            &top.fd,
            name,
            &top.fd,
            &*aside,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .with_context(|| format!("cannot move {} aside", show(&top.path.join(name))))?;
        step("private git dir aside");
    }
    // Made under a temporary name and renamed into place: a killed run leaves no half dir
    // under the entry's name.
    let tmp = tmp_name();
    let made = make_private(&top, &tmp, repo, dotgit, owner);
    if made.is_err() {
        // Nothing of a guest's is in it yet: what was made goes (a full disk leaves nothing).
        if let Ok(half) = top.child(&tmp) {
            let _ = remove_tree(&half, 0);
        }
        let _ = nix::unistd::unlinkat(&top.fd, &*tmp, nix::unistd::UnlinkatFlags::RemoveDir);
    }
    made?;
    nix::fcntl::renameat(&top.fd, &*tmp, &top.fd, name)
        .with_context(|| format!("cannot put {} in place", show(&top.path.join(name))))?;
    step("private git dir");
    let mine = top.child(name)?;
    Ok(mine.child(OsStr::new(GIT))?)
}

/// Removes what is in `dir` (by descriptor, never following a symlink).
fn remove_tree(dir: &Node, depth: u32) -> Result<()> {
    if depth > 64 {
        bail!("{} is nested too deep", show(&dir.path));
    }
    for name in chase::list_dir(dir)? {
        let n = dir.child(&name)?;
        let flag = if n.is_dir() {
            remove_tree(&n, depth + 1)?;
            nix::unistd::UnlinkatFlags::RemoveDir
        } else {
            nix::unistd::UnlinkatFlags::NoRemoveDir
        };
        nix::unistd::unlinkat(&dir.fd, &*name, flag)?;
    }
    Ok(())
}

/// Makes a new private git dir `<top>/<tmp>/git` (see the module's layout).
fn make_private(
    top: &Node,
    tmp: &OsStr,
    repo: &Node,
    dotgit: &Node,
    owner: (u32, u32),
) -> Result<()> {
    let mine = dirs::mkdir_as(top, tmp, 0, 0)?;
    mine.chmod(0o700)?;
    rustix::fs::chownat(
        &mine.fd,
        "",
        Some(rustix::fs::Uid::from_raw(owner.0)),
        Some(rustix::fs::Gid::from_raw(owner.1)),
        rustix::fs::AtFlags::EMPTY_PATH | rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .with_context(|| format!("cannot chown {}", show(&mine.path)))?;
    // The git dir itself is the linker's (git in the guest insists on owning its git dir).
    let git = dirs::mkdir_as(&mine, OsStr::new(GIT), owner.0, owner.1)?;
    let sha256 = read_opt(dotgit, OsStr::new("config"), SMALL)?.is_some_and(|c| is_sha256(&c));
    write_new(
        &git,
        "config",
        0,
        0,
        0o644,
        config(false, sha256).as_bytes(),
    )?;
    write_new(&git, ORIGIN, 0, 0, 0o644, origin_of(repo).as_bytes())?;
    write_new(&git, "commondir", 0, 0, 0o644, b".\n")?;
    dirs::mkdir_as(&git, OsStr::new("hooks"), 0, 0)?;
    dirs::mkdir_as(&git, OsStr::new(HOST_OBJECTS), 0, 0)?;
    let objects = dirs::mkdir_as(&git, OsStr::new("objects"), owner.0, owner.1)?;
    let info = dirs::mkdir_as(&objects, OsStr::new("info"), 0, 0)?;
    write_new(
        &info,
        "alternates",
        0,
        0,
        0o644,
        format!("../{HOST_OBJECTS}\n").as_bytes(),
    )?;
    dirs::mkdir_as(&objects, OsStr::new("pack"), owner.0, owner.1)?;
    // What the guest starts from, the linker's: HEAD, index, refs.
    for (file, max) in [
        ("HEAD", SMALL),
        ("packed-refs", SMALL),
        ("shallow", SMALL),
        ("index", INDEX_MAX),
    ] {
        if let Some(bytes) = read_opt(dotgit, OsStr::new(file), max)? {
            write_new(&git, file, owner.0, owner.1, 0o644, &bytes)?;
        }
    }
    if read_opt(dotgit, OsStr::new("HEAD"), SMALL)?.is_none() {
        bail!("{} has no HEAD: not a git dir", show(&dotgit.path));
    }
    let refs = dirs::mkdir_as(&git, OsStr::new("refs"), owner.0, owner.1)?;
    for sub in ["heads", "tags"] {
        dirs::mkdir_as(&refs, OsStr::new(sub), owner.0, owner.1)?;
    }
    if let Ok(theirs) = dotgit.child(OsStr::new("refs")) {
        if theirs.is_dir() {
            copy_refs(&theirs, &refs, owner, 0)?;
        }
    }
    Ok(())
}

/// What root keeps in a private git dir, read-only in the guest's view.
/// `commondir` (".") because git reads the config of whatever directory a `commondir` file
/// names: one of the guest's would give host git, run in the entry's path, a config of the
/// guest's (`core.fsmonitor`). `origin` because fetch and the reuse check believe it.
const ROOTS_OWN: [&str; 5] = ["config", "hooks", "objects/info", "commondir", "origin"];

/// `dir/rel`, not following symlinks.
fn own_child(dir: &Node, rel: &str) -> Result<Node> {
    let mut n = dir.try_clone()?;
    for part in rel.split('/') {
        n = n
            .child(OsStr::new(part))
            .with_context(|| show(&n.path.join(part)))?;
    }
    Ok(n)
}

/// The private git dir's config: a plain non-bare repo; nothing that runs a program.
/// A git dir's config of ours: plain, nothing that runs a program; SHA-256 object ids when the
/// repo has them.
pub fn config(bare: bool, sha256: bool) -> String {
    let mut c = format!(
        "[core]\n\trepositoryformatversion = {}\n\tfilemode = true\n\tbare = {bare}\n",
        u8::from(sha256)
    );
    if sha256 {
        c.push_str("[extensions]\n\tobjectformat = sha256\n");
    }
    c
}

/// Does the config text name SHA-256 object ids? (Read from the repo's own config, only for
/// this one key.)
pub fn is_sha256(config: &[u8]) -> bool {
    String::from_utf8_lossy(config).lines().any(|l| {
        let l = l.trim().to_ascii_lowercase();
        l.starts_with("objectformat") && l.split('=').nth(1).is_some_and(|v| v.trim() == "sha256")
    })
}

/// What a private git dir cannot start from: a `.git` file (a worktree's, naming a git dir
/// the guest does not see), a `.git` without `HEAD`, a reftable repo. The read-only view then.
fn private_possible(dotgit: &Node) -> Result<bool> {
    Ok(dotgit.is_dir()
        && read_opt(dotgit, OsStr::new("HEAD"), SMALL)?.is_some()
        && dotgit.child(OsStr::new("reftable")).is_err())
}

/// Copies the loose refs under `from` into `to` (a directory of `owner`'s), as `owner`:
/// directories and small regular files only, no deeper than git goes.
fn copy_refs(from: &Node, to: &Node, owner: (u32, u32), depth: u32) -> Result<()> {
    if depth > 32 {
        bail!("{} is nested too deep for refs", show(&from.path));
    }
    for name in chase::list_dir(from)? {
        let Ok(n) = from.child(&name) else { continue };
        if n.is_dir() {
            let d = dirs::mkdir_as(to, &name, owner.0, owner.1)?;
            copy_refs(&n, &d, owner, depth + 1)?;
        } else if chase::is_regular(&n.st) {
            if let Some(bytes) = read_opt(from, &name, 4096)? {
                write_new(to, &name, owner.0, owner.1, 0o644, &bytes)?;
            }
        }
    }
    Ok(())
}

/// Regular file `name` of `dir` (see [`chase::read_at`]), owned by `dir`'s owner: root copies
/// it where the repo's owner reads it, so never a file of someone else's (a hard link to one,
/// where the kernel allows making it).
fn read_opt(dir: &Node, name: &OsStr, max: u64) -> Result<Option<Vec<u8>>> {
    chase::read_at(dir, name, max, Some(dir.uid()))
}

/// Creates `name` in `dir` (never an existing one), owned `uid:gid` with `mode`.
fn write_new(
    dir: &Node,
    name: impl AsRef<OsStr>,
    uid: u32,
    gid: u32,
    mode: u32,
    bytes: &[u8],
) -> Result<()> {
    let name = name.as_ref();
    let at = dir.path.join(name);
    let fd: OwnedFd = openat(
        &dir.fd,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .with_context(|| format!("cannot create {}", show(&at)))?;
    rustix::fs::fchown(
        &fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .with_context(|| format!("cannot chown {}", show(&at)))?;
    fchmod(&fd, Mode::from_bits_truncate(mode))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", show(&at)))?;
    step("git file");
    Ok(())
}

/// The private git dir of entry `name`, if there is one: `<workspaceDir>/.git-private/<name>/git`.
pub fn private_path(workspace_dir: &Path, name: &OsStr) -> PathBuf {
    workspace_dir.join(PRIVATE_DIR).join(name).join(GIT)
}

/// One line on what the guests of an entry see of git, for status and doctor.
pub fn words(git: GitMode) -> &'static str {
    match git {
        GitMode::Private => {
            "private (the VM's own git dir; microvm-link fetch brings its branches)"
        }
        GitMode::Readonly => "readonly (the repo's .git, read-only)",
        GitMode::Shared => {
            "shared (the repo's own .git, writable: the guest can make your git run commands)"
        }
    }
}
