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

/// `ActiveState` and `SubState` of a unit.
pub fn unit_state(unit: &str) -> Result<(String, String)> {
    let out = std::process::Command::new(systemctl())
        .args(["show", "-p", "ActiveState", "-p", "SubState", unit])
        .output()
        .with_context(|| format!("cannot run {}", systemctl().display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .unwrap_or("")
            .to_string()
    };
    Ok((get("ActiveState"), get("SubState")))
}

/// Restarts `unit` and waits (at most `timeout`) until it is active or has failed, showing
/// progress on stderr when `progress`. Returns the final state in words.
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
        // The job first, then the state: read the other way round, a restart job that
        // finished between the two reads looked done while the state read was from its
        // middle (the unit `inactive` between stop and start), and a successful restart was
        // reported as failed (seen once in ~50 e2e runs).
        let job_running = std::process::Command::new(systemctl())
            .args(["list-jobs", "--no-legend", unit])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        let (active, sub) = unit_state(unit)?;
        if progress {
            eprint!(
                "\r  {unit}: {active} ({sub}, {:.0} s)   ",
                start.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
        // With Restart=always (microvm.nix's) a failed start never reaches "failed": the unit
        // waits in activating/auto-restart, with no job, until RestartSec has passed.
        let done = match (active.as_str(), sub.as_str()) {
            _ if job_running => None,
            (_, "auto-restart") => Some(format!("{active}, {sub}")),
            ("active" | "failed" | "inactive", _) => Some(active.clone()),
            _ => None,
        };
        if let Some(state) = done {
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
                "{unit} is still {active} ({sub}) after {} s; see journalctl -u {unit}",
                timeout.as_secs()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}
