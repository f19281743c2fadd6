//! microvm-workspaces: make the share sources of microvm.nix VMs exist at every start, and
//! link a repo into a VM's workspace.
//!
//! The binaries are thin; everything lives here (DESIGN.md section 2):
//! * [`paths`]: default locations and `MICROVM_WORKSPACES_ROOT` re-rooting;
//! * [`config`]: the optional `config.json`;
//! * [`runner`]: a VM's shares, from microvm.nix's runner and the config;
//! * [`fsafe`]: resolving and creating paths as root without being tricked;
//! * [`prepare`]: making every source of a VM exist;
//! * [`link`]: link records and bind mounts;
//! * [`state`]: the `/run` record of what each VM saw at its start, and staleness;
//! * [`units`]: unit names and the generator's drop-ins;
//! * [`systemd`]: talking to systemd (mount namespace, systemctl);
//! * [`logging`]: journal or stderr.

pub mod config;
pub mod fsafe;
pub mod link;
pub mod logging;
pub mod paths;
pub mod prepare;
pub mod runner;
pub mod state;
pub mod systemd;
pub mod units;
