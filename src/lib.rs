//! microvm-workspaces: make the share sources of microvm.nix VMs exist at every start, and
//! link a repo into a VM's workspace. ARCHITECTURE.md is the map; the binaries are thin.
//!
//! Five layers, each a directory; a layer imports only the layers above it in this list
//! (src/tests/layout.rs reads the first segment of every `crate::` path):
//! * [`fs`]: file-system safety: paths, resolving as root without being tricked, trusted
//!   directories and the lock, placeholders and their mark, link mounts (idmapped);
//! * [`model`]: what the tool knows: config, VM shares, the runtime record, typed steps;
//! * [`host`]: the host's interfaces: the journal, systemd, ssh, unit names and drop-ins;
//! * [`engine`]: the workspace engine: entries, the guest's git view, preparing a VM;
//! * [`cmd`]: the commands: link, status, shell, fetch, doctor, and the command line.
#![forbid(unsafe_code)]

pub mod cmd;
pub mod engine;
pub mod fs;
pub mod host;
pub mod model;

#[cfg(test)]
mod tests;
