//! The sudo boundary (docs/security.md#sudo-boundary), in one file: who asked ([`Caller`],
//! [`invoking_user`]), how microvm-link becomes root for them ([`become_root`],
//! [`sudo_command`]), what root keeps of their environment ([`harden`]), and how it gives root
//! up to look with their eyes ([`drop_to`]). A user's ids (uid, primary group, groups, name,
//! home) come from the user database here and nowhere else ([`Ids`]).
//!
//! What root then lets a caller do to workspace entries (owners decide) is the engine's:
//! `engine::policy` (`policy::may_change`, `policy::may_link`).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::fs::paths;

/// Whom microvm-link acts for: root itself, or a user (through sudo, or named by root's
/// `--user`). Made by [`Caller::from_uid`] (here, [`invoking_user`]), a `User` is never uid 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Root,
    User(u32),
}

impl Caller {
    /// uid 0 is root; any other uid a user.
    pub fn from_uid(uid: u32) -> Caller {
        match uid {
            0 => Caller::Root,
            u => Caller::User(u),
        }
    }

    /// The uid (0 for root), for what records an owner or takes one.
    pub fn uid(self) -> u32 {
        match self {
            Caller::Root => 0,
            Caller::User(u) => u,
        }
    }

    pub fn is_root(self) -> bool {
        self == Caller::Root
    }

    /// May this caller use what `owner` owns as theirs (link it, restart for it)? Root may
    /// use anything; a user only their own.
    pub fn may_use(self, owner: u32) -> bool {
        match self {
            Caller::Root => true,
            Caller::User(u) => u == owner,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Root => f.write_str("root"),
            Caller::User(u) => write!(f, "uid {u}"),
        }
    }
}

/// A user's ids as the user database gives them: what a process of theirs runs with, and
/// the environment that says who they are. One lookup; a uid the database does not know runs
/// with its own number as its group and no name (as before: sudo needs an entry, so only
/// root's `--user` can name such a uid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
    pub name: Option<String>,
    pub home: Option<PathBuf>,
}

impl Ids {
    pub fn of(uid: u32) -> Ids {
        match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
            Ok(Some(u)) => Ids {
                uid,
                gid: u.gid.as_raw(),
                name: Some(u.name),
                home: Some(u.dir),
            },
            _ => Ids {
                uid,
                gid: uid,
                name: None,
                home: None,
            },
        }
    }

    /// The groups a login of theirs has (the primary one included): the user database's
    /// list, or only the primary group for a uid it does not know.
    pub fn groups(&self) -> Vec<nix::unistd::Gid> {
        let gid = nix::unistd::Gid::from_raw(self.gid);
        self.name
            .as_deref()
            .and_then(|n| std::ffi::CString::new(n).ok())
            .and_then(|n| nix::unistd::getgrouplist(&n, gid).ok())
            .unwrap_or_else(|| vec![gid])
    }

    /// Is this user in `group` (by name), as its primary group or a listed member?
    pub fn in_group(&self, group: &str) -> bool {
        let Ok(Some(g)) = nix::unistd::Group::from_name(group) else {
            return false;
        };
        match &self.name {
            Some(name) => self.gid == g.gid.as_raw() || g.mem.contains(name),
            None => false,
        }
    }
}

/// Who asked. Through sudo (real uid root, `SUDO_UID` set and not 0): the sudo user, who may
/// not name another with `--user`. Root itself: root, or whoever `--user` names. `SUDO_UID`
/// is believed only when the real uid is root too (a set-uid copy must not let the caller
/// claim to be anyone).
pub fn invoking_user(user_flag: Option<&str>) -> Result<Caller> {
    let real = nix::unistd::getuid();
    let sudo = match std::env::var("SUDO_UID") {
        Ok(v) if real.is_root() => Some(
            v.parse::<u32>()
                .with_context(|| format!("SUDO_UID {v:?} is not a number"))?,
        ),
        Ok(_) => {
            bail!("SUDO_UID is set but the real user is uid {real}, not root; refusing to trust it")
        }
        Err(_) => None,
    };
    let uid = match (sudo, user_flag) {
        (Some(uid), Some(_)) if uid != 0 => {
            bail!("--user is refused through sudo (SUDO_UID={uid}): only root itself may act for another user")
        }
        (Some(uid), None) => uid,
        (_, Some(u)) if real.is_root() => match u.parse::<u32>() {
            Ok(n) => n,
            Err(_) => match nix::unistd::User::from_name(u) {
                Ok(Some(user)) => user.uid.as_raw(),
                _ => bail!("--user {u:?}: no such user"),
            },
        },
        (_, Some(_)) => bail!("--user needs root itself"),
        (None, None) => real.as_raw(),
    };
    Ok(Caller::from_uid(uid))
}

/// Whom root runs a helper as when it came through sudo: the sudo user (`SUDO_UID`, not 0),
/// when this process is root and the value is a number; `None` otherwise.
pub fn sudo_user() -> Option<Ids> {
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    let uid = paths::sudo_uid()?.to_str()?.parse::<u32>().ok()?;
    Some(Ids::of(uid))
}

/// Re-executes through sudo unless already root (the NixOS module can allow a group to do so
/// without a password). Re-rooting and acting for someone else are root's own: through sudo
/// they would be refused (`paths::Root::from_args`, [`invoking_user`]), so say so first.
pub fn become_root(root_flag: bool, user_flag: bool) -> Result<()> {
    use std::os::unix::process::CommandExt;
    if nix::unistd::Uid::effective().is_root() {
        return Ok(());
    }
    if root_flag || std::env::var_os(paths::ROOT_ENV).is_some_and(|r| !r.is_empty()) {
        bail!(
            "--root and {} need root itself; through sudo they are refused",
            paths::ROOT_ENV
        );
    }
    if user_flag {
        bail!("--user needs root itself; through sudo it is refused");
    }
    // Set on the re-execution below. The real sudo drops it (env_reset) and makes us root;
    // seeing it while still not root means `sudo` ran us unprivileged: going round again
    // would loop for ever.
    const VIA_SUDO: &str = "MICROVM_LINK_VIA_SUDO";
    let (mut cmd, sudo) = sudo_command();
    if std::env::var_os(VIA_SUDO).is_some() {
        bail!(
            "{sudo} ran microvm-link again as uid {}, not as root; check that {sudo} is the real sudo and allows you to run microvm-link",
            nix::unistd::Uid::effective()
        );
    }
    let exe = std::env::current_exe().context("cannot find microvm-link's own executable")?;
    let err = cmd
        .env(VIA_SUDO, "1")
        .arg("--")
        .arg(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    bail!("microvm-link needs root and could not run {sudo}: {err}")
}

/// NixOS's setuid wrappers: sudo (and sudo-rs) is there, and only there, on a NixOS host.
const WRAPPER_SUDO: &str = "/run/wrappers/bin/sudo";

/// `sudo` for a user asking for root, found when it runs (one package for every host): a
/// packager's fixed path if built with one, else NixOS's wrapper, else sudo from PATH. With
/// no terminal to ask a password on (sudo asks on /dev/tty, not stdin), `-n`: a refusal is at
/// once and says so, never a hang.
pub fn sudo_command() -> (std::process::Command, String) {
    let sudo = option_env!("MICROVM_WORKSPACES_SUDO")
        .map(str::to_string)
        .unwrap_or_else(|| match Path::new(WRAPPER_SUDO).exists() {
            true => WRAPPER_SUDO.to_string(),
            false => "sudo".to_string(),
        });
    let mut cmd = std::process::Command::new(&sudo);
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty");
    if tty.is_err() {
        cmd.arg("-n");
    }
    (cmd, sudo)
}

/// Gives up root for good and becomes `caller` (with their primary and supplementary
/// groups), for commands that only look (`status`, `doctor`) at paths a caller can
/// influence: a symlink in their repo must not make root reveal what lies where they cannot
/// look. A no-op for root itself, or when not root.
pub fn drop_to(caller: Caller) -> Result<()> {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    let Caller::User(uid) = caller else {
        return Ok(());
    };
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let ids = Ids::of(uid);
    setgroups(&ids.groups())
        .and_then(|_| setgid(Gid::from_raw(ids.gid)))
        .and_then(|_| setuid(Uid::from_raw(ids.uid)))
        .with_context(|| format!("cannot drop to uid {uid}"))
}

/// Directories root looks programs up in when acting for someone through sudo.
pub const SAFE_PATH: &str =
    "/run/wrappers/bin:/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Root acting for a user through sudo: what the caller chose for this process is not what
/// root should use. sudo keeps the caller's PATH unless sudoers sets `secure_path` (NixOS's
/// does not), so systemctl, ssh or virtiofsd would be looked up where the caller says; and
/// the caller's umask would shape what root creates. Call first, while single-threaded.
pub fn harden() {
    if !nix::unistd::Uid::effective().is_root() {
        return;
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    if paths::sudo_uid().is_some() {
        std::env::set_var("PATH", SAFE_PATH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_0_is_root_and_nothing_else_is() {
        assert_eq!(Caller::from_uid(0), Caller::Root);
        assert!(Caller::from_uid(0).is_root());
        let alice = Caller::from_uid(1000);
        assert!(!alice.is_root());
        assert_eq!((alice.uid(), Caller::Root.uid()), (1000, 0));
        assert_eq!(
            (alice.to_string(), Caller::Root.to_string()),
            ("uid 1000".into(), "root".into())
        );
    }

    #[test]
    fn root_may_use_anything_a_user_only_their_own() {
        let alice = Caller::from_uid(1000);
        assert!(alice.may_use(1000));
        assert!(!alice.may_use(1001));
        assert!(!alice.may_use(0));
        assert!(Caller::Root.may_use(0) && Caller::Root.may_use(1000));
    }

    #[test]
    fn ids_of_root_and_of_an_unknown_uid() {
        let root = Ids::of(0);
        assert_eq!(
            (root.uid, root.gid, root.name.as_deref()),
            (0, 0, Some("root"))
        );
        assert!(root.groups().contains(&nix::unistd::Gid::from_raw(0)));
        // No user database entry: its own number as its group, and only that group.
        let ghost = Ids::of(3_999_999_999);
        assert_eq!((ghost.gid, ghost.name.as_deref()), (3_999_999_999, None));
        assert_eq!(
            ghost.groups(),
            vec![nix::unistd::Gid::from_raw(3_999_999_999)]
        );
        assert!(!ghost.in_group("root"));
        assert!(root.in_group("root"));
    }
}
