//! `config.json`: the optional file the NixOS module writes (docs/reference/config.md).
//!
//! Parsing is strict: an unknown key is an error naming it, since a typo in a generated file
//! is a bug to surface rather than a setting to ignore.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::fs::chase::{self, Tree};
use crate::fs::idmap::{Guest, DEFAULT_GUEST_UID};
use crate::fs::paths::{self, show};
use crate::fs::placeholder::PlaceholderSpec;
use crate::model::names::{EntryName, PoolName, Refused, SshDest, VmName};

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
    /// (docs/reference/workspace.md#displaced).
    #[serde(default)]
    pub hypervisor: Hypervisor,
    /// Every key a [`VmName`], checked as the file is read.
    #[serde(default, deserialize_with = "vm_keys")]
    pub vms: BTreeMap<VmName, VmConfig>,
    /// `companions.<vm>.<name> = <path relative to the repo>`.
    #[serde(default, deserialize_with = "companion_keys")]
    pub companions: BTreeMap<VmName, BTreeMap<EntryName, PathBuf>>,
    /// `pools.<pool> = [vm, ...]`: VMs with a live workspace share, leased one per worktree
    /// (docs/reference/config.md#pools). Checked as the file is read ([`Config::parse`]):
    /// not empty, every VM declared in `vms` with a live share of its own entry, a VM in at
    /// most one pool.
    #[serde(default, deserialize_with = "pool_keys")]
    pub pools: BTreeMap<PoolName, Vec<VmName>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placeholder {
    #[serde(default = "root_name")]
    pub user: String,
    #[serde(default = "root_name")]
    pub group: String,
    #[serde(default = "default_mode", deserialize_with = "placeholder_mode")]
    pub mode: Mode,
}

/// A file mode from the config: 1 to 4 octal digits (`"0555"`), parsed once, as the file is
/// read; an invalid one is a config error naming its key, never a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(u32);

impl Mode {
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl TryFrom<String> for Mode {
    type Error = Refused;
    fn try_from(s: String) -> Result<Mode, Refused> {
        let octal = !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| (b'0'..=b'7').contains(&b));
        match octal.then(|| u32::from_str_radix(&s, 8).ok()).flatten() {
            Some(bits) => Ok(Mode(bits)),
            None => Err(Refused::new(
                "mode",
                s,
                "is not an octal mode like \"0555\"",
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o}", self.0)
    }
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
    #[serde(default, deserialize_with = "ssh_key")]
    pub ssh: Option<SshDest>,
    /// A destination nobody chose (the NixOS module's guess: the VM's name, or `vsock/<cid>`),
    /// used when `ssh` is absent. Waited for briefly; it never fails a link
    /// (docs/reference/cli.md#ssh-wait).
    #[serde(default, deserialize_with = "ssh_default_key")]
    pub ssh_default: Option<SshDest>,
    /// The guest user whose files are the linker's (docs/security.md#idmap); no other guest id
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
    /// The git metadata the guest sees of a linked repo (docs/security.md#guest-git).
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
fn default_mode() -> Mode {
    Mode(0o555)
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
            pools: BTreeMap::new(),
        }
    }
}

/// `placeholder.mode`, its key named when it is refused.
fn placeholder_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
    Mode::try_from(String::deserialize(d)?)
        .map_err(|e| de::Error::custom(format_args!("placeholder.mode: {e}")))
}

/// `vms.<vm>.ssh`, its key named when it is refused (serde adds the line and column).
fn ssh_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SshDest>, D::Error> {
    keyed_dest(d, "ssh")
}

/// `vms.<vm>.sshDefault`, as [`ssh_key`].
fn ssh_default_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SshDest>, D::Error> {
    keyed_dest(d, "sshDefault")
}

fn keyed_dest<'de, D: Deserializer<'de>>(d: D, key: &str) -> Result<Option<SshDest>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(SshDest::try_from)
        .transpose()
        .map_err(|e| de::Error::custom(format_args!("{key}: {e}")))
}

/// An object whose keys must parse as `K`: a key that does not fails as `{at}: {why}`
/// (`vms: VM name ".x" starts with '.'`).
struct Keyed<K, V> {
    at: String,
    kv: std::marker::PhantomData<(K, V)>,
}

impl<K, V> Keyed<K, V> {
    fn at(at: impl Into<String>) -> Keyed<K, V> {
        Keyed {
            at: at.into(),
            kv: std::marker::PhantomData,
        }
    }
}

impl<'de, K, V> de::DeserializeSeed<'de> for Keyed<K, V>
where
    K: TryFrom<String, Error = Refused> + Ord,
    V: Deserialize<'de>,
{
    type Value = BTreeMap<K, V>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, K, V> Visitor<'de> for Keyed<K, V>
where
    K: TryFrom<String, Error = Refused> + Ord,
    V: Deserialize<'de>,
{
    type Value = BTreeMap<K, V>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "an object ({})", self.at)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = m.next_key::<String>()? {
            let key = K::try_from(key)
                .map_err(|e| de::Error::custom(format_args!("{}: {e}", self.at)))?;
            out.insert(key, m.next_value()?);
        }
        Ok(out)
    }
}

/// `vms`: every key a [`VmName`].
fn vm_keys<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<VmName, VmConfig>, D::Error> {
    de::DeserializeSeed::deserialize(Keyed::<VmName, VmConfig>::at("vms"), d)
}

/// `companions`: every key a [`VmName`], every key below it an [`EntryName`].
fn companion_keys<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<VmName, BTreeMap<EntryName, PathBuf>>, D::Error> {
    struct Companions;
    impl<'de> Visitor<'de> for Companions {
        type Value = BTreeMap<VmName, BTreeMap<EntryName, PathBuf>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object (companions)")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(vm) = m.next_key::<String>()? {
                let vm = VmName::try_from(vm)
                    .map_err(|e| de::Error::custom(format_args!("companions: {e}")))?;
                let set =
                    m.next_value_seed(Keyed::<EntryName, PathBuf>::at(format!("companions.{vm}")))?;
                out.insert(vm, set);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Companions)
}

/// `pools`: every key a [`PoolName`], every VM of a pool a [`VmName`], each refusal naming
/// `pools` or `pools.<pool>`.
fn pool_keys<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<PoolName, Vec<VmName>>, D::Error> {
    struct Pools;
    impl<'de> Visitor<'de> for Pools {
        type Value = BTreeMap<PoolName, Vec<VmName>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object (pools)")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(pool) = m.next_key::<String>()? {
                let pool = PoolName::try_from(pool)
                    .map_err(|e| de::Error::custom(format_args!("pools: {e}")))?;
                let vms: Vec<String> = m.next_value()?;
                let vms = vms
                    .into_iter()
                    .map(VmName::try_from)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| de::Error::custom(format_args!("pools.{pool}: {e}")))?;
                out.insert(pool, vms);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Pools)
}

impl Config {
    /// The configured VMs' names, sorted.
    pub fn vm_names(&self) -> impl Iterator<Item = VmName> + '_ {
        self.vms.keys().cloned()
    }

    /// The configuration of `vm`, if it has one.
    pub fn vm(&self, vm: &VmName) -> Option<&VmConfig> {
        self.vms.get(vm)
    }

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
            mode: p.mode.bits(),
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
        for (vm, v) in &self.vms {
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
        self.validate_pools()?;
        for (vm, set) in &self.companions {
            for (name, rel) in set {
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

impl Config {
    /// The live root of `vm`'s own entry, `<workspaceDir>/.live/<vm>`: what a pool VM's
    /// workspace share must have as its source.
    pub fn live_workspace(&self, vm: &VmName) -> PathBuf {
        self.workspace_dir.join(paths::LIVE).join(vm)
    }

    /// Whether the config lists a share of `vm` whose source (a relative one taken against
    /// `<stateDir>/<vm>`) is its own live root.
    pub fn has_live_workspace(&self, vm: &VmName) -> bool {
        let want = self.live_workspace(vm);
        self.vm(vm).is_some_and(|v| {
            v.shares
                .iter()
                .any(|s| paths::normalize(&self.state_dir.join(vm).join(&s.source)) == want)
        })
    }

    /// The pool `vm` is in, if any (a VM is in at most one).
    pub fn pool_of(&self, vm: &VmName) -> Option<&PoolName> {
        self.pools
            .iter()
            .find_map(|(p, vms)| vms.contains(vm).then_some(p))
    }

    /// Every pool: not empty, each VM declared in `vms` (the NixOS module writes every VM of
    /// `microvm.vms` there) with a live workspace share, listed once, in one pool only.
    fn validate_pools(&self) -> Result<()> {
        let mut seen: BTreeMap<&VmName, &PoolName> = BTreeMap::new();
        for (pool, vms) in &self.pools {
            if vms.is_empty() {
                bail!("pools.{pool} is empty: a pool needs at least one VM");
            }
            for vm in vms {
                if let Some(other) = seen.insert(vm, pool) {
                    match other == pool {
                        true => bail!("pools.{pool} lists VM {vm} twice"),
                        false => bail!(
                            "pools.{pool}: VM {vm} is in pool {other} too; a VM is in at most one pool"
                        ),
                    }
                }
                if self.vm(vm).is_none() {
                    bail!("pools.{pool}: VM {vm} is not declared in vms");
                }
                if !self.has_live_workspace(vm) {
                    bail!(
                        "pools.{pool}: VM {vm} has no live workspace share (a share of vms.{vm} whose source is {})",
                        show(&self.live_workspace(vm))
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

/// "alice", or "uid 1000" when the user database does not know it (short, for lists).
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => format!("uid {uid}"),
    }
}

/// "alice (uid 1000)", or "uid 1000" when the user database does not know it.
pub fn user_label(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-line error of a config text, as the binaries print it.
    fn refusal(text: &str) -> String {
        let e = Config::parse(text.as_bytes()).expect_err(text);
        let line = format!("{e:#}");
        assert!(!line.contains(char::is_control), "{line:?}");
        line
    }

    #[test]
    fn the_placeholder_mode_is_parsed_once_and_never_defaulted_when_invalid() {
        assert_eq!(Config::parse(b"{}").unwrap().placeholder.mode.bits(), 0o555);
        for (text, bits) in [
            ("0555", 0o555),
            ("0500", 0o500),
            ("7", 0o7),
            ("0777", 0o777),
        ] {
            let cfg =
                Config::parse(format!(r#"{{"placeholder": {{"mode": "{text}"}}}}"#).as_bytes())
                    .unwrap();
            assert_eq!(cfg.placeholder.mode.bits(), bits, "{text}");
            assert_eq!(cfg.placeholder_spec().unwrap().mode, bits);
        }
        assert_eq!(
            Mode::try_from("0750".to_string()).unwrap().to_string(),
            "0750"
        );
        for bad in ["", "rwx", "0558", "01234", "-1", "+555", " 555"] {
            let line = refusal(&format!(r#"{{"placeholder": {{"mode": "{bad}"}}}}"#));
            assert!(
                line.starts_with(&format!(
                    "placeholder.mode: mode {bad:?} is not an octal mode like \"0555\" at line 1"
                )),
                "{line}"
            );
        }
        assert!(refusal(r#"{"placeholder": {"mode": 555}}"#).contains("invalid type"));
    }

    #[test]
    fn names_in_the_config_are_checked_as_it_is_read_naming_where() {
        for (text, want) in [
            (
                r#"{"vms": {".x": {}}}"#,
                r#"vms: VM name ".x" starts with '.'"#,
            ),
            (
                r#"{"vms": {"../evil": {}}}"#,
                r#"vms: VM name "../evil" starts with '.'"#,
            ),
            (
                r#"{"vms": {"a/b": {}}}"#,
                r#"vms: VM name "a/b" contains '/'"#,
            ),
            (
                r#"{"companions": {"../vm1": {"side": "x"}}}"#,
                r#"companions: VM name "../vm1" starts with '.'"#,
            ),
            (
                r#"{"companions": {"vm1": {".links": "../x"}}}"#,
                r#"companions.vm1: entry name ".links" starts with '.'"#,
            ),
            (
                r#"{"companions": {"vm1": {"a\nb": "../x"}}}"#,
                r#"companions.vm1: entry name "a\nb" contains a control character"#,
            ),
            (
                r#"{"vms": {"vm1": {"ssh": "-oProxyCommand=x"}}}"#,
                r#"ssh: SSH destination "-oProxyCommand=x" starts with '-' (it would be taken for an ssh option)"#,
            ),
            (
                r#"{"vms": {"vm1": {"sshDefault": "a b"}}}"#,
                r#"sshDefault: SSH destination "a b" contains a space or a control character"#,
            ),
            (
                r#"{"vms": {"vm1": {"ssh": ""}}}"#,
                r#"ssh: SSH destination "" is empty"#,
            ),
        ] {
            let line = refusal(text);
            assert!(line.starts_with(want), "{text}: {line}");
            assert!(line.contains(" at line 1 column "), "{text}: {line}");
        }
        // The checks that are not of a name still run after parsing.
        assert!(refusal(r#"{"companions": {"vm1": {"side": "/etc"}}}"#)
            .contains("companions.vm1.side: /etc must be a path relative to the repo"));
    }

    /// Two VMs with live workspace shares (one relative to the state dir), one without.
    const POOL_VMS: &str = r#""vms": {
        "a1": {"shares": [{"tag": "w", "proto": "virtiofs", "source": "/var/lib/microvm-workspaces/.live/a1"}]},
        "a2": {"shares": [{"tag": "w", "proto": "virtiofs", "source": "../../microvm-workspaces/.live/a2"}]},
        "pinned": {"shares": [{"tag": "w", "proto": "virtiofs", "source": "/var/lib/microvm-workspaces/pinned"}]}}"#;

    #[test]
    fn pools_are_read_typed_and_in_order() {
        let cfg = Config::parse(
            format!(r#"{{{POOL_VMS}, "pools": {{"agents": ["a2", "a1"]}}}}"#).as_bytes(),
        )
        .unwrap();
        let agents = PoolName::try_from("agents").unwrap();
        let vms: Vec<&str> = cfg.pools[&agents].iter().map(VmName::as_str).collect();
        assert_eq!(vms, ["a2", "a1"], "the pool's order is the config's");
        let a1 = VmName::try_from("a1").unwrap();
        assert_eq!(cfg.pool_of(&a1), Some(&agents));
        assert_eq!(cfg.pool_of(&VmName::try_from("pinned").unwrap()), None);
        assert!(Config::parse(b"{}").unwrap().pools.is_empty());
    }

    #[test]
    fn bad_pools_are_refused_in_one_line_naming_the_pool_and_the_vm() {
        for (pools, want) in [
            (r#"{"agents": []}"#, "pools.agents is empty: a pool needs at least one VM"),
            (r#"{"agents": ["a1", "a1"]}"#, "pools.agents lists VM a1 twice"),
            (
                r#"{"agents": ["a1"], "ci": ["a2", "a1"]}"#,
                "pools.ci: VM a1 is in pool agents too; a VM is in at most one pool",
            ),
            (r#"{"agents": ["ghost"]}"#, "pools.agents: VM ghost is not declared in vms"),
            (
                r#"{"agents": ["a1", "pinned"]}"#,
                "pools.agents: VM pinned has no live workspace share (a share of vms.pinned whose source is /var/lib/microvm-workspaces/.live/pinned)",
            ),
            (r#"{"-x": ["a1"]}"#, r#"pools: pool name "-x" does not start with a letter"#),
            (r#"{"agents": ["../a1"]}"#, r#"pools.agents: VM name "../a1" starts with '.'"#),
            (r#"{"agents": "a1"}"#, "invalid type: string"),
        ] {
            let line = refusal(&format!(r#"{{{POOL_VMS}, "pools": {pools}}}"#));
            assert!(line.starts_with(want) || line.contains(want), "{pools}: {line}");
        }
    }

    #[test]
    fn names_read_from_the_config_are_typed() {
        let cfg = Config::parse(
            br#"{"vms": {"b": {"ssh": "alice@b"}, "a": {"sshDefault": "vsock/3", "ssh": null}},
                 "companions": {"a": {"nix-secrets": "../nix-secrets"}}}"#,
        )
        .unwrap();
        let names: Vec<String> = cfg.vm_names().map(String::from).collect();
        assert_eq!(names, ["a", "b"]);
        let b = VmName::try_from("b").unwrap();
        assert_eq!(cfg.vm(&b).unwrap().ssh.as_ref().unwrap(), "alice@b");
        let a = VmName::try_from("a").unwrap();
        assert_eq!(cfg.vm(&a).unwrap().ssh, None);
        assert_eq!(cfg.vm(&a).unwrap().ssh_default.as_ref().unwrap(), "vsock/3");
        let side = &cfg.companions[&a];
        assert_eq!(
            side.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["nix-secrets"]
        );
    }
}
