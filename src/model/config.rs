//! `config.json`: the optional file the NixOS module writes (docs/design.md#config).
//!
//! Parsing is strict: an unknown key is an error naming it, since a typo in a generated file
//! is a bug to surface rather than a setting to ignore.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::fs::chase::{self, Tree};
use crate::fs::idmap::{Guest, DEFAULT_GUEST_UID};
use crate::fs::paths::{self, check_name, show};
use crate::fs::placeholder::PlaceholderSpec;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default = "yes")]
    pub enable: bool,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_workspace_dir")]
    pub workspace_dir: PathBuf,
    #[serde(default)]
    pub placeholder: Placeholder,
    /// Who runs the hypervisor (microvm.nix: `microvm`, `kvm`). Its directories (and root's)
    /// in the way of a link are not a person's work: any allowed linker may move them aside
    /// (docs/design.md#relink).
    #[serde(default)]
    pub hypervisor: Hypervisor,
    #[serde(default)]
    pub vms: BTreeMap<String, VmConfig>,
    /// `companions.<vm>.<name> = <path relative to the repo>`.
    #[serde(default)]
    pub companions: BTreeMap<String, BTreeMap<String, PathBuf>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placeholder {
    #[serde(default = "root_name")]
    pub user: String,
    #[serde(default = "root_name")]
    pub group: String,
    #[serde(default = "default_mode")]
    pub mode: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hypervisor {
    #[serde(default = "hypervisor_user")]
    pub user: String,
    #[serde(default = "hypervisor_group")]
    pub group: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmConfig {
    /// Accepted for older generated files; nothing reads it.
    #[serde(default)]
    pub host_name: Option<String>,
    #[serde(default)]
    pub shares: Vec<ShareConfig>,
    /// The VM's SSH destination (an ssh destination or alias, optionally with a port:
    /// `host`, `user@host`, `ssh://user@host:2222`), for waiting on SSH and `microvm-link
    /// shell`. Never starts with `-` and has no control characters: it is given to ssh.
    #[serde(default)]
    pub ssh: Option<String>,
    /// A destination nobody chose (the NixOS module's guess: the VM's name, or `vsock/<cid>`),
    /// used when `ssh` is absent. Waited for briefly; it never fails a link
    /// (docs/design.md#ssh-wait).
    #[serde(default)]
    pub ssh_default: Option<String>,
    /// The guest user whose files are the linker's (docs/design.md#idmap); no other guest id
    /// maps, root included.
    #[serde(default = "default_guest_uid")]
    pub guest_uid: u32,
    /// The guest group that is the linker's primary group; default: the same number as that
    /// group (NixOS: `users`, 100, on both sides).
    #[serde(default)]
    pub guest_gid: Option<u32>,
    /// `false`: link mounts are plain clones, the guest's ids are the host's (its root is
    /// root on the repo). `status` and `doctor` say so.
    #[serde(default = "yes")]
    pub idmap: bool,
    /// The git metadata the guest sees of a linked repo (docs/design.md#guest-git).
    #[serde(default)]
    pub git: GitMode,
}

/// `vms.<vm>.git`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GitMode {
    /// The VM's own git dir in place of the repo's `.git`: objects read from the repo, refs,
    /// HEAD and index copied at link time; `microvm-link fetch` brings its branches home.
    #[default]
    Private,
    /// The repo's `.git`, read-only (a mount point: it cannot be renamed either).
    Readonly,
    /// The repo's own `.git`, writable: the guest can make the user's git run commands.
    Shared,
}

impl GitMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GitMode::Private => "private",
            GitMode::Readonly => "readonly",
            GitMode::Shared => "shared",
        }
    }
}

/// How one VM's guest sees a linked repo: whose ids, and what of git.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub ids: Guest,
    pub git: GitMode,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, git {}", self.ids, self.git.as_str())
    }
}

impl VmConfig {
    /// How this VM's guest sees linked repos.
    pub fn seen(&self) -> Seen {
        Seen {
            ids: self.guest(),
            git: self.git,
        }
    }

    /// Whose ids this VM's guest has on linked repos.
    pub fn guest(&self) -> Guest {
        if self.idmap {
            Guest::Mapped {
                uid: self.guest_uid,
                gid: self.guest_gid,
            }
        } else {
            Guest::Plain
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShareConfig {
    pub tag: String,
    pub proto: Proto,
    pub source: String,
    #[serde(default)]
    pub read_only: bool,
    /// Where the guest mounts the share (for `microvm-link shell`'s working directory).
    #[serde(default)]
    pub mount_point: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum Proto {
    #[serde(rename = "virtiofs")]
    Virtiofs,
    #[serde(rename = "9p")]
    NineP,
}

fn yes() -> bool {
    true
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(paths::STATE_DIR)
}
fn default_workspace_dir() -> PathBuf {
    PathBuf::from(paths::WORKSPACE_DIR)
}
fn default_guest_uid() -> u32 {
    DEFAULT_GUEST_UID
}
fn root_name() -> String {
    "root".into()
}
fn default_mode() -> String {
    "0555".into()
}
fn hypervisor_user() -> String {
    "microvm".into()
}
fn hypervisor_group() -> String {
    "kvm".into()
}

impl Default for Hypervisor {
    fn default() -> Self {
        Hypervisor {
            user: hypervisor_user(),
            group: hypervisor_group(),
        }
    }
}

impl Default for Placeholder {
    fn default() -> Self {
        Placeholder {
            user: root_name(),
            group: root_name(),
            mode: default_mode(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enable: true,
            state_dir: default_state_dir(),
            workspace_dir: default_workspace_dir(),
            placeholder: Placeholder::default(),
            hypervisor: Hypervisor::default(),
            vms: BTreeMap::new(),
            companions: BTreeMap::new(),
        }
    }
}

impl Placeholder {
    /// The mode as a number; config validation guarantees it parses.
    pub fn mode_bits(&self) -> u32 {
        parse_mode(&self.mode).unwrap_or(0o555)
    }
}

fn parse_mode(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 8).ok()
}

impl Config {
    /// The configured placeholder owner resolved to numbers (names through the host's user
    /// database).
    pub fn placeholder_spec(&self) -> Result<PlaceholderSpec> {
        let p = &self.placeholder;
        let uid = uid_of(&p.user)
            .with_context(|| format!("placeholder.user {:?}: no such user", p.user))?;
        let gid = gid_of(&p.group)
            .with_context(|| format!("placeholder.group {:?}: no such group", p.group))?;
        Ok(PlaceholderSpec {
            uid,
            gid,
            mode: p.mode_bits(),
        })
    }

    /// Reads the config file in `tree`; defaults when it does not exist. Only a root-owned
    /// file reached through root-owned directories and links is read (see
    /// [`chase::read_trusted`]), so its errors may quote it: they are for the admin.
    pub fn load(tree: &Tree) -> Result<Config> {
        let path = Path::new(paths::CONFIG_FILE);
        let what = || format!("config {}", show(path));
        match chase::read_trusted(tree, None, path, 16 << 20).with_context(what)? {
            Some(text) => Config::parse(&text).with_context(what),
            None => Ok(Config::default()),
        }
    }

    pub fn parse(text: &[u8]) -> Result<Config> {
        // Valid UTF-8 (always, unless the file is broken) is checked once for the whole text,
        // not string by string as `from_slice` does (a tenth of the generator's instructions
        // at 1,000 VMs); the rest takes `from_slice` for its error, which names the place.
        let cfg: Config = match std::str::from_utf8(text) {
            Ok(text) => serde_json::from_str(text)?,
            Err(_) => serde_json::from_slice(text)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        for (key, dir) in [
            ("stateDir", &self.state_dir),
            ("workspaceDir", &self.workspace_dir),
        ] {
            if !dir.is_absolute() {
                bail!("{key} {} is not an absolute path", show(dir));
            }
        }
        if parse_mode(&self.placeholder.mode).is_none() {
            bail!(
                "placeholder.mode {:?} is not an octal mode like \"0555\"",
                self.placeholder.mode
            );
        }
        for (vm, v) in &self.vms {
            check_name("vms: VM", vm)?;
            for (key, dest) in [("ssh", &v.ssh), ("sshDefault", &v.ssh_default)] {
                if let Some(dest) = dest {
                    check_ssh_destination(dest).with_context(|| format!("vms.{vm}.{key}"))?;
                }
            }
            if v.idmap && v.guest_uid == 0 {
                bail!("vms.{vm}.guestUid is 0: the guest's root is never the linker (set idmap = false for that)");
            }
            for s in &v.shares {
                if s.tag.is_empty() || s.tag.contains('/') || s.tag.chars().any(char::is_control) {
                    bail!("vms.{vm}: share tag {:?} is not a valid tag", s.tag);
                }
                check_source(&s.source).with_context(|| format!("vms.{vm}: share {:?}", s.tag))?;
            }
        }
        for (vm, set) in &self.companions {
            check_name("companions: VM", vm)?;
            for (name, rel) in set {
                check_name(&format!("companions.{vm}: entry"), name)?;
                if rel.is_absolute() || rel.as_os_str().is_empty() {
                    bail!(
                        "companions.{vm}.{name}: {} must be a path relative to the repo",
                        show(rel)
                    );
                }
            }
        }
        Ok(())
    }
}

/// A user named in the config (`placeholder.user`, `hypervisor.user`) as a uid: a number as
/// it is, `root` as 0 without asking NSS (as systemd does: every start would pay a user
/// database lookup), else through the host's user database; `None` when there is no such user.
pub fn uid_of(name: &str) -> Option<u32> {
    match name.parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) if name == "root" => Some(0),
        Err(_) => nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw()),
    }
}

/// A group named in the config as a gid, as [`uid_of`] does users.
pub fn gid_of(name: &str) -> Option<u32> {
    match name.parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) if name == "root" => Some(0),
        Err(_) => nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw()),
    }
}

/// An SSH destination as given to ssh: never an option (`-...`), no control characters or
/// spaces, not empty.
pub fn check_ssh_destination(dest: &str) -> Result<()> {
    if dest.is_empty() {
        bail!("the SSH destination is empty");
    }
    if dest.starts_with('-') {
        bail!("SSH destination {dest:?} starts with '-' (it would be taken for an ssh option)");
    }
    if dest.chars().any(|c| c.is_control() || c.is_whitespace()) {
        bail!("SSH destination {dest:?} contains a space or a control character");
    }
    Ok(())
}

/// A share source as written by the user: one line, no NUL.
pub fn check_source(source: &str) -> Result<()> {
    if source.is_empty() {
        bail!("source is empty");
    }
    if source.contains('\n') || source.contains('\0') {
        bail!("source {:?} contains a newline or NUL", source);
    }
    Ok(())
}

/// "alice (uid 1000)", or "uid 1000" when the user database does not know it.
pub fn user_label(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}
