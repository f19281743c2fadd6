//! Names valid by construction: a [`VmName`] or an [`EntryName`] is one visible path
//! component of ours (`<workspaceDir>/<name>`, `/run/microvm-workspaces/<vm>.json`), an
//! [`SshDest`] is never taken for an ssh option, a [`PoolName`] is one plain word. They are made only by checking
//! (`TryFrom<String>`, `FromStr`, serde's `try_from`), so whoever holds one need not check
//! it again: command-line text and config keys are parsed once, at the edge.
//!
//! The name rule itself is [`paths::component_fault`] (the file-system layer still checks the
//! engine's `String`s with it); the destination rule is [`SshDest`]'s own.

use std::borrow::Borrow;
use std::ffi::OsStr;
use std::fmt;
use std::ops::Deref;
use std::path::Path;
use std::str::FromStr;

use crate::fs::paths;

/// Text refused as a name or a destination: what it was to be, the text, and why, in one
/// line (the text quoted as Rust writes strings, so no control character gets through).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    what: &'static str,
    text: String,
    why: &'static str,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} {}", self.what, self.text, self.why)
    }
}

impl std::error::Error for Refused {}

impl Refused {
    /// `what` ("mode") refused as `text` because it `why` ("is not an octal mode").
    pub fn new(what: &'static str, text: String, why: &'static str) -> Refused {
        Refused { what, text, why }
    }

    /// Why the text was refused (`starts with '.'`).
    pub fn why(&self) -> &'static str {
        self.why
    }
}

/// What a string type declared as `struct $name(String)` gets: made only through `$check`,
/// read as a `str`, written as a JSON string (and read from one with serde's `try_from`).
macro_rules! checked_string {
    ($name:ident, $check:path) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Refused;
            fn try_from(s: String) -> Result<$name, Refused> {
                match $check(&s) {
                    Some((what, why)) => Err(Refused { what, text: s, why }),
                    None => Ok($name(s)),
                }
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Refused;
            fn try_from(s: &str) -> Result<$name, Refused> {
                $name::try_from(s.to_string())
            }
        }

        impl FromStr for $name {
            type Err = Refused;
            fn from_str(s: &str) -> Result<$name, Refused> {
                $name::try_from(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        // Read-only: nothing reached through `&str` can make the text invalid.
        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<OsStr> for $name {
            fn as_ref(&self) -> &OsStr {
                OsStr::new(&self.0)
            }
        }

        // Ordered and hashed as its text: a map keyed by it is looked up by `&str` too.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        // Quoted as its text is (`{vm:?}` in a message reads `"vm1"`).
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

fn vm_fault(s: &str) -> Option<(&'static str, &'static str)> {
    paths::component_fault(s).map(|why| ("VM name", why))
}

fn entry_fault(s: &str) -> Option<(&'static str, &'static str)> {
    paths::component_fault(s).map(|why| ("entry name", why))
}

/// An SSH destination as given to ssh: never an option (`-...`), no white space or control
/// characters (one word of a command line, one line of a message), not empty.
fn ssh_fault(s: &str) -> Option<(&'static str, &'static str)> {
    let why = if s.is_empty() {
        "is empty"
    } else if s.starts_with('-') {
        "starts with '-' (it would be taken for an ssh option)"
    } else if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        "contains a space or a control character"
    } else {
        return None;
    };
    Some(("SSH destination", why))
}

/// A pool's name (`pools.<pool>`, `--pool`): 1 to 64 bytes of `A-Z a-z 0-9 _ . -`, starting
/// with a letter, a digit or `_`: one word on a command line and in a message, never an
/// option.
fn pool_fault(s: &str) -> Option<(&'static str, &'static str)> {
    let why = if s.is_empty() {
        "is empty"
    } else if s.len() > 64 {
        "is longer than 64 bytes"
    } else if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        "has a character other than A-Z, a-z, 0-9, '_', '.' and '-'"
    } else if !s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        "does not start with a letter, a digit or '_'"
    } else {
        return None;
    };
    Some(("pool name", why))
}

/// A VM's name (microvm.nix's, `microvm@<name>`): one visible path component, at most 200
/// bytes (see [`paths::component_fault`]). A VM's own workspace entry has its name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct VmName(String);

checked_string!(VmName, vm_fault);

/// The name of a workspace entry, `<workspaceDir>/<name>`: a VM's own, or a companion's. The
/// same rule as [`VmName`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct EntryName(String);

checked_string!(EntryName, entry_fault);

/// A VM's SSH destination, as ssh takes it after `--`: `host`, `user@host`,
/// `ssh://user@host:2222`, `vsock/3`. Never starts with `-`, has no white space or control
/// characters, is not empty.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct SshDest(String);

checked_string!(SshDest, ssh_fault);

/// A pool of VMs for parallel work (`config.json` `pools.<pool>`; docs/reference/config.md#pools).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct PoolName(String);

checked_string!(PoolName, pool_fault);

impl AsRef<Path> for VmName {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl AsRef<Path> for EntryName {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

/// A VM's own workspace entry, `<workspaceDir>/<vm>` (the rules are the same).
impl From<VmName> for EntryName {
    fn from(vm: VmName) -> EntryName {
        EntryName(vm.0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Ordinary VM names, every one valid (also `src/tests/names.rs`'s property test's).
    pub(crate) const GOOD_NAMES: [&str; 8] = [
        "vm1",
        "nixfiles",
        "nix-secrets",
        "my_vm.2",
        "a..b",
        "trailing.",
        "ümlaut",
        "with space",
    ];
    const BAD_NAMES: [(&str, &str); 9] = [
        ("", "is empty"),
        (".", "starts with '.'"),
        ("..", "starts with '.'"),
        (".hidden", "starts with '.'"),
        ("a/b", "contains '/'"),
        ("../etc", "starts with '.'"),
        ("vm1/", "contains '/'"),
        ("a\nb", "contains a control character"),
        ("a\u{85}b", "contains a control character"),
    ];

    /// One line, naming what was refused and the text as Rust quotes it.
    fn assert_one_line(e: &Refused, what: &str, text: &str) {
        let line = e.to_string();
        assert!(!line.contains(char::is_control), "{line:?}");
        assert!(line.starts_with(&format!("{what} {text:?} ")), "{line}");
    }

    #[test]
    fn vm_names_accept_one_visible_component_and_refuse_the_rest() {
        for n in GOOD_NAMES {
            let vm = VmName::try_from(n).unwrap();
            assert_eq!(vm, n);
            assert_eq!(vm.to_string(), n);
            assert_eq!(n.parse::<VmName>().unwrap(), vm);
            assert_eq!(format!("{vm:?}"), format!("{n:?}"));
        }
        assert!(VmName::try_from("a".repeat(200)).is_ok());
        assert!(VmName::try_from("é".repeat(100)).is_ok(), "200 bytes");
        let long = format!("{}a", "é".repeat(100));
        assert_eq!(
            VmName::try_from(long).unwrap_err().why(),
            "is longer than 200 bytes"
        );
        for (n, why) in BAD_NAMES {
            let e = VmName::try_from(n).unwrap_err();
            assert_eq!(e.why(), why, "{n:?}");
            assert_one_line(&e, "VM name", n);
        }
        assert_eq!(
            VmName::try_from("a/b").unwrap_err().to_string(),
            r#"VM name "a/b" contains '/'"#
        );
    }

    #[test]
    fn entry_names_follow_the_same_rule_and_say_entry() {
        for n in GOOD_NAMES {
            assert_eq!(EntryName::try_from(n).unwrap().as_str(), n);
        }
        for (n, why) in BAD_NAMES {
            let e = EntryName::try_from(n).unwrap_err();
            assert_eq!(e.why(), why, "{n:?}");
            assert_one_line(&e, "entry name", n);
        }
        let vm = VmName::try_from("nixfiles").unwrap();
        assert_eq!(EntryName::from(vm.clone()), "nixfiles");
        let p: &Path = vm.as_ref();
        assert_eq!(Path::new("/ws").join(p), Path::new("/ws/nixfiles"));
    }

    #[test]
    fn the_name_rule_is_the_file_system_layers() {
        for n in GOOD_NAMES
            .iter()
            .copied()
            .chain(BAD_NAMES.iter().map(|(n, _)| *n))
        {
            assert_eq!(
                VmName::try_from(n).is_ok(),
                paths::check_name("VM", n).is_ok(),
                "{n:?}"
            );
            if let Err(e) = VmName::try_from(n) {
                let old = paths::check_name("VM", n).unwrap_err();
                assert_eq!(e.to_string(), old.to_string());
            }
        }
    }

    #[test]
    fn ssh_destinations_are_never_options_and_one_word() {
        for d in [
            "vm1",
            "alice@vm1",
            "ssh://alice@vm1:2222",
            "vsock/3",
            "vm-1",
            "a-",
        ] {
            assert_eq!(SshDest::try_from(d).unwrap(), d);
        }
        for (d, why) in [
            ("", "is empty"),
            (
                "-oProxyCommand=x",
                "starts with '-' (it would be taken for an ssh option)",
            ),
            ("-", "starts with '-' (it would be taken for an ssh option)"),
            ("a b", "contains a space or a control character"),
            (
                "vm1\nProxyCommand x",
                "contains a space or a control character",
            ),
            ("a\tb", "contains a space or a control character"),
            ("a\u{a0}b", "contains a space or a control character"),
            ("a\u{1b}[2J", "contains a space or a control character"),
        ] {
            let e = SshDest::try_from(d).unwrap_err();
            assert_eq!(e.why(), why, "{d:?}");
            assert_one_line(&e, "SSH destination", d);
        }
    }

    #[test]
    fn pool_names_are_one_plain_word() {
        for n in ["agents", "a", "_x", "9lives", "ci.fast-2", &"p".repeat(64)] {
            assert_eq!(PoolName::try_from(n).unwrap(), n);
        }
        for (n, why) in [
            ("", "is empty"),
            ("-x", "does not start with a letter, a digit or '_'"),
            (".x", "does not start with a letter, a digit or '_'"),
            (
                "a b",
                "has a character other than A-Z, a-z, 0-9, '_', '.' and '-'",
            ),
            (
                "a/b",
                "has a character other than A-Z, a-z, 0-9, '_', '.' and '-'",
            ),
            (
                "ä",
                "has a character other than A-Z, a-z, 0-9, '_', '.' and '-'",
            ),
            (
                "a\nb",
                "has a character other than A-Z, a-z, 0-9, '_', '.' and '-'",
            ),
            (&"p".repeat(65), "is longer than 64 bytes"),
        ] {
            let e = PoolName::try_from(n).unwrap_err();
            assert_eq!(e.why(), why, "{n:?}");
            assert_one_line(&e, "pool name", n);
        }
    }

    #[test]
    fn serde_reads_with_the_check_and_writes_the_text() {
        #[derive(serde::Deserialize, serde::Serialize, PartialEq, Debug)]
        struct T {
            vm: VmName,
            entry: EntryName,
            ssh: SshDest,
        }
        let text = r#"{"vm":"vm1","entry":"nix-secrets","ssh":"alice@vm1"}"#;
        let t: T = serde_json::from_str(text).unwrap();
        assert_eq!((t.vm.as_str(), t.entry.as_str()), ("vm1", "nix-secrets"));
        assert_eq!(serde_json::to_string(&t).unwrap(), text);
        for (bad, needle) in [
            (
                r#"{"vm":"../x","entry":"e","ssh":"s"}"#,
                r#"VM name "../x" starts with '.'"#,
            ),
            (
                r#"{"vm":"v","entry":".links","ssh":"s"}"#,
                r#"entry name ".links" starts with '.'"#,
            ),
            (
                r#"{"vm":"v","entry":"e","ssh":"-oX"}"#,
                r#"SSH destination "-oX" starts with '-'"#,
            ),
            (
                r#"{"vm":"a\u001bb","entry":"e","ssh":"s"}"#,
                r#"VM name "a\u{1b}b" contains a control character"#,
            ),
        ] {
            let e = serde_json::from_str::<T>(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            assert!(e.contains(" at line 1 column "), "where: {e}");
            assert!(!e.contains(char::is_control), "{e:?}");
        }
    }

    #[test]
    fn maps_keyed_by_names_are_looked_up_by_str() {
        let mut m = std::collections::BTreeMap::new();
        m.insert(VmName::try_from("b").unwrap(), 2);
        m.insert(VmName::try_from("a").unwrap(), 1);
        assert_eq!(m.get("a"), Some(&1));
        assert_eq!(m.keys().map(VmName::as_str).collect::<Vec<_>>(), ["a", "b"]);
    }
}
