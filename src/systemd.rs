//! Talking to systemd: its mount namespace and `systemctl`.

use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{Context, Result};

/// `systemctl`: fixed at build time for packages (`MICROVM_WORKSPACES_SYSTEMCTL`), else PATH.
pub fn systemctl() -> PathBuf {
    PathBuf::from(option_env!("MICROVM_WORKSPACES_SYSTEMCTL").unwrap_or("systemctl"))
}

/// Joins PID 1's mount namespace if this process is in another one.
///
/// systemd runs `ExecStartPre=+` of a unit with `PrivateTmp=` inside the unit's own mount
/// namespace (a slave of the host's): a bind mount made there would never reach the host, nor
/// `microvm-link status`. Joined, our mounts are host-wide and propagate into the unit's
/// namespace before virtiofsd starts. Must run while the process is single-threaded.
pub fn join_host_mount_namespace() -> Result<bool> {
    use nix::sys::stat::stat;
    let ours = stat("/proc/self/ns/mnt").context("cannot stat /proc/self/ns/mnt")?;
    let host = stat("/proc/1/ns/mnt").context("cannot stat /proc/1/ns/mnt")?;
    if (ours.st_dev, ours.st_ino) == (host.st_dev, host.st_ino) {
        return Ok(false);
    }
    let f = std::fs::File::open("/proc/1/ns/mnt").context("cannot open /proc/1/ns/mnt")?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS)
        .context("cannot join PID 1's mount namespace")?;
    Ok(true)
}

/// Did systemd start this process as (part of) a unit?
pub fn run_by_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
}
