//! Steps taken (or, in a dry run, planned) on the file system and the mount table, logged to
//! the journal with the fields VM, TAG, PATH and ACTION as they happen.

use std::path::{Path, PathBuf};

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

/// The steps of one run, with the labels its log lines carry.
#[derive(Debug, Default)]
pub struct Steps {
    /// Plan only: steps are recorded, not logged (the caller does not take them).
    pub dry_run: bool,
    pub vm: String,
    pub tag: String,
    pub actions: Vec<Action>,
}

impl Steps {
    pub fn new(vm: &str, dry_run: bool) -> Steps {
        Steps {
            dry_run,
            vm: vm.to_string(),
            ..Steps::default()
        }
    }

    /// Records (and, unless planning, logs) a step.
    pub fn act(&mut self, act: Act, path: &Path, detail: String) {
        if !self.dry_run {
            tracing::info!(vm = %self.vm, tag = %self.tag, path = %show(path), action = act.as_str(),
                "{} {} {detail}", act.as_str(), show(path));
        }
        self.actions.push(Action {
            act,
            path: path.to_path_buf(),
            detail,
        });
    }
}
