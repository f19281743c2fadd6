//! A repo whose `.git` is a file (docs/security.md#git-file): a linked worktree
//! (`gitdir: /home/alice/proj/.git/worktrees/feat-x`), a submodule checkout
//! (`gitdir: ../.git/modules/sub`) or a repo made with `--separate-git-dir`.
//!
//! The `.git` file, the git dir it names and that git dir's `commondir` are the user's to
//! write, and root follows them: each file is read with [`chase::read_at`] (a regular file of
//! the repo's owner, never through a symlink, bounded), each path is walked from a descriptor
//! with [`Trust::Owners`] (a user's tree never leads root out of it; a symlink of someone
//! else's is refused), and what is reached must be a directory of the repo's owner outside
//! the workspace dir. Anything else is refused in one line naming what and where.
//!
//! Paths are taken as git writes them: absolute, or relative with leading `..` only (git's own
//! `../../.git/modules/sub`, `../..`). A `..` after a name would mean the text to us and the
//! kernel's walk to git, which differ across a symlink: refused.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::fs::chase::{self, Node, Tree, Trust, Walk};
use crate::fs::paths::show;

/// A `.git` file, a `commondir` or a config larger than this is not one.
const SMALL: u64 = 64 << 10;

/// A repo's `.git` file, followed.
#[derive(Debug)]
pub struct GitFile {
    /// `<repo>/.git`, the file.
    pub file: Node,
    /// The git dir it names: HEAD and the index (a worktree's `<common>/worktrees/<id>`, a
    /// submodule's `<super>/.git/modules/<name>`).
    pub gitdir: Node,
    /// Where objects, refs and the config are: what the git dir's `commondir` names, else the
    /// git dir itself.
    pub common: Node,
    pub layout: Layout,
}

/// How the git dir sits in its common dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A linked worktree: the git dir is `<common>/worktrees/<id>`.
    Worktree { id: OsString },
    /// The git dir is its own common dir (a submodule, `--separate-git-dir`), with what its
    /// `core.worktree` says.
    Own { worktree: CoreWorktree },
    /// A `commondir` that does not hold the git dir as `worktrees/<id>`: git works with it,
    /// but only a copy (git = private) can be shown without the host's paths.
    Apart,
}

/// A git dir's `core.worktree`, which git honours over where the `.git` file was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreWorktree {
    Unset,
    /// `../` `ups` times, then `rel`: where git's `chdir(gitdir); chdir(value)` lands.
    Climb(Climb),
    /// Set, but not in that form (absolute, `..` in the middle, or not read): why.
    Unusable(String),
}

/// A relative `core.worktree`: `ups` times `..`, then the names in `rel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Climb {
    pub ups: usize,
    pub rel: Vec<OsString>,
}

/// The path a `.git` file names (`gitdir: <path>`, as git reads it: the trailing newlines and
/// carriage returns go, nothing else).
pub fn parse_gitfile(bytes: &[u8]) -> Result<PathBuf> {
    let Some(rest) = bytes.strip_prefix(b"gitdir: ") else {
        bail!("it does not start with \"gitdir: \"");
    };
    let path = trim_end(rest);
    check_path_bytes(path)?;
    Ok(PathBuf::from(OsString::from_vec(path.to_vec())))
}

/// The path a git dir's `commondir` file holds (git trims the trailing newlines).
pub fn parse_commondir(bytes: &[u8]) -> Result<PathBuf> {
    let path = trim_end(bytes);
    check_path_bytes(path)?;
    Ok(PathBuf::from(OsString::from_vec(path.to_vec())))
}

fn trim_end(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && matches!(b[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &b[..end]
}

fn check_path_bytes(p: &[u8]) -> Result<()> {
    if p.is_empty() {
        bail!("it names no path");
    }
    if p.iter().any(|&c| c == 0 || c == b'\n' || c == b'\r') {
        bail!("the path in it holds a control character");
    }
    Ok(())
}

/// `p` (from a file in `base`) as an absolute path: an absolute `p` as it is, a relative one
/// below `base` after its leading `..`. A `..` anywhere else is refused (see the
/// module's note), as is a `..` above `/`. (A `.` is no step: the kernel skips it as we do.)
pub fn resolve(base: &Path, p: &Path) -> Result<PathBuf> {
    let mut out = if p.is_absolute() {
        PathBuf::from("/")
    } else {
        base.to_path_buf()
    };
    let mut named = false;
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::ParentDir if !named => {
                if !out.pop() {
                    bail!("{} goes above /", show(p));
                }
            }
            Component::Normal(n) => {
                named = true;
                out.push(n);
            }
            Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                bail!("{} has a `..` after a name", show(p))
            }
        }
    }
    Ok(out)
}

/// The value of `core.worktree` in a git config, read the simple way git writes it
/// (`[core]`, then `worktree = value`, the value plain or in double quotes): `None` when it is
/// not set; `Some(Err)` for a form this reader does not take (an escape it does not know, a
/// line continued, an include it will not follow). The last one wins, as in git.
pub fn core_worktree(config: &[u8]) -> Option<Result<String>> {
    let text = match std::str::from_utf8(config) {
        Ok(t) => t,
        Err(_) => return Some(Err(anyhow::anyhow!("the config is not UTF-8"))),
    };
    let mut in_core = false;
    let mut found: Option<Result<String>> = None;
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(head) = l.strip_prefix('[') {
            let Some((name, _)) = head.split_once(']') else {
                return Some(Err(anyhow::anyhow!("a section header is not closed")));
            };
            let name = name.trim();
            if name.eq_ignore_ascii_case("include")
                || name.to_ascii_lowercase().starts_with("includeif")
            {
                // What an include says is not read here: a core.worktree there would be missed.
                found.get_or_insert_with(|| Err(anyhow::anyhow!("the config has includes")));
            }
            in_core = name.eq_ignore_ascii_case("core");
            // `[core] worktree = x` on one line
            let after = head.split_once(']').map(|(_, a)| a.trim()).unwrap_or("");
            if in_core && !after.is_empty() {
                if let Some(v) = key_value(after, "worktree") {
                    found = Some(v);
                }
            }
            continue;
        }
        if in_core {
            if let Some(v) = key_value(l, "worktree") {
                found = Some(v);
            }
        }
    }
    found
}

/// `key = value` (key case-insensitive) -> the value, unquoted.
fn key_value(line: &str, key: &str) -> Option<Result<String>> {
    let (k, v) = match line.split_once('=') {
        Some((k, v)) => (k.trim(), v.trim()),
        None => (line.trim(), ""),
    };
    if !k.eq_ignore_ascii_case(key) {
        return None;
    }
    Some(unquote(v))
}

fn unquote(v: &str) -> Result<String> {
    let mut out = String::new();
    let mut quoted = false;
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' => match chars.next() {
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                _ => bail!("an escape in core.worktree"),
            },
            '#' | ';' if !quoted => break,
            c => out.push(c),
        }
    }
    if quoted {
        bail!("an unclosed quote in core.worktree");
    }
    Ok(out.trim_end().to_string())
}

/// A `core.worktree` value as a climb: `../` at least once, then one or more plain names.
pub fn climb_of(value: &str) -> Result<Climb> {
    let p = Path::new(value);
    let mut ups = 0;
    let mut rel = Vec::new();
    for c in p.components() {
        match c {
            Component::ParentDir if rel.is_empty() => ups += 1,
            Component::Normal(n) => rel.push(n.to_os_string()),
            _ => bail!("core.worktree {value:?} is not ../…/<path>"),
        }
    }
    if ups == 0 || rel.is_empty() {
        bail!("core.worktree {value:?} is not ../…/<path>");
    }
    Ok(Climb { ups, rel })
}

/// A name git would take for a worktree's id, and that can stand in a `gitdir:` line.
pub fn plain_name(n: &OsStr) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b != b"."
        && b != b".."
        && !b
            .iter()
            .any(|&c| c == b'/' || c == 0 || c == b'\n' || c == b'\r')
}

/// Follows `repo`'s `.git` file `file` (found in `repo` by the caller). Refused, in one line:
/// a file that is not one (not regular, not the owner's, too large, not `gitdir: `), a path
/// that leads through a symlink of someone else's, to something that is not a directory of
/// the repo's owner, or into `workspace_dir`.
pub fn follow(tree: &Tree, repo: &Node, file: Node, workspace_dir: &Path) -> Result<GitFile> {
    let owner = repo.uid();
    let at = show(&file.path);
    let bytes = chase::read_at(repo, OsStr::new(".git"), SMALL, Some(owner))?
        .with_context(|| format!("{at} is gone"))?;
    let named = parse_gitfile(&bytes).with_context(|| format!("{at} is not a git file"))?;
    let gitdir_path = resolve(&repo.path, &named).with_context(|| format!("in {at}"))?;
    let gitdir = reach(tree, &gitdir_path, owner, workspace_dir)
        .with_context(|| format!("the git dir {at} names"))?;
    let (common, has_commondir) =
        match chase::read_at(&gitdir, OsStr::new("commondir"), SMALL, Some(owner))? {
            None => (gitdir.try_clone()?, false),
            Some(b) => {
                let cd = show(&gitdir.path.join("commondir"));
                let p = parse_commondir(&b).with_context(|| format!("{cd} is not one"))?;
                let path = resolve(&gitdir.path, &p).with_context(|| format!("in {cd}"))?;
                let common = reach(tree, &path, owner, workspace_dir)
                    .with_context(|| format!("the common dir {cd} names"))?;
                (common, true)
            }
        };
    let layout = if has_commondir {
        worktree_id(tree, &gitdir, &common)
    } else {
        Layout::Own {
            worktree: match chase::read_at(&common, OsStr::new("config"), SMALL, Some(owner)) {
                Ok(Some(c)) => match core_worktree(&c) {
                    None => CoreWorktree::Unset,
                    Some(Ok(v)) => match climb_of(&v) {
                        Ok(c) => CoreWorktree::Climb(c),
                        Err(e) => CoreWorktree::Unusable(e.to_string()),
                    },
                    Some(Err(e)) => CoreWorktree::Unusable(e.to_string()),
                },
                Ok(None) => CoreWorktree::Unset,
                Err(e) => CoreWorktree::Unusable(crate::host::logging::one_line(&e)),
            },
        }
    };
    Ok(GitFile {
        file,
        gitdir,
        common,
        layout,
    })
}

/// The worktree's id when `gitdir` is `<common>/worktrees/<id>` (the same directory), else
/// [`Layout::Apart`].
fn worktree_id(tree: &Tree, gitdir: &Node, common: &Node) -> Layout {
    let Some(id) = gitdir.path.file_name().filter(|n| plain_name(n)) else {
        return Layout::Apart;
    };
    let there = Path::new("worktrees").join(id);
    match tree.walk_within(common, &there, Trust::Owners) {
        Ok(Walk::Found(n)) if n.id() == gitdir.id() => Layout::Worktree {
            id: id.to_os_string(),
        },
        _ => Layout::Apart,
    }
}

/// The directory at `path`, walked as [`Trust::Owners`] says, of `owner`'s, not in
/// `workspace_dir`.
fn reach(tree: &Tree, path: &Path, owner: u32, workspace_dir: &Path) -> Result<Node> {
    let n = match tree.walk(path, Trust::Owners)? {
        Walk::Found(n) => n,
        Walk::Missing { .. } => bail!("{} does not exist", show(path)),
    };
    if !n.is_dir() {
        bail!("{} is not a directory", show(&n.path));
    }
    if n.path.starts_with(workspace_dir) {
        bail!(
            "{} is inside the workspace dir {}",
            show(&n.path),
            show(workspace_dir)
        );
    }
    if n.uid() != owner {
        bail!(
            "{} is owned by uid {}, not by the repo's owner (uid {owner})",
            show(&n.path),
            n.uid()
        );
    }
    Ok(n)
}

/// What `repo`'s `.git` is.
#[derive(Debug)]
pub enum DotGit {
    /// No `.git`.
    None,
    /// A git dir of its own (found in the repo, symlinks within it followed).
    Dir(Node),
    /// A `.git` file (not followed yet: [`follow`]).
    File(Node),
    /// Something else (a socket, a fifo): shown read-only, as it is.
    Other(Node),
}

/// `repo`'s `.git`, found within the repo (a symlink leading out of it is refused).
pub fn find(tree: &Tree, repo: &Node) -> Result<DotGit> {
    Ok(
        match tree.walk_within(repo, Path::new(".git"), Trust::Owners)? {
            Walk::Found(n) if n.is_dir() => DotGit::Dir(n),
            Walk::Found(n) if chase::is_regular(&n.st) => DotGit::File(n),
            Walk::Found(n) => DotGit::Other(n),
            Walk::Missing { .. } => DotGit::None,
        },
    )
}

/// The main repo of a `.git`-file repo, for naming its VM: the directory holding the `.git`
/// that holds the common dir (`/home/alice/proj` for `/home/alice/proj/.git`, the
/// superproject for `<super>/.git/modules/sub`), else the common dir itself (a bare repo's
/// worktree: `/srv/proj.git`).
pub fn main_repo(common: &Path) -> PathBuf {
    common
        .ancestors()
        .find(|a| a.file_name() == Some(OsStr::new(".git")))
        .and_then(Path::parent)
        .unwrap_or(common)
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_files_are_read_as_git_reads_them() {
        assert_eq!(
            parse_gitfile(b"gitdir: /home/a/p/.git/worktrees/x\n").unwrap(),
            PathBuf::from("/home/a/p/.git/worktrees/x")
        );
        assert_eq!(
            parse_gitfile(b"gitdir: ../../.git/modules/s\r\n\n").unwrap(),
            PathBuf::from("../../.git/modules/s")
        );
        // A path may end in a space (git keeps it).
        assert_eq!(parse_gitfile(b"gitdir: a \n").unwrap(), PathBuf::from("a "));
        for bad in [
            &b"gitdir:/x\n"[..],
            b"GITDIR: /x",
            b"gitdir: \n",
            b"gitdir: /a\nb\n",
            b"gitdir: /a\0b",
            b"",
        ] {
            assert!(parse_gitfile(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_commondir(b"../..\n").unwrap(), PathBuf::from("../.."));
        assert!(parse_commondir(b"\n").is_err());
    }

    #[test]
    fn paths_resolve_with_leading_dots_only() {
        let base = Path::new("/home/a/super/libs/sub");
        assert_eq!(
            resolve(base, Path::new("../../.git/modules/libs/sub")).unwrap(),
            PathBuf::from("/home/a/super/.git/modules/libs/sub")
        );
        assert_eq!(
            resolve(Path::new("/p/.git/worktrees/x"), Path::new("../..")).unwrap(),
            PathBuf::from("/p/.git")
        );
        assert_eq!(
            resolve(base, Path::new("/abs/.git/worktrees/w")).unwrap(),
            PathBuf::from("/abs/.git/worktrees/w")
        );
        // (A `.` is no step at all: `/a/./b` is `/a/b` to the kernel as to us.)
        assert_eq!(
            resolve(base, Path::new("/a/./b")).unwrap(),
            PathBuf::from("/a/b")
        );
        assert_eq!(
            resolve(Path::new("/w"), Path::new("./g")).unwrap(),
            PathBuf::from("/w/g")
        );
        for bad in ["a/../b", "../a/../b", "/a/../b", "../../../../../../../x"] {
            assert!(resolve(base, Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn core_worktree_is_read_the_way_git_writes_it() {
        let c = b"[core]\n\trepositoryformatversion = 0\n\tbare = false\n\tworktree = ../../../../libs/sub\n[remote \"origin\"]\n\turl = x\n";
        assert_eq!(core_worktree(c).unwrap().unwrap(), "../../../../libs/sub");
        assert!(core_worktree(b"[core]\n\tbare = false\n[x]\n\tworktree = y\n").is_none());
        assert_eq!(
            core_worktree(b"[Core]\nWorkTree = \"a b\" # c\n")
                .unwrap()
                .unwrap(),
            "a b"
        );
        assert_eq!(
            core_worktree(b"[core]\nworktree = ../a\nworktree = ../b\n")
                .unwrap()
                .unwrap(),
            "../b"
        );
        assert!(core_worktree(b"[core]\nworktree = \"a\\tb\"\n")
            .unwrap()
            .is_err());
        assert!(core_worktree(b"[include]\npath = x\n").unwrap().is_err());
        assert!(core_worktree(b"[core \"x\"]\nworktree = y\n").is_none());
        assert_eq!(
            climb_of("../../../../libs/sub").unwrap(),
            Climb {
                ups: 4,
                rel: vec!["libs".into(), "sub".into()]
            }
        );
        for bad in ["/abs/x", "x", "..", "../a/../b"] {
            assert!(climb_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_main_repo_holds_the_git_dir() {
        assert_eq!(
            main_repo(Path::new("/home/a/proj/.git")),
            PathBuf::from("/home/a/proj")
        );
        assert_eq!(
            main_repo(Path::new("/home/a/super/.git/modules/libs/sub")),
            PathBuf::from("/home/a/super")
        );
        assert_eq!(
            main_repo(Path::new("/srv/proj.git")),
            PathBuf::from("/srv/proj.git")
        );
        assert!(plain_name(OsStr::new("feat-x")));
        for bad in ["", ".", "..", "a/b", "a\nb"] {
            assert!(!plain_name(OsStr::new(bad)), "{bad:?}");
        }
    }
}
