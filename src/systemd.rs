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

/// `systemctl is-active UNIT`: `Some(true)` active, `Some(false)` not, `None` if systemctl
/// cannot tell (no systemd, e.g. in a build sandbox).
pub fn is_active(unit: &str) -> Option<bool> {
    let out = std::process::Command::new(systemctl())
        .args(["is-active", "--quiet", unit])
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    match out.code() {
        Some(0) => Some(true),
        Some(3) | Some(4) => Some(false),
        _ => None,
    }
}

/// `ActiveState` of a unit.
pub fn active_state(unit: &str) -> Result<String> {
    let out = std::process::Command::new(systemctl())
        .args(["show", "--value", "-p", "ActiveState", unit])
        .output()
        .with_context(|| format!("cannot run {}", systemctl().display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Restarts `unit` and waits (at most `timeout`) until it is active or failed, showing
/// progress on `progress` when it is a terminal. Returns the final state.
pub fn restart_and_wait(
    unit: &str,
    timeout: std::time::Duration,
    progress: bool,
) -> Result<String> {
    use std::io::Write;
    let status = std::process::Command::new(systemctl())
        .args(["restart", "--no-block", unit])
        .status()
        .with_context(|| format!("cannot run {}", systemctl().display()))?;
    if !status.success() {
        anyhow::bail!("systemctl restart {unit} failed ({status})");
    }
    let start = std::time::Instant::now();
    // Give the restart job a moment to leave the old "active" state behind.
    std::thread::sleep(std::time::Duration::from_millis(200));
    loop {
        let state = active_state(unit)?;
        let job_running = std::process::Command::new(systemctl())
            .args(["list-jobs", "--no-legend", unit])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if progress {
            eprint!(
                "\r  {unit}: {state} ({:.0} s)   ",
                start.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
        if !job_running && (state == "active" || state == "failed" || state == "inactive") {
            if progress {
                eprintln!();
            }
            return Ok(state);
        }
        if start.elapsed() > timeout {
            if progress {
                eprintln!();
            }
            anyhow::bail!(
                "{unit} is still {state} after {} s; see journalctl -u {unit}",
                timeout.as_secs()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}
