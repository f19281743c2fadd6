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
//!
//! A repo whose `.git` is a file (a linked worktree, a submodule: docs/security.md#git-file)
//! names its git dir by a host path the guest does not have. Its view gets, on `.git`, a git
//! file of ours naming a path inside the share, and in a *room* there a *scaffold*: a small
//! read-only tmpfs of ours holding the git dir the mode shows. The room of an entry's view is
//! `<repo>/.microvm-git`, an empty directory made as the repo's owner (git never shows an
//! empty directory); a live `current`'s is beside it, `<live root>/.microvm-git`, nothing in
//! the user's tree.
//!
//! ```text
//! <room>/                  the scaffold: tmpfs, root 0755, read-only, nosuid,nodev,noexec
//!   .gitignore             "*": the guest's git neither shows the room nor adds it
//!   .git/                  0111: a name git never walks into or cleans; search-only, so the
//!                          guest user's `git clean -ffdx` cannot list (and empty) it either
//!     gitfile              "gitdir: <room>/.git/c/.git[/worktrees/<id>]", the guest user's:
//!                          mounted read-only on the view's .git
//!     [d/...]c/.git/       the git dir: the VM's own (private, as above), or the common dir
//!                          itself (readonly: read-only; shared: writable); `c` is a nested
//!                          repo to git, which `git clean -fdx` (even the guest root's) skips
//!   <path>                 for a submodule's core.worktree = ../(n)<path>: a link back to
//!                          the view, which the git dir n levels deep climbs to
//! ```

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, Mode};

use crate::engine::gitdir::{self, CoreWorktree, DotGit, GitFile, Layout};
use crate::fs::chase::{self, is_mount_root, Node, Tree, Trust, Walk};
use crate::fs::dirs;
use crate::fs::failpoint::step;
use crate::fs::idmap::{self, Ids};
use crate::fs::paths::{self, show, tmp_name, LIVE_CURRENT};
use crate::model::config::GitMode;

/// `<workspaceDir>/.git-private`.
pub const PRIVATE_DIR: &str = ".git-private";
/// `<workspaceDir>/.stage`: a private mount where a guest's view is put together.
pub const STAGE_DIR: &str = ".stage";
/// The room for a `.git` file's git dir: in the repo for an entry's view, beside `current`
/// for a live root's (see the module's note).
pub const ROOM: &str = paths::GIT_ROOM;
/// The private git dir inside `.git-private/<entry>`.
const GIT: &str = "git";
const HOST_OBJECTS: &str = "host-objects";
const ORIGIN: &str = "origin";
/// A copied ref file, HEAD or packed-refs larger than this is not a git file.
const SMALL: u64 = 64 << 20;
/// The index may be large (one entry per tracked file).
const INDEX_MAX: u64 = 1 << 30;

/// Where a view goes: what its git dir needs beside the repo depends on it.
#[derive(Clone, Copy)]
pub enum Place<'a> {
    /// An entry (pinned shares): the room for a `.git` file's git dir is the repo's own
    /// `.microvm-git`, an empty directory of its owner's.
    Entry,
    /// A live root's `current`: the room is beside it, `<live root>/.microvm-git`, root's.
    Live(&'a Node),
}

/// What the `.git` of a view is to show, decided from the repo and the mode.
enum Wanted {
    /// The repo's `.git` as it is (`shared` with a git dir, or no `.git`).
    AsIs,
    /// The repo's `.git` (a directory or a file) read-only, on itself; `why` the mode asked
    /// for more, said once when mounting.
    Readonly { dotgit: Node, why: Option<String> },
    /// The VM's own git dir on `.git` (a git dir of the repo's).
    Private { dotgit: Node },
    /// A `.git` file: a git file of ours on it, naming the git dir in a scaffold in the room.
    File(Box<FileView>),
}

/// [`Wanted::File`]: the `.git` file followed, the room, the git dir shown and where.
struct FileView {
    gf: GitFile,
    room: Node,
    inner: Inner,
    shape: Shape,
}

/// The git dir a `.git` file's view shows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Inner {
    /// The VM's own git dir, made from the worktree's HEAD and index and the common dir's refs.
    Private,
    /// The common dir itself (a worktree's, or a submodule's git dir), read-only or not.
    Common { ro: bool },
}

/// Where things are in a scaffold (the module's layout): the directory the git dir is
/// mounted on (`c[/d...]/.git`, `depth` deep), the git dir git is pointed at, and for a git
/// dir whose `core.worktree` climbs back (a submodule's), the link it climbs to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    /// The mount point of the git dir, relative to the scaffold.
    mount: PathBuf,
    /// What git is told (`gitdir: ...`), relative to the scaffold.
    gitdir: PathBuf,
    /// `<rel>`: a symlink back to the view root, for `core.worktree = ../(depth)<rel>`.
    back: Option<Vec<OsString>>,
}

/// The scaffold's own names: its top directory (named `.git`, which git never walks into
/// or cleans; search-only), the git file in it, and what hides the rest from git.
const TOP: &str = ".git";
const GITFILE: &str = ".git/gitfile";
const GITIGNORE: &str = ".gitignore";

/// Where a scaffold puts `gf`'s git dir (the module's layout): `.git/[d/...]c/.git`, `depth`
/// levels deep (3 but for a climbing `core.worktree`). `Err`: the git dir cannot be shown
/// without the host's paths (what `core.worktree` or `commondir` say).
fn shape_for(gf: &GitFile, inner: Inner) -> Result<Shape> {
    let at = |depth: usize| {
        let mut p = PathBuf::from(TOP);
        for _ in 3..depth {
            p.push("d");
        }
        p.push("c");
        p.push(".git");
        p
    };
    if inner == Inner::Private {
        let mount = at(3);
        return Ok(Shape {
            gitdir: mount.clone(),
            mount,
            back: None,
        });
    }
    match &gf.layout {
        Layout::Worktree { id } => {
            let mount = at(3);
            Ok(Shape {
                gitdir: mount.join("worktrees").join(id),
                mount,
                back: None,
            })
        }
        Layout::Own {
            worktree: CoreWorktree::Unset,
        } => {
            let mount = at(3);
            Ok(Shape {
                gitdir: mount.clone(),
                mount,
                back: None,
            })
        }
        Layout::Own {
            worktree: CoreWorktree::Climb(c),
        } => {
            // git does chdir(git dir), then chdir(core.worktree): the git dir `ups` deep, and
            // `<rel>` at the top leading back to the view. (A submodule's git dir is at least
            // `.git/modules/<name>`: 3.)
            if c.ups < 3 {
                bail!(
                    "{}'s core.worktree climbs only {} level",
                    show(&gf.common.path),
                    c.ups
                );
            }
            let first = c.rel[0].as_os_str();
            if first == TOP || first == GITIGNORE {
                bail!(
                    "{}'s core.worktree names {}",
                    show(&gf.common.path),
                    paths::show_bytes(first)
                );
            }
            let mount = at(c.ups);
            Ok(Shape {
                gitdir: mount.clone(),
                mount,
                back: Some(c.rel.clone()),
            })
        }
        Layout::Own {
            worktree: CoreWorktree::Unusable(why),
        } => bail!(
            "{}'s core.worktree cannot be followed in the guest: {why}",
            show(&gf.common.path)
        ),
        Layout::Apart => bail!(
            "{}'s common dir {} does not hold it as worktrees/<name>",
            show(&gf.gitdir.path),
            show(&gf.common.path)
        ),
    }
}

/// What a view of `repo` at `place` is to show at `.git` in mode `git`.
fn decide(tree: &Tree, ws: &Node, repo: &Node, git: GitMode, place: Place) -> Result<Wanted> {
    Ok(match gitdir::find(tree, repo)? {
        DotGit::None => Wanted::AsIs,
        DotGit::Dir(d) => match git {
            GitMode::Shared => Wanted::AsIs,
            GitMode::Private if private_possible(&d, &d)? => Wanted::Private { dotgit: d },
            // A git dir it cannot start from (docs/security.md#guest-git): read-only.
            GitMode::Private | GitMode::Readonly => Wanted::Readonly {
                dotgit: d,
                why: None,
            },
        },
        DotGit::Other(n) => Wanted::Readonly {
            dotgit: n,
            why: None,
        },
        DotGit::File(f) => {
            let file = f.try_clone()?;
            match file_view(tree, ws, repo, file, git, place) {
                Ok(Some(w)) => w,
                // No room: nobody shares this view's root (a pool's entry); nothing to say.
                Ok(None) => Wanted::Readonly {
                    dotgit: f,
                    why: None,
                },
                Err(e) => Wanted::Readonly {
                    dotgit: f,
                    why: Some(crate::host::logging::one_line(&e)),
                },
            }
        }
    })
}

/// The view of a `.git` file: `None` when there is no room for its git dir.
fn file_view(
    tree: &Tree,
    ws: &Node,
    repo: &Node,
    file: Node,
    git: GitMode,
    place: Place,
) -> Result<Option<Wanted>> {
    let gf = gitdir::follow(tree, repo, file, &ws.path)?;
    let inner = match git {
        GitMode::Private if private_possible(&gf.gitdir, &gf.common)? => Inner::Private,
        GitMode::Private | GitMode::Readonly => Inner::Common { ro: true },
        GitMode::Shared => Inner::Common { ro: false },
    };
    let shape = shape_for(&gf, inner)?;
    let Some(room) = room_of(repo, place)? else {
        return Ok(None);
    };
    Ok(Some(Wanted::File(Box::new(FileView {
        gf,
        room,
        inner,
        shape,
    }))))
}

/// The room for a `.git` file's git dir at `place` (`None`: not there). An entry's is the
/// repo's own `.microvm-git`: an empty directory of the repo's owner, not a mount point (at
/// the repo's path); a live root's is root's directory beside `current`.
fn room_of(repo: &Node, place: Place) -> Result<Option<Node>> {
    let (dir, owner) = match place {
        Place::Entry => (repo, repo.uid()),
        Place::Live(root) => (root, 0),
    };
    let room = match dir.child(OsStr::new(ROOM)) {
        Ok(n) => n,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => {
            return Err(anyhow::anyhow!(e))
                .with_context(|| format!("cannot open {}", show(&dir.path.join(ROOM))))
        }
    };
    if !room.is_dir() || room.uid() != owner {
        bail!(
            "{} is not a directory of uid {owner}: no room for the guest's git dir",
            show(&room.path)
        );
    }
    if matches!(place, Place::Entry)
        && (is_mount_root(room.fd.as_fd())? || !chase::list_dir(&room)?.is_empty())
    {
        bail!(
            "{} is not an empty directory: no room for the guest's git dir",
            show(&room.path)
        );
    }
    Ok(Some(room))
}

/// Does a view of `repo` at `place` need room for a `.git` file's git dir (its `.git` is a
/// file that can be followed)? For the planner: an entry's room is made in the repo, a live
/// root's beside `current`.
pub fn needs_room(tree: &Tree, ws_path: &Path, repo: &Node) -> bool {
    match gitdir::find(tree, repo) {
        Ok(DotGit::File(f)) => gitdir::follow(tree, repo, f, ws_path).is_ok(),
        _ => false,
    }
}

/// Does the mount on `view` (root of a mount of `repo`; an entry, or a live root's `current`)
/// show `.git` as `git` wants: no mount on it (shared, or no `.git`), a mount of exactly the
/// directory the mode shows (the repo's `.git` read-only, or entry `name`'s private git dir),
/// or for a `.git` file, a git file of ours on it and the git dir in a scaffold in the room?
/// A mode switched in the config is seen at the next start.
#[allow(clippy::too_many_arguments)]
pub fn view_is(
    tree: &Tree,
    ws: &Node,
    name: &OsStr,
    view: &Node,
    repo: &Node,
    git: GitMode,
    place: Place,
) -> Result<bool> {
    let have = match view.child(OsStr::new(".git")) {
        Ok(n) if is_mount_root(n.fd.as_fd())? => Some(n.id()),
        _ => None,
    };
    let own = || {
        ws.child(OsStr::new(PRIVATE_DIR))
            .and_then(|p| p.child(name))
            .and_then(|m| m.child(OsStr::new(GIT)))
    };
    Ok(match decide(tree, ws, repo, git, place)? {
        Wanted::AsIs => have.is_none(),
        Wanted::Readonly { dotgit, .. } => have == Some(dotgit.id()),
        Wanted::Private { .. } => match own() {
            Ok(g) => have == Some(g.id()),
            Err(_) => false,
        },
        Wanted::File(f) => {
            let FileView {
                gf, inner, shape, ..
            } = *f;
            let room = match place {
                Place::Entry => view.child(OsStr::new(ROOM)),
                Place::Live(root) => root.child(OsStr::new(ROOM)),
            };
            let want = match inner {
                Inner::Private => match own() {
                    Ok(g) => g.id(),
                    Err(_) => return Ok(false),
                },
                Inner::Common { .. } => gf.common.id(),
            };
            let ro = matches!(inner, Inner::Common { ro: true });
            have.is_some()
                && match room {
                    Ok(room) if is_mount_root(room.fd.as_fd())? => {
                        match Node::open_at(
                            room.fd.as_fd(),
                            shape.mount.as_os_str(),
                            room.path.join(&shape.mount),
                        ) {
                            Ok(g) => {
                                is_mount_root(g.fd.as_fd())?
                                    && g.id() == want
                                    && rustix::fs::fstatvfs(g.fd.as_fd())?
                                        .f_flag
                                        .contains(rustix::fs::StatVfsMountFlags::RDONLY)
                                        == ro
                            }
                            Err(_) => false,
                        }
                    }
                    _ => false,
                }
        }
    })
}

/// Mounts the guest's view of `repo` on `target`: the repo (see [`idmap::mount_repo`]) with,
/// unless `git` is `shared` and `.git` a directory, the mode's `.git` on top, all attached in
/// one move. `name` is the entry (for the private git dir); `place` where the view goes (for
/// the room a `.git` file's git dir needs).
#[allow(clippy::too_many_arguments)]
pub fn mount(
    tree: &Tree,
    ws: &Node,
    name: &OsStr,
    repo: &Node,
    target: &Node,
    ids: &Ids,
    git: GitMode,
    place: Place,
) -> Result<()> {
    // Every view is put together on a slot (even one with no `.git` of its own): its flags
    // and propagation are set before it is anywhere a guest or another namespace sees it.
    let wanted = decide(tree, ws, repo, git, place)?;
    let stage = stage(tree, ws)?;
    let slot_name = tmp_name();
    let slot = dirs::mkdir_as(&stage, &slot_name, 0, 0)?;
    let mut scaffold_slot: Option<OsString> = None;
    // A scaffold moved beside a live `current` before the view failed goes again (named by
    // its own mount's descriptor: the room's is the directory under it).
    let mut placed: Option<OwnedFd> = None;
    let made = (|| -> Result<()> {
        let top = idmap::mount_repo(repo, &slot, ids, false)?;
        let on = || {
            Node::open_at(top.as_fd(), OsStr::new(".git"), slot.path.join(".git"))
                .context("the slot's .git")
        };
        match wanted {
            Wanted::AsIs => {}
            Wanted::Readonly { dotgit, why } => {
                if let Some(why) = why {
                    read_only_instead(&dotgit, &why);
                }
                idmap::mount_repo(&dotgit, &on()?, ids, true)?;
            }
            Wanted::Private { dotgit } => match private_dir(tree, ws, name, repo, &dotgit, &dotgit)
            {
                Ok(own) => mount_private(tree, &own, &dotgit, &on()?, ids)?,
                // One it cannot copy (a file of root's in it, left by `sudo git`): read-only.
                Err(e) => {
                    read_only_instead(&dotgit, &crate::host::logging::one_line(&e));
                    idmap::mount_repo(&dotgit, &on()?, ids, true)?;
                }
            },
            Wanted::File(f) => {
                let FileView {
                    gf,
                    room,
                    inner,
                    shape,
                } = *f;
                let own = match inner {
                    Inner::Private => {
                        match private_dir(tree, ws, name, repo, &gf.gitdir, &gf.common) {
                            Ok(own) => Some(own),
                            Err(e) => {
                                read_only_instead(&gf.file, &crate::host::logging::one_line(&e));
                                None
                            }
                        }
                    }
                    Inner::Common { .. } => None,
                };
                // A private git dir that could not be made: the common dir read-only.
                let (inner, shape) = match (inner, &own) {
                    (Inner::Private, None) => {
                        let ro = Inner::Common { ro: true };
                        match shape_for(&gf, ro) {
                            Ok(s) => (ro, s),
                            Err(e) => {
                                read_only_instead(&gf.file, &crate::host::logging::one_line(&e));
                                idmap::mount_repo(&gf.file, &on()?, ids, true)?;
                                return move_view(&top, target);
                            }
                        }
                    }
                    _ => (inner, shape),
                };
                let sname = tmp_name();
                let sslot = dirs::mkdir_as(&stage, &sname, 0, 0)?;
                scaffold_slot = Some(sname);
                let prefix = match place {
                    Place::Entry => PathBuf::from(ROOM),
                    Place::Live(_) => Path::new("..").join(ROOM),
                };
                let (uid, gid) = ids.shown(repo.st.st_uid, repo.st.st_gid);
                let scaffold = scaffold(
                    &sslot,
                    &shape,
                    &prefix.join(&shape.gitdir),
                    place,
                    (uid, gid),
                )?;
                let g = Node::open_at(
                    scaffold.as_fd(),
                    shape.mount.as_os_str(),
                    room.path.join(&shape.mount),
                )
                .context("the scaffold's git dir")?;
                match own {
                    Some(own) => mount_private(tree, &own, &gf.common, &g, ids)?,
                    None => {
                        idmap::mount_repo(
                            &gf.common,
                            &g,
                            ids,
                            matches!(inner, Inner::Common { ro: true }),
                        )?;
                    }
                }
                seal_scaffold(&scaffold)?;
                // Our git file on the view's `.git` (a mount point: the guest cannot rename it).
                let file = Node::open_at(
                    scaffold.as_fd(),
                    Path::new(GITFILE).as_os_str(),
                    room.path.join(GITFILE),
                )
                .context("the scaffold's git file")?;
                idmap::mount_repo(&file, &on()?, &Ids::Plain, true)?;
                // (A live root's room is emptied by the plan first: never stack on it.)
                if matches!(place, Place::Live(_)) && is_mount_root(room.fd.as_fd())? {
                    bail!("{} already holds a git dir", show(&room.path));
                }
                let to = match place {
                    Place::Entry => {
                        Node::open_at(top.as_fd(), OsStr::new(ROOM), slot.path.join(ROOM))
                            .context("the view's room")?
                    }
                    Place::Live(_) => room,
                };
                idmap::attach(&scaffold, &to).with_context(|| {
                    format!("cannot move the guest's git dir onto {}", show(&to.path))
                })?;
                step("move scaffold");
                if matches!(place, Place::Live(_)) {
                    placed = Some(scaffold);
                }
            }
        }
        move_view(&top, target)
    })();
    if made.is_err() {
        // Whatever got mounted on the slots goes with them.
        let _ = rustix::mount::unmount(slot.proc_path(), rustix::mount::UnmountFlags::DETACH);
        if let Some(scaffold) = &placed {
            let _ = rustix::mount::unmount(
                chase::proc_path(scaffold.as_fd()),
                rustix::mount::UnmountFlags::DETACH,
            );
        }
    }
    for name in std::iter::once(&slot_name).chain(scaffold_slot.as_ref()) {
        if made.is_err() {
            if let Ok(n) = stage.child(name) {
                if is_mount_root(n.fd.as_fd()).unwrap_or(false) {
                    let _ =
                        rustix::mount::unmount(n.proc_path(), rustix::mount::UnmountFlags::DETACH);
                }
            }
        }
        let _ = nix::unistd::unlinkat(&stage.fd, &**name, nix::unistd::UnlinkatFlags::RemoveDir);
    }
    made
}

/// Says once that the guest gets `dotgit` read-only instead of what its mode asks, and why.
fn read_only_instead(dotgit: &Node, why: &str) {
    tracing::warn!(path = %show(&dotgit.path), action = "git-readonly",
        "the guest gets {} read-only instead of a git dir of its own: {}",
        show(&dotgit.path), why);
}

/// Moves the view put together on a slot (`top`: its root) onto `target`.
fn move_view(top: &OwnedFd, target: &Node) -> Result<()> {
    idmap::attach(top, target)
        .with_context(|| format!("cannot move the guest's view onto {}", show(&target.path)))?;
    step("move view");
    Ok(())
}

/// Mounts the private git dir `own` on `on`, with what is root's in it read-only and the
/// repo's objects (`common`'s) at `host-objects`, read-only.
fn mount_private(tree: &Tree, own: &Node, common: &Node, on: &Node, ids: &Ids) -> Result<()> {
    let g = idmap::mount_repo(own, on, ids, false)?;
    // What is root's in it stays so in the guest's view: each a read-only mount point, which
    // the guest can neither write nor rename away.
    for rel in ROOTS_OWN {
        let theirs = own_child(own, rel)?;
        let view = Node::open_at(g.as_fd(), OsStr::new("."), on.path.clone())?;
        let at = own_child(&view, rel)?;
        idmap::mount_repo(&theirs, &at, ids, true)?;
    }
    let objects = match tree.walk_within(common, Path::new("objects"), Trust::Owners)? {
        Walk::Found(n) if n.is_dir() => n,
        _ => bail!("{} has no objects directory", show(&common.path)),
    };
    let ho = Node::open_at(
        g.as_fd(),
        OsStr::new(HOST_OBJECTS),
        own.path.join(HOST_OBJECTS),
    )
    .context("host-objects")?;
    idmap::mount_repo(&objects, &ho, ids, true)?;
    Ok(())
}

/// A scaffold (the module's layout), mounted on `slot`, holding a `.gitignore` that hides it
/// from the guest's git, our git file (owned `owner`, as the guest's user sees the repo's
/// owner) naming `gitdir`, the directories down to where the git dir goes, and for a
/// climbing `core.worktree` the link back to the view. Returns its mount.
fn scaffold(
    slot: &Node,
    shape: &Shape,
    gitdir: &Path,
    place: Place,
    owner: (u32, u32),
) -> Result<OwnedFd> {
    let what = || {
        format!(
            "cannot make the guest's git dir scaffold on {}",
            show(&slot.path)
        )
    };
    let mnt = idmap::tmpfs(&[("size", "256k"), ("nr_inodes", "256")]).with_context(what)?;
    idmap::attach(&mnt, slot).with_context(what)?;
    step("scaffold");
    let root = Node::open_at(mnt.as_fd(), OsStr::new("."), slot.path.clone())?;
    write_new(&root, GITIGNORE, 0, 0, 0o444, b"*\n")?;
    let top = dirs::mkdir_as(&root, OsStr::new(TOP), 0, 0)?;
    let mut line = b"gitdir: ".to_vec();
    line.extend_from_slice(gitdir.as_os_str().as_encoded_bytes());
    line.push(b'\n');
    let file = Path::new(GITFILE)
        .file_name()
        .context("the git file's name")?;
    write_new(&top, file, owner.0, owner.1, 0o444, &line)?;
    let mut dir = top;
    for part in shape.mount.components().skip(1) {
        dir = dirs::mkdir_as(&dir, part.as_os_str(), 0, 0)?;
    }
    if let Some(rel) = &shape.back {
        let (last, parents) = rel.split_last().context("core.worktree names nothing")?;
        let mut dir = root.try_clone()?;
        for p in parents {
            dir = dirs::mkdir_as(&dir, p, 0, 0)?;
        }
        // From `<scaffold>/<rel>` back up to the scaffold, then to the view: its parent for
        // an entry's room, `current` beside it for a live root's.
        let mut back = PathBuf::new();
        for _ in 0..rel.len() {
            back.push("..");
        }
        if let Place::Live(_) = place {
            back.push(LIVE_CURRENT);
        }
        rustix::fs::symlinkat(&back, dir.fd.as_fd(), last.as_os_str())
            .with_context(|| format!("cannot make the link {}", show(&dir.path.join(last))))?;
        step("scaffold link");
    }
    Ok(mnt)
}

/// The scaffold done: its top directory search-only (what `git clean -ffdx` in the guest
/// would empty it cannot list: its user's clean stops there), the whole of it read-only.
fn seal_scaffold(mnt: &OwnedFd) -> Result<()> {
    rustix::fs::chmodat(
        mnt.as_fd(),
        TOP,
        rustix::fs::Mode::from_raw_mode(0o111),
        rustix::fs::AtFlags::empty(),
    )
    .context("cannot seal the scaffold")?;
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        &chase::proc_path(mnt.as_fd()),
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context("cannot make the scaffold read-only")?;
    step("scaffold sealed");
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

/// The private git dir of entry `name` for `repo` (whose git dir is `gitdir`, its objects,
/// refs and config in `common`: the same directory but for a `.git` file's): the existing one
/// when it was made from this repo (the guest's commits survive restarts and relinks), else
/// a new one, the old one moved aside (`<entry>.<time>`), never deleted.
pub fn private_dir(
    tree: &Tree,
    ws: &Node,
    name: &OsStr,
    repo: &Node,
    gitdir: &Node,
    common: &Node,
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
    let made = make_private(&top, &tmp, repo, gitdir, common, owner);
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

/// Makes a new private git dir `<top>/<tmp>/git` (see the module's layout): HEAD and the
/// index from `gitdir` (a worktree's own), refs, `packed-refs`, `shallow` and the object
/// format from `common`.
fn make_private(
    top: &Node,
    tmp: &OsStr,
    repo: &Node,
    gitdir: &Node,
    common: &Node,
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
    let sha256 = read_opt(common, OsStr::new("config"), SMALL)?.is_some_and(|c| is_sha256(&c));
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
    for (from, file, max) in [
        (gitdir, "HEAD", SMALL),
        (common, "packed-refs", SMALL),
        (common, "shallow", SMALL),
        (gitdir, "index", INDEX_MAX),
    ] {
        if let Some(bytes) = read_opt(from, OsStr::new(file), max)? {
            write_new(&git, file, owner.0, owner.1, 0o644, &bytes)?;
        }
    }
    if read_opt(gitdir, OsStr::new("HEAD"), SMALL)?.is_none() {
        bail!("{} has no HEAD: not a git dir", show(&gitdir.path));
    }
    let refs = dirs::mkdir_as(&git, OsStr::new("refs"), owner.0, owner.1)?;
    for sub in ["heads", "tags"] {
        dirs::mkdir_as(&refs, OsStr::new(sub), owner.0, owner.1)?;
    }
    if let Ok(theirs) = common.child(OsStr::new("refs")) {
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

/// What a private git dir cannot start from: a git dir without `HEAD`, a reftable repo. The
/// read-only view then. (`gitdir` holds HEAD, `common` the refs: one directory but for a
/// `.git` file's.)
fn private_possible(gitdir: &Node, common: &Node) -> Result<bool> {
    Ok(gitdir.is_dir()
        && read_opt(gitdir, OsStr::new("HEAD"), SMALL)?.is_some()
        && common.child(OsStr::new("reftable")).is_err())
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
