//! A step on the file system or the mount table as people and the journal see it: what
//! (ACTION), where (PATH), and a detail. The engine's operations (engine::plan's `Op`) are
//! said this way, whether applied (logged with VM and TAG as they happen) or only planned.

use std::path::PathBuf;

use crate::fs::paths::show;

/// What a step does. The journal's `ACTION` field is [`Act::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Act {
    CreatePlaceholder,
    Mkdir,
    MkdirAsOwner,
    Mount,
    Unmount,
    Migrate,
    MoveAside,
    Record,
    Unrecord,
    Lease,
    Unlease,
    Seal,
    Quarantine,
    RemovePlanted,
}

impl Act {
    pub fn as_str(self) -> &'static str {
        match self {
            Act::CreatePlaceholder => "create-placeholder",
            Act::Mkdir => "mkdir",
            Act::MkdirAsOwner => "mkdir-as-owner",
            Act::Mount => "mount",
            Act::Unmount => "unmount",
            Act::Migrate => "migrate",
            Act::MoveAside => "move-aside",
            Act::Record => "record",
            Act::Unrecord => "unrecord",
            Act::Lease => "lease",
            Act::Unlease => "unlease",
            Act::Seal => "seal",
            Act::Quarantine => "quarantine",
            Act::RemovePlanted => "remove-planted",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Act::CreatePlaceholder => "create placeholder",
            Act::Mkdir => "create directory",
            Act::MkdirAsOwner => "create directory as its owner:",
            Act::Mount => "bind-mount on",
            Act::Unmount => "unmount",
            Act::Migrate => "migrate",
            Act::MoveAside => "move aside",
            Act::Record => "write record",
            Act::Unrecord => "remove record",
            Act::Lease => "write lease",
            Act::Unlease => "remove lease",
            Act::Seal => "seal (immutable)",
            Act::Quarantine => "quarantine (mode 0, sealed)",
            Act::RemovePlanted => "remove (a link or special file a guest planted)",
        }
    }
}

/// One step taken (or planned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub act: Act,
    pub path: PathBuf,
    pub detail: String,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.act.verb(), show(&self.path))?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}
