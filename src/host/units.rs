//! Unit names and the generator: the drop-ins that make every start of `microvm@<vm>` and
//! `microvm-virtiofsd@<vm>` run prepare first.
//!
//! The drop-in texts live in `units/*.in`, embedded at build time, so a reader or a packager
//! sees the exact unit text in one place.

use std::borrow::Cow;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::linkat;

use crate::fs::paths::{show, Root};
use crate::model::config::Config;

const TEMPLATE_DROPIN: &str = include_str!("../../units/50-microvm-workspaces.conf.in");
const INSTANCE_DROPIN: &str = include_str!("../../units/instance.conf.in");
/// virtiofsd's: fallback placeholders (docs/design.md#fallback), no device nodes
/// (docs/security.md#device-nodes).
const VIRTIOFSD_DROPIN: &str = include_str!("../../units/50-microvm-workspaces-virtiofsd.conf.in");
/// Drop-in file name, systemd style: `50-<name>.conf`.
pub const DROPIN_NAME: &str = "50-microvm-workspaces.conf";
/// The per-VM drop-in must have another name: a drop-in in `microvm@vm1.service.d/` with
/// the template's file name *replaces* the template's (found on real systemd 252, where it
/// silently dropped the ExecStartPre= of every VM listed in the config).
pub const INSTANCE_DROPIN_NAME: &str = "50-microvm-workspaces-mounts.conf";
/// The two templates of microvm.nix whose starts run prepare. Both, because a unit whose
/// condition fails skips its ExecStartPre too, and 9p shares have no virtiofsd unit at all.
pub const TEMPLATES: [&str; 2] = ["microvm-virtiofsd@", "microvm@"];

/// The instance part of a unit name for VM `vm`, as `systemctl` spells it: characters valid in
/// unit names stay (microvm.nix's `microvm@my-vm` keeps its `-`), others become `\xNN` bytes.
/// (Not `systemd-escape`, which would also escape `-` and name a different unit.)
pub fn mangle(vm: &str) -> String {
    let mut out = String::with_capacity(vm.len());
    push_mangled(&mut out, vm);
    out
}

/// `mangle(vm)` appended to `out`.
fn push_mangled(out: &mut String, vm: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in vm.bytes() {
        if b.is_ascii_alphanumeric() || b":_.-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str("\\x");
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// The VM name from a unit's instance (`%i`): `\xNN` sequences decoded, nothing else changed.
pub fn unmangle(instance: &str) -> String {
    let b = instance.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') && i + 3 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 2..i + 4])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `microvm@<vm>.service`.
pub fn unit_name(template: &str, vm: &str) -> String {
    format!("{template}{}.service", mangle(vm))
}

/// One word of a unit setting: `%` specifiers and, for command lines, `$` expansion escaped;
/// quoted when it holds white space, quotes or backslashes.
pub fn unit_word(s: &str, command: bool) -> String {
    let mut w = s.replace('%', "%%");
    if command {
        w = w.replace('$', "$$");
    }
    if w.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '\\') {
        let mut q = String::from("\"");
        for c in w.chars() {
            match c {
                '"' | '\\' => {
                    q.push('\\');
                    q.push(c);
                }
                '\n' => q.push_str("\\n"),
                '\t' => q.push_str("\\t"),
                _ => q.push(c),
            }
        }
        q.push('"');
        w = q;
    }
    w
}

/// Where the prepare helper is: fixed at build time for packages
/// (`MICROVM_WORKSPACES_PREPARE`), else next to the running executable (a cargo build).
pub fn prepare_path() -> Result<PathBuf> {
    if let Some(p) = option_env!("MICROVM_WORKSPACES_PREPARE") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot find the generator's own executable")?;
    Ok(exe.with_file_name("microvm-workspaces-prepare"))
}

/// The environment a generator run sees (taken from the process, or made up by tests).
#[derive(Debug, Clone, Default)]
pub struct GenEnv {
    /// `SYSTEMD_IN_INITRD`: `Some(true/false)` when set.
    pub in_initrd: Option<bool>,
    /// `SYSTEMD_PROC_CMDLINE`, which overrides `/proc/cmdline` (systemd's own convention).
    pub cmdline: Option<String>,
}

impl GenEnv {
    pub fn from_process() -> GenEnv {
        GenEnv {
            in_initrd: std::env::var("SYSTEMD_IN_INITRD")
                .ok()
                .map(|v| parse_bool(&v).unwrap_or(true)),
            cmdline: std::env::var("SYSTEMD_PROC_CMDLINE").ok(),
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

/// What a generator run did.
#[derive(Debug, PartialEq, Eq)]
pub enum Generated {
    /// Drop-ins written (paths relative to the output directory).
    Wrote(Vec<PathBuf>),
    /// Nothing written, and why.
    Disabled(&'static str),
}

/// Writes the drop-ins into `out` (the generator's normal directory).
///
/// A broken config still gets the template drop-ins written, so every VM start fails in
/// prepare with a clear message instead of in virtiofsd with an obscure one; the error is
/// returned after writing.
pub fn generate(root: &Root, env: &GenEnv, out: &Path, prepare: &Path) -> Result<Generated> {
    let in_initrd = env
        .in_initrd
        .unwrap_or_else(|| root.real(Path::new("/etc/initrd-release")).exists());
    if in_initrd {
        return Ok(Generated::Disabled("running in the initrd"));
    }
    let cmdline = match &env.cmdline {
        Some(c) => c.clone(),
        None => std::fs::read_to_string(root.real(Path::new("/proc/cmdline"))).unwrap_or_default(),
    };
    if !cmdline_enabled(&cmdline) {
        return Ok(Generated::Disabled(
            "microvm-workspaces=0 on the kernel command line",
        ));
    }
    let config = crate::fs::chase::Tree::open(root).and_then(|t| Config::load(&t));
    if matches!(&config, Ok(c) if !c.enable) {
        return Ok(Generated::Disabled("\"enable\": false in the config"));
    }

    let prepare_str = prepare
        .to_str()
        .with_context(|| format!("the prepare path {} is not valid UTF-8", show(prepare)))?;
    let word = unit_word(prepare_str, true);
    let out = OutDir::open(out)?;
    let mut wrote = Vec::new();
    for t in TEMPLATES {
        let text = match t {
            "microvm-virtiofsd@" => VIRTIOFSD_DROPIN,
            _ => TEMPLATE_DROPIN,
        }
        .replace("@PREPARE@", &word);
        let dir = format!("{t}.service.d");
        out.mkdir(&dir)?;
        let rel = format!("{dir}/{DROPIN_NAME}");
        out.write_new(&rel, text.as_bytes())?;
        wrote.push(PathBuf::from(rel));
    }
    let config = config?;
    let needs = mount_needs(&config);
    wrote.reserve(2 * needs.len());
    let pieces = instance_pieces();
    let (mut text, mut first, mut rel) = (String::new(), String::new(), String::new());
    for (vm, paths) in needs {
        instance_text(&mut text, &pieces, vm, &paths);
        // Both templates get the same text: the first file is written, the second is a hard
        // link to it (an inode, a page and two system calls fewer a VM; `O_EXCL` all the same:
        // linkat refuses an existing name). Where the output's file system has no hard links,
        // the second is written too.
        for (i, t) in TEMPLATES.into_iter().enumerate() {
            rel.clear();
            rel.push_str(t);
            push_mangled(&mut rel, vm);
            rel.push_str(".service.d");
            out.mkdir(&rel)?;
            rel.push('/');
            rel.push_str(INSTANCE_DROPIN_NAME);
            if i == 0 {
                out.write_new(&rel, text.as_bytes())?;
                first.clone_from(&rel);
            } else {
                out.link_new(&first, &rel, text.as_bytes())?;
            }
            wrote.push(PathBuf::from(rel.clone()));
        }
    }
    Ok(Generated::Wrote(wrote))
}

/// `INSTANCE_DROPIN`'s text around its `@VM@` and `@PATHS@`, split once for all VMs.
enum Piece {
    Text(&'static str),
    Vm,
    Paths,
}

fn instance_pieces() -> Vec<Piece> {
    let mut pieces = Vec::new();
    for (i, part) in INSTANCE_DROPIN.split("@VM@").enumerate() {
        if i > 0 {
            pieces.push(Piece::Vm);
        }
        for (j, text) in part.split("@PATHS@").enumerate() {
            if j > 0 {
                pieces.push(Piece::Paths);
            }
            pieces.push(Piece::Text(text));
        }
    }
    pieces
}

/// `INSTANCE_DROPIN.replace("@VM@", vm).replace("@PATHS@", paths)` into `out`, without the two
/// intermediate strings. A name with `@` in it takes that very expression (only there could a
/// `@PATHS@` be made across the name's edges); a test holds the two to each other.
fn instance_text(out: &mut String, pieces: &[Piece], vm: &str, paths: &str) {
    out.clear();
    if vm.contains('@') {
        out.push_str(
            &INSTANCE_DROPIN
                .replace("@VM@", vm)
                .replace("@PATHS@", paths),
        );
        return;
    }
    for p in pieces {
        out.push_str(match p {
            Piece::Text(t) => t,
            Piece::Vm => vm,
            Piece::Paths => paths,
        });
    }
}

/// `microvm-workspaces=0` (or no/false/off) anywhere on the command line, the last one winning.
fn cmdline_enabled(cmdline: &str) -> bool {
    let mut on = true;
    for word in cmdline.split_whitespace() {
        if let Some(v) = word.strip_prefix("microvm-workspaces=") {
            on = parse_bool(v).unwrap_or(true);
        }
    }
    on
}

/// For each configured VM with shares: the paths its start needs mounted, as the words of
/// one `RequiresMountsFor=` line (sorted, without duplicates). The workspace dir stands for
/// every source inside it (see `units/instance.conf.in` for why).
///
/// Each source is `paths::normalize(stateDir/vm/source)`, built in one buffer, and
/// `Path::starts_with(workspaceDir)` is a comparison of bytes with the workspace dir's
/// components (`within`): at 1,000 VMs the `Path` joins, normalizations and component walks
/// were most of the generator's own instructions (bench/notes.md). A test holds both to the
/// `Path` functions.
fn mount_needs(cfg: &Config) -> Vec<(&str, String)> {
    // Both are UTF-8: they come from JSON or the defaults. (Were one not, `None` keeps the
    // paths through it out of the unit text, as `to_str` did.)
    let state = cfg.state_dir.to_str().map(|s| {
        let mut n = String::from("/");
        push_normalized(&mut n, s);
        n
    });
    let ws = cfg.workspace_dir.to_str();
    let ws_key = ws.and_then(component_key);
    let mut out = Vec::with_capacity(cfg.vms.len());
    let mut paths: Vec<Cow<str>> = Vec::new();
    let mut p = String::new();
    for (vm, v) in &cfg.vms {
        paths.clear();
        for s in &v.shares {
            p.clear();
            if s.source.starts_with('/') {
                p.push('/');
            } else {
                let Some(state) = &state else { continue };
                p.push_str(state);
                push_normalized(&mut p, vm);
            }
            push_normalized(&mut p, &s.source);
            if ws_key.as_deref().is_some_and(|k| within(&p, k)) {
                if let Some(ws) = ws {
                    paths.push(Cow::Borrowed(ws));
                }
            } else {
                paths.push(Cow::Owned(p.clone()));
            }
        }
        paths.sort_unstable();
        paths.dedup();
        if paths.is_empty() {
            continue;
        }
        let mut words = String::new();
        for (i, p) in paths.iter().enumerate() {
            if i > 0 {
                words.push(' ');
            }
            push_unit_word(&mut words, p, false);
        }
        out.push((vm.as_str(), words));
    }
    out
}

/// Appends the components of `part` to the absolute, normalized path `p` as
/// `paths::normalize` does: empty and `.` components dropped, `..` taking the last one off
/// (never above `/`).
fn push_normalized(p: &mut String, part: &str) {
    let rest = part.strip_prefix('/').unwrap_or(part);
    // Already normal (the usual case): no empty, `.` or `..` component. (A component that only
    // starts with a dot takes the long way, to the same result.)
    let normal = !rest.is_empty()
        && !rest.starts_with('.')
        && !rest.ends_with('/')
        && !rest
            .as_bytes()
            .windows(2)
            .any(|w| w[0] == b'/' && matches!(w[1], b'/' | b'.'));
    if normal {
        if !p.ends_with('/') {
            p.push('/');
        }
        p.push_str(rest);
        return;
    }
    for c in rest.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                let cut = p.rfind('/').unwrap_or(0);
                p.truncate(cut.max(1));
            }
            _ => {
                if !p.ends_with('/') {
                    p.push('/');
                }
                p.push_str(c);
            }
        }
    }
}

/// An absolute `dir` as the normalized path of its components, for `within`: `None` when no
/// normalized absolute path can start with it (it is relative or has a `..` component).
fn component_key(dir: &str) -> Option<String> {
    if !dir.starts_with('/') {
        return None;
    }
    let mut key = String::from("/");
    for c in dir.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            _ => {
                if !key.ends_with('/') {
                    key.push('/');
                }
                key.push_str(c);
            }
        }
    }
    Some(key)
}

/// `Path::new(p).starts_with(dir)` for a normalized absolute `p` and `key =
/// component_key(dir)`.
fn within(p: &str, key: &str) -> bool {
    key == "/" || (p.starts_with(key) && matches!(p.as_bytes().get(key.len()), None | Some(b'/')))
}

/// `unit_word(s, command)` appended to `out`, without a copy when nothing needs escaping.
fn push_unit_word(out: &mut String, s: &str, command: bool) {
    // ASCII without `%`, quotes, backslashes, white space (and `$` in a command line): as is.
    let plain = s.bytes().all(|b| {
        b.is_ascii()
            && !matches!(
                b,
                b'%' | b'"' | b'\'' | b'\\' | b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c
            )
            && !(command && b == b'$')
    });
    if plain {
        out.push_str(s);
    } else {
        out.push_str(&unit_word(s, command));
    }
}

/// The output directory, held open: every directory and file is made relative to it
/// (`mkdirat`, `openat`, `linkat`), so the kernel walks one component, not the whole path.
struct OutDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl OutDir {
    /// Opens `path` (creating it first when it does not exist, as `create_dir_all` did).
    fn open(path: &Path) -> Result<OutDir> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = match openat(AT_FDCWD, path, flags, Mode::empty()) {
            Err(Errno::ENOENT) => {
                std::fs::create_dir_all(path)
                    .with_context(|| format!("cannot create {}", show(path)))?;
                openat(AT_FDCWD, path, flags, Mode::empty())
            }
            r => r,
        }
        .map_err(std::io::Error::from)
        .with_context(|| format!("cannot open {}", show(path)))?;
        Ok(OutDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, rel: &str, e: Errno) -> anyhow::Error {
        anyhow::Error::new(std::io::Error::from(e))
            .context(format!("cannot create {}", show(&self.path.join(rel))))
    }

    /// A directory `rel` (mode 0777 less the umask); one that exists already is taken.
    fn mkdir(&self, rel: &str) -> Result<()> {
        match mkdirat(&self.fd, rel, Mode::from_bits_truncate(0o777)) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// A new file `rel` (`O_EXCL`, mode 0666 less the umask) holding `text`, in one write.
    fn write_new(&self, rel: &str, text: &[u8]) -> Result<()> {
        let fd = openat(
            &self.fd,
            rel,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o666),
        )
        .map_err(|e| self.err(rel, e))?;
        std::fs::File::from(fd)
            .write_all(text)
            .with_context(|| format!("cannot write {}", show(&self.path.join(rel))))
    }

    /// `rel` made a hard link to `first` (which holds `text`); an existing `rel` is an error as
    /// with `O_EXCL`. Where hard links are refused (a file system without them), `rel` is
    /// written instead.
    fn link_new(&self, first: &str, rel: &str, text: &[u8]) -> Result<()> {
        match linkat(&self.fd, first, &self.fd, rel, AtFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => Err(self.err(rel, Errno::EEXIST)),
            Err(_) => self.write_new(rel, text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_mangled_like_systemctl_and_decoded_back() {
        for (vm, unit) in [
            ("vm1", "vm1"),
            ("my-vm.dev", "my-vm.dev"),
            ("ümlaut", "\\xc3\\xbcmlaut"),
            ("a b", "a\\x20b"),
            ("back\\slash", "back\\x5cslash"),
        ] {
            assert_eq!(mangle(vm), unit);
            assert_eq!(unmangle(unit), vm);
        }
        assert_eq!(unmangle("trailing\\x"), "trailing\\x");
        assert_eq!(unmangle("\\xzz"), "\\xzz");
        assert_eq!(
            unit_name("microvm@", "my-vm.dev"),
            "microvm@my-vm.dev.service"
        );
    }

    #[test]
    fn unit_words_escape_specifiers_and_quote_when_needed() {
        assert_eq!(unit_word("/usr/libexec/p", true), "/usr/libexec/p");
        assert_eq!(unit_word("/a/100%", false), "/a/100%%");
        assert_eq!(unit_word("/opt/$HOME/p", true), "/opt/$$HOME/p");
        assert_eq!(unit_word("/opt/$HOME/p", false), "/opt/$HOME/p");
        assert_eq!(
            unit_word("/with space/x\"y", false),
            "\"/with space/x\\\"y\""
        );
    }

    /// `mount_needs` as it was, on `Path`s: what the byte version must equal.
    fn mount_needs_on_paths(cfg: &Config) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (vm, v) in &cfg.vms {
            let mut paths: Vec<String> = Vec::new();
            for s in &v.shares {
                let p = crate::fs::paths::normalize(&cfg.state_dir.join(vm).join(&s.source));
                let need = if p.starts_with(&cfg.workspace_dir) {
                    cfg.workspace_dir.clone()
                } else {
                    p
                };
                if let Some(s) = need.to_str() {
                    paths.push(s.to_string());
                }
            }
            paths.sort();
            paths.dedup();
            if !paths.is_empty() {
                let words: Vec<String> = paths.iter().map(|p| unit_word(p, false)).collect();
                out.push((vm.to_string(), words.join(" ")));
            }
        }
        out
    }

    #[test]
    fn mount_needs_on_bytes_are_those_on_paths() {
        let states = [
            "/var/lib/microvms",
            "/var/lib/microvms/",
            "/",
            "/a/../b",
            "//s/./t",
        ];
        let wss = [
            "/var/lib/ws",
            "/var/lib/ws/",
            "/var//lib/./ws",
            "/",
            "/var/lib/../lib/ws",
            "/var/lib/microvms/vm1",
            "/var/lib/w",
        ];
        let sources = [
            "/var/lib/ws",
            "/var/lib/ws/",
            "/var/lib/wsx",
            "/var/lib/ws/e",
            "/var/lib/ws/./e//f/",
            "/var/lib/ws/../ws2",
            "/var/lib/ws/../ws/e",
            "/var/lib/ws/e/../..",
            "var",
            "./etc/",
            "..",
            ".",
            "../../..",
            "a/../../../../x",
            "/",
            "//",
            "/.hidden/x",
            "..a/b.",
            "/srv/100%/a b",
            "/srv/it's",
            "/srv/tab\tback\\slash",
            "/srv/ünï",
            "/nix/store",
        ];
        let vms = ["vm1", "my-vm.dev", "a b", "ümlaut", "x@PATHS@y", "100%"];
        for state in states {
            for ws in wss {
                let mut cfg =
                    serde_json::json!({ "stateDir": state, "workspaceDir": ws, "vms": {} });
                for (i, vm) in vms.iter().enumerate() {
                    // Each VM a different slice of the sources, one VM none.
                    let shares: Vec<_> = sources
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| (j + i) % (i + 1) == 0 && i != 2)
                        .map(|(j, s)| serde_json::json!({ "tag": format!("t{j}"), "proto": "virtiofs", "source": s }))
                        .collect();
                    cfg["vms"][vm] = serde_json::json!({ "shares": shares });
                }
                let cfg = Config::parse(cfg.to_string().as_bytes()).unwrap();
                let got: Vec<(String, String)> = mount_needs(&cfg)
                    .into_iter()
                    .map(|(vm, w)| (vm.to_string(), w))
                    .collect();
                assert_eq!(
                    got,
                    mount_needs_on_paths(&cfg),
                    "stateDir {state}, workspaceDir {ws}"
                );
            }
        }
    }

    #[test]
    fn instance_text_is_the_two_replacements() {
        let pieces = instance_pieces();
        let mut got = String::new();
        for vm in [
            "vm1",
            "@PATHS@",
            "a@PATHS@b",
            "@VM@",
            "PATHS@",
            "@PATHS",
            "@",
            "a@VM@PATHS@",
        ] {
            for paths in ["/var/lib/ws /srv/x", "@VM@", "@PATHS@", ""] {
                instance_text(&mut got, &pieces, vm, paths);
                let want = INSTANCE_DROPIN
                    .replace("@VM@", vm)
                    .replace("@PATHS@", paths);
                assert_eq!(got, want, "{vm:?} {paths:?}");
            }
        }
    }

    #[test]
    fn unit_words_are_appended_as_unit_word_makes_them() {
        for s in [
            "/a/b",
            "/a/100%",
            "/$x",
            "a b",
            "\"q\"",
            "it's",
            "back\\",
            "tab\t",
            "nbsp\u{a0}",
            "ü",
            "",
        ] {
            for command in [false, true] {
                let mut got = String::from("x ");
                push_unit_word(&mut got, s, command);
                assert_eq!(
                    got,
                    format!("x {}", unit_word(s, command)),
                    "{s:?} {command}"
                );
            }
        }
    }

    #[test]
    fn the_kernel_command_line_switch_is_the_last_one() {
        assert!(cmdline_enabled("quiet"));
        assert!(!cmdline_enabled("quiet microvm-workspaces=0"));
        assert!(!cmdline_enabled("microvm-workspaces=off"));
        assert!(cmdline_enabled(
            "microvm-workspaces=0 microvm-workspaces=yes"
        ));
        assert!(cmdline_enabled("xmicrovm-workspaces=0"));
    }
}
