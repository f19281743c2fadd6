//! `microvm-link fetch [VM]` (docs/security.md#fetch): the guest's branches, from the VM's
//! own git dir, into the host repo as remote-tracking refs `refs/remotes/<entry>/<branch>`.
//!
//! Runs as the user, never as root. It reads nothing the guest controls but objects and refs:
//! the refs are parsed here (a name and an object id per branch, checked), and git is given a
//! temporary git dir of ours whose config we wrote and whose objects are the guest's (and the
//! repo's) through alternates: no config, hook or attribute of the guest's is ever read.

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd::flow::Env;
use crate::engine::entry::Workspace;
use crate::engine::links::read_record;
use crate::engine::{gitdir, gitview};
use crate::fs::chase::{self, Node};
use crate::fs::paths::show;
use crate::model::config::GitMode;
use crate::model::names::VmName;
use crate::model::workspace::entry_name_of;

/// What one fetch did, in one line.
#[derive(Debug)]
pub struct Fetched {
    pub entry: String,
    pub line: String,
}

/// Fetches from every private git dir that `vm` (or, without one, every VM that sees the repo
/// of the working directory) serves to its guest.
pub fn run(env: &Env, vm: Option<&VmName>) -> Result<Vec<Fetched>> {
    let ws = Workspace::find(&env.tree, &env.cfg)?
        .with_context(|| format!("no workspace dir {}", show(&env.cfg.workspace_dir)))?;
    let links = ws.links()?;
    // (entry, repo inside path)
    let mut todo: Vec<(String, PathBuf)> = Vec::new();
    match vm {
        Some(vm) => {
            crate::model::runner::check_known(&env.tree, &env.cfg, vm)?;
            for s in crate::model::runner::shares(&env.tree, &env.cfg, vm)? {
                let Some(name) = entry_name_of(&env.cfg.workspace_dir, &s.path) else {
                    continue;
                };
                if let Some(rec) = read_record(links.as_ref(), &name)? {
                    let name = name.to_string_lossy().into_owned();
                    if !todo.iter().any(|(n, _)| *n == name) {
                        todo.push((name, rec.target));
                    }
                }
            }
            if todo.is_empty() {
                bail!("VM {vm} has no linked entry: nothing to fetch");
            }
        }
        None => {
            let repo = env.repo(None)?;
            for name in crate::fs::chase::list_dir(&links_or_empty(&ws)?)? {
                if let Some(rec) = read_record(links.as_ref(), &name)? {
                    if rec.target == repo.path {
                        todo.push((name.to_string_lossy().into_owned(), rec.target));
                    }
                }
            }
            if todo.is_empty() {
                bail!(
                    "{} is not linked into any VM: nothing to fetch",
                    show(&repo.path)
                );
            }
        }
    }
    let mut out = Vec::new();
    for (entry, repo) in todo {
        let line = match ws.guest_of(OsStr::new(&entry))?.git {
            GitMode::Shared => format!(
                "{entry}: nothing to fetch: git = shared, the guest writes the repo's own .git"
            ),
            GitMode::Readonly => {
                format!("{entry}: nothing to fetch: git = readonly, the guest cannot commit")
            }
            GitMode::Private => fetch_one(env, &entry, &repo)
                .with_context(|| format!("fetching from {entry} into {}", show(&repo)))?,
        };
        out.push(Fetched { entry, line });
    }
    Ok(out)
}

/// What `microvm-link shell` says when its session ends: what arrived from the VM's own git
/// dirs, in one line; `None` when the VM keeps none (or nothing could be read: the session's
/// exit status is what matters then, and `microvm-link fetch` says why).
pub fn after_shell(env: &Env, vm: &VmName) -> Option<String> {
    let done = run(env, Some(vm)).ok()?;
    let lines: Vec<String> = done
        .into_iter()
        .filter(|f| !f.line.contains(": nothing to fetch"))
        .map(|f| f.line)
        .collect();
    (!lines.is_empty()).then(|| format!("fetched {}", lines.join("; ")))
}

fn links_or_empty(ws: &Workspace) -> Result<crate::fs::chase::Node> {
    ws.links()?.context("no link records yet: nothing to fetch")
}

/// One entry's private git dir into `repo` (an inside path).
fn fetch_one(env: &Env, entry: &str, repo: &Path) -> Result<String> {
    let own_path = env.root.real(&gitview::private_path(
        &env.cfg.workspace_dir,
        OsStr::new(entry),
    ));
    let repo_real = env.root.real(repo);
    let Some(own) = open_dir(&own_path)? else {
        return Ok(format!("{entry}: nothing to fetch: no private git dir yet (the VM has not started with this link)"));
    };
    // Made from this repo? (`origin` is root's: the guest cannot forge it.)
    let origin = read_file(&own, "origin", 4096, Some(0))?.unwrap_or_default();
    let made_from = String::from_utf8_lossy(&origin);
    if made_from.lines().next() != Some(&*repo.to_string_lossy()) {
        return Ok(format!(
            "{entry}: nothing to fetch: its private git dir was made from another repo"
        ));
    }
    let refs = guest_branches(&own)?;
    // A git dir of ours beside the private one (same file system: the guest's objects are
    // hard-linked in, not followed through an alternates file the guest could write).
    let parent = own_path.parent().unwrap_or(&own_path);
    let tmp = tempfile::Builder::new()
        .prefix("fetch.")
        .tempdir_in(parent)
        .context("cannot make a temporary git dir")?;
    let t = tmp.path();
    std::fs::create_dir_all(t.join("refs"))?;
    std::fs::create_dir_all(t.join("objects/info"))?;
    std::fs::create_dir_all(t.join("objects/pack"))?;
    std::fs::write(t.join("HEAD"), "ref: refs/heads/none\n")?;
    let ours = read_file(&own, "config", 4096, Some(0))?.unwrap_or_default();
    std::fs::write(
        t.join("config"),
        gitview::config(true, gitview::is_sha256(&ours)),
    )?;
    let mut alt = std::fs::File::create(t.join("objects/info/alternates"))?;
    alt.write_all(
        env.root
            .real(&repo_objects(env, repo)?)
            .as_os_str()
            .as_encoded_bytes(),
    )?;
    alt.write_all(b"\n")?;
    take_objects(&own, &t.join("objects"))?;
    let mut packed = String::from("# pack-refs with: sorted \n");
    for (name, id) in &refs {
        packed.push_str(&format!("{id} refs/heads/{name}\n"));
    }
    std::fs::write(t.join("packed-refs"), packed)?;
    let prefix = format!("refs/remotes/{entry}");
    let before = remote_refs(&repo_real, &prefix)?;
    let out = git(&repo_real)
        .args([
            "fetch",
            "--no-tags",
            "--no-write-fetch-head",
            "--prune",
            "--quiet",
        ])
        .arg(t)
        .arg(format!("+refs/heads/*:{prefix}/*"))
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "git fetch failed: {}",
            err.lines().last().unwrap_or("").trim()
        );
    }
    let after = remote_refs(&repo_real, &prefix)?;
    let changed: Vec<&str> = after
        .iter()
        .filter(|(n, id)| before.iter().all(|(m, old)| m != n || old != id))
        .map(|(n, _)| n.as_str())
        .collect();
    let gone = before
        .iter()
        .filter(|(n, _)| after.iter().all(|(m, _)| m != n))
        .count();
    Ok(match (changed.len(), gone) {
        (0, 0) => format!(
            "{entry}: up to date ({} branches under {prefix}/)",
            after.len()
        ),
        _ => format!(
            "{entry}: {} branch{} new or moved ({}){}, under {prefix}/",
            changed.len(),
            if changed.len() == 1 { "" } else { "es" },
            changed.join(", "),
            if gone > 0 {
                format!(", {gone} gone")
            } else {
                String::new()
            }
        ),
    })
}

/// The repo's own objects (an inside path): in its `.git`, or for a worktree or a submodule
/// (`.git` a file) in the common dir it names, followed as link follows it.
fn repo_objects(env: &Env, repo: &Path) -> Result<PathBuf> {
    let node = match env.tree.walk(repo, chase::Trust::Owners)? {
        chase::Walk::Found(n) if n.is_dir() => n,
        _ => bail!("{} is not a directory", show(repo)),
    };
    Ok(match gitdir::find(&env.tree, &node)? {
        gitdir::DotGit::Dir(d) => d.path.join("objects"),
        gitdir::DotGit::File(f) => gitdir::follow(&env.tree, &node, f, &env.cfg.workspace_dir)?
            .common
            .path
            .join("objects"),
        _ => bail!("{} has no git dir", show(repo)),
    })
}

/// `git -C repo` with nothing of the environment's git settings.
fn git(repo: &Path) -> Command {
    let mut c = Command::new("git");
    for (k, _) in std::env::vars_os() {
        if k.as_encoded_bytes().starts_with(b"GIT_") {
            c.env_remove(k);
        }
    }
    c.arg("-C").arg(repo);
    c
}

/// `(short name, object id)` of every ref under `prefix` in `repo`.
fn remote_refs(repo: &Path, prefix: &str) -> Result<Vec<(String, String)>> {
    let out = git(repo)
        .args(["for-each-ref", "--format=%(objectname) %(refname)", prefix])
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git for-each-ref failed in {}: {}",
            show(repo),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (id, name) = l.split_once(' ')?;
            Some((
                name.strip_prefix(prefix)?
                    .trim_start_matches('/')
                    .to_string(),
                id.to_string(),
            ))
        })
        .collect())
}

/// The guest's branches: loose refs under `refs/heads` over `packed-refs`, each name and object
/// id checked; anything else (a symlink, a non-regular file, a bad name) is skipped. Every
/// step is `openat` without following a symlink: the guest owns these directories.
pub fn guest_branches(own: &Node) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    if let Some(text) = read_file(own, "packed-refs", 64 << 20, None)? {
        for line in String::from_utf8_lossy(&text).lines() {
            let Some((id, name)) = line.split_once(' ') else {
                continue;
            };
            if let Some(branch) = name.strip_prefix("refs/heads/") {
                if valid_id(id) && valid_branch(branch) {
                    out.push((branch.to_string(), id.to_string()));
                }
            }
        }
    }
    let Some(heads) = child_dir(own, "refs").and_then(|r| child_dir(&r, "heads")) else {
        out.sort();
        return Ok(out);
    };
    let mut todo = vec![(heads, String::new(), 0u32)];
    while let Some((dir, prefix, depth)) = todo.pop() {
        for name in chase::list_dir(&dir).unwrap_or_default() {
            let name = name.to_string_lossy().into_owned();
            let full = format!("{prefix}{name}");
            let Ok(n) = dir.child(OsStr::new(&name)) else {
                continue;
            };
            if n.is_dir() && depth < 16 {
                todo.push((n, format!("{full}/"), depth + 1));
            } else if let Some(text) = read_file(&dir, &name, 4096, None)? {
                let id = String::from_utf8_lossy(&text).trim().to_string();
                if valid_id(&id) && valid_branch(&full) {
                    out.retain(|(n, _)| *n != full);
                    out.push((full, id));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The private git dir (or `None`), opened without following a final symlink.
fn open_dir(p: &Path) -> Result<Option<Node>> {
    let parent = p.parent().context("no parent")?;
    let name = p.file_name().context("no name")?;
    let Ok(dir) = std::fs::File::open(parent) else {
        return Ok(None);
    };
    match Node::open_at(dir.as_fd(), name, p.to_path_buf()) {
        Ok(n) if n.is_dir() => Ok(Some(n)),
        _ => Ok(None),
    }
}

/// A subdirectory (not a symlink) of `dir`.
fn child_dir(dir: &Node, name: &str) -> Option<Node> {
    dir.child(OsStr::new(name)).ok().filter(Node::is_dir)
}

/// Regular file `name` of `dir` ([`chase::read_at`]); `None` for anything else (missing, a
/// symlink, too large, another owner's): what the guest left that fetch does not take.
fn read_file(dir: &Node, name: &str, max: u64, owner: Option<u32>) -> Result<Option<Vec<u8>>> {
    Ok(chase::read_at(dir, OsStr::new(name), max, owner)
        .ok()
        .flatten())
}

/// The guest's objects into `to` (our git dir's `objects`): loose objects (`xx/<hex>`) and
/// packs (`pack/pack-<hex>.{pack,idx}`), regular files only, hard-linked (copied where a link
/// is refused); nothing else of the guest's `objects` is read, its `info/alternates` least.
fn take_objects(own: &Node, to: &Path) -> Result<()> {
    let Some(objects) = child_dir(own, "objects") else {
        return Ok(());
    };
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    for sub in chase::list_dir(&objects)? {
        let sub = sub.to_string_lossy().into_owned();
        let Some(dir) = child_dir(&objects, &sub) else {
            continue;
        };
        let keep = |f: &str| match sub.as_str() {
            "pack" => f
                .strip_prefix("pack-")
                .and_then(|r| r.strip_suffix(".pack").or_else(|| r.strip_suffix(".idx")))
                .is_some_and(hex),
            s if s.len() == 2 && hex(s) => (f.len() == 38 || f.len() == 62) && hex(f),
            _ => false,
        };
        for f in chase::list_dir(&dir)? {
            let f = f.to_string_lossy().into_owned();
            if !keep(&f) {
                continue;
            }
            let Ok(n) = dir.child(OsStr::new(&f)) else {
                continue;
            };
            if !chase::is_regular(&n.st) {
                continue;
            }
            std::fs::create_dir_all(to.join(&sub))?;
            let dest = to.join(&sub).join(&f);
            if nix::unistd::linkat(
                &dir.fd,
                f.as_str(),
                nix::fcntl::AT_FDCWD,
                &dest,
                nix::fcntl::AtFlags::empty(),
            )
            .is_err()
            {
                if let Some(bytes) = read_file(&dir, &f, u64::MAX, None)? {
                    std::fs::write(&dest, bytes)?;
                }
            }
        }
    }
    Ok(())
}

/// A SHA-1 or SHA-256 object id in lower-case hex.
pub fn valid_id(id: &str) -> bool {
    (id.len() == 40 || id.len() == 64) && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A branch name we pass on: what `git check-ref-format` accepts, narrowed to characters
/// that are never an option, a glob or a path trick.
pub fn valid_branch(name: &str) -> bool {
    !name.is_empty()
        && name != "HEAD"
        && name.len() <= 200
        && name.split('/').all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && !c.starts_with('-')
                && !c.ends_with(".lock")
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
        })
        && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_and_ids_pass() {
        assert!(valid_branch("main"));
        assert!(valid_branch("feature/x-1.2"));
        for bad in [
            "", "-x", "a/../b", ".hidden", "a.lock", "a b", "a/", "x*", "a\nb", "@{1}",
        ] {
            assert!(!valid_branch(bad), "{bad:?}");
        }
        assert!(valid_id(&"a".repeat(40)));
        assert!(!valid_id(&"A".repeat(40)));
        assert!(!valid_id("abc"));
    }
}
