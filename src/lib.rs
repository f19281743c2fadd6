//! microvm-workspaces: make the share sources of microvm.nix VMs exist at every start, and
//! link a repo into a VM's workspace. The design is in docs/design.md; the binaries are thin.
//!
//! Modules, each one job; a module imports only modules above it in this list (checked by
//! tests/layout.rs):
//! * [`paths`]: default locations, names, `MICROVM_WORKSPACES_ROOT` re-rooting;
//! * [`logging`]: journal or stderr, and one-line errors;
//! * [`failpoint`]: crash-test failpoints (a cargo feature; empty in release builds);
//! * [`chase`]: resolving paths as root without being tricked (descriptors, owner rules);
//! * [`idmap`]: link mounts: clones, `nosuid,nodev`, idmapped so the guest user is the linker;
//! * [`config`]: the optional `config.json`;
//! * [`placeholder`]: the directories standing in for missing sources, known by their mark;
//! * [`dirs`]: trusted places, the lock, leftovers, directories made with a user's credentials;
//! * [`gitview`]: the guest's view of a repo's git metadata; the VM's own git dir;
//! * [`action`]: the steps a run takes, as logged;
//! * [`entry`]: a workspace entry (placeholder + record + mount): reconcile and relink;
//! * [`runner`]: a VM's shares, from microvm.nix's runner and the config;
//! * [`prepare`]: making every source of one VM exist (plan, then apply);
//! * [`shows`]: what a share source shows, in words (placeholder, whose repo, directory);
//! * [`record`]: the `/run` record of what each share resolved to at the VM's start;
//! * [`units`]: unit names and the generator's drop-ins;
//! * [`systemd`]: talking to systemd (mount namespace, systemctl);
//! * [`status`]: each VM's shares at start vs now, staleness, the table;
//! * [`ssh`]: where an SSH destination goes, waiting for its banner, the remote command;
//! * [`flow`]: microvm-link's link and unlink, with typed outcomes;
//! * [`fetch`]: `microvm-link fetch`: the guest's branches into the host repo, as the user;
//! * [`shell`]: `microvm-link shell`, from a repo to a shell in its VM;
//! * [`doctor`]: `microvm-link doctor`: checks of the host, each finding with its fix;
//! * [`cli`]: microvm-link's command line.
#![forbid(unsafe_code)]

pub mod action;
pub mod chase;
pub mod cli;
pub mod config;
pub mod dirs;
pub mod doctor;
pub mod entry;
pub mod failpoint;
pub mod fetch;
pub mod flow;
pub mod gitview;
pub mod idmap;
pub mod logging;
pub mod paths;
pub mod placeholder;
pub mod prepare;
pub mod record;
pub mod runner;
pub mod shell;
pub mod shows;
pub mod ssh;
pub mod status;
pub mod systemd;
pub mod units;
