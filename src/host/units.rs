//! Unit names and the generator: the drop-ins that make every start of `microvm@<vm>` and
//! `microvm-virtiofsd@<vm>` run prepare first.
//!
//! The drop-in texts live in `units/*.in`, embedded at build time, so a reader or a packager
//! sees the exact unit text in one place.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::fs::paths::{self, show, Root};
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
    for b in vm.bytes() {
        if b.is_ascii_alphanumeric() || b":_.-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
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
    let template = TEMPLATE_DROPIN.replace("@PREPARE@", &word);
    let mut wrote = Vec::new();
    for t in TEMPLATES {
        let rel = Path::new(&format!("{t}.service.d")).join(DROPIN_NAME);
        let text = match t {
            "microvm-virtiofsd@" => VIRTIOFSD_DROPIN.replace("@PREPARE@", &word),
            _ => template.clone(),
        };
        write_new(out, &rel, &text)?;
        wrote.push(rel);
    }
    let config = config?;
    for (vm, paths) in mount_needs(&config) {
        let words: Vec<String> = paths.iter().map(|p| unit_word(p, false)).collect();
        let text = INSTANCE_DROPIN
            .replace("@VM@", &vm)
            .replace("@PATHS@", &words.join(" "));
        for t in TEMPLATES {
            let rel = Path::new(&format!("{}.d", unit_name(t, &vm))).join(INSTANCE_DROPIN_NAME);
            write_new(out, &rel, &text)?;
            wrote.push(rel);
        }
    }
    Ok(Generated::Wrote(wrote))
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

/// For each configured VM with shares: the paths its start needs mounted. The workspace dir
/// stands for every source inside it (see `units/instance.conf.in` for why).
fn mount_needs(cfg: &Config) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (vm, v) in &cfg.vms {
        let mut paths: Vec<String> = Vec::new();
        for s in &v.shares {
            let p = paths::normalize(&cfg.state_dir.join(vm).join(&s.source));
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
            out.push((vm.clone(), paths));
        }
    }
    out
}

/// Creates `out/rel` (and its directory); the file must not exist yet (O_EXCL, as systemd's
/// generators do: the output directory is fresh on every run).
fn write_new(out: &Path, rel: &Path, text: &str) -> Result<()> {
    let path = out.join(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", show(dir)))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", show(&path)))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", show(&path)))
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
