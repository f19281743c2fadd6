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

/// A unit's `ActiveState`: systemd's `UnitActiveState`, as `systemctl show` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveState {
    Active,
    Reloading,
    Inactive,
    Failed,
    Activating,
    Deactivating,
    Maintenance,
    Refreshing,
}

impl ActiveState {
    const ALL: [ActiveState; 8] = [
        ActiveState::Active,
        ActiveState::Reloading,
        ActiveState::Inactive,
        ActiveState::Failed,
        ActiveState::Activating,
        ActiveState::Deactivating,
        ActiveState::Maintenance,
        ActiveState::Refreshing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActiveState::Active => "active",
            ActiveState::Reloading => "reloading",
            ActiveState::Inactive => "inactive",
            ActiveState::Failed => "failed",
            ActiveState::Activating => "activating",
            ActiveState::Deactivating => "deactivating",
            ActiveState::Maintenance => "maintenance",
            ActiveState::Refreshing => "refreshing",
        }
    }

    /// `None` for a word this systemd version does not have: then nobody can tell.
    pub fn parse(word: &str) -> Option<ActiveState> {
        ActiveState::ALL.into_iter().find(|s| s.as_str() == word)
    }

    /// What `systemctl is-active` counts as active (it exits 0 for these).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            ActiveState::Active | ActiveState::Reloading | ActiveState::Refreshing
        )
    }
}

impl std::fmt::Display for ActiveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One unit as `systemctl show` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    /// The unit's name as systemd knows it (an alias is shown as what it aliases).
    pub id: String,
    pub active: ActiveState,
    /// The unit type's own state (`running`, `auto-restart`, `dead`, ...): many, and per
    /// unit type, so kept as systemd's word.
    pub sub: String,
    /// The current run's `InvocationID`; `None` when the unit has none (never started).
    pub invocation: Option<String>,
}

/// The properties [`unit_states`] asks for.
const SHOW_PROPERTIES: &str = "Id,ActiveState,SubState,InvocationID";

/// systemd's longest unit name (`UNIT_NAME_MAX`): a longer one is no unit, and systemctl would
/// refuse the whole call for it.
const UNIT_NAME_MAX: usize = 256;

/// The states of `units`, in their order, from one `systemctl show` for all of them. An entry
/// is `None` where systemd did not tell (a name too long to be a unit, an `ActiveState` word
/// this does not know); the whole answer is `None` when systemctl cannot be asked (no systemd,
/// e.g. in a build sandbox). No units: no call.
pub fn unit_states(units: &[String]) -> Option<Vec<Option<UnitState>>> {
    let asked: Vec<&String> = units.iter().filter(|u| u.len() <= UNIT_NAME_MAX).collect();
    if asked.is_empty() {
        return Some(vec![None; units.len()]);
    }
    let out = std::process::Command::new(systemctl())
        .args(["show", "-p", SHOW_PROPERTIES])
        .args(&asked)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let asked: Vec<String> = asked.into_iter().cloned().collect();
    let mut got = parse_show(&String::from_utf8_lossy(&out.stdout), &asked).into_iter();
    Some(
        units
            .iter()
            .map(|u| {
                if u.len() <= UNIT_NAME_MAX {
                    got.next().flatten()
                } else {
                    None
                }
            })
            .collect(),
    )
}

/// `systemctl show -p Id,ActiveState,SubState,InvocationID UNIT...` output, taken apart: one
/// block of `Key=value` lines per unit, in the order asked, blank lines between. Each of
/// `units` gets the block at its place when there is one block per unit (systemd shows a unit
/// that does not exist too, `inactive`), else the block whose `Id` is its name; `None` without
/// one, or when its `ActiveState` is missing or unknown.
pub fn parse_show(text: &str, units: &[String]) -> Vec<Option<UnitState>> {
    let mut blocks: Vec<Vec<(&str, &str)>> = vec![Vec::new()];
    for line in text.lines() {
        if line.is_empty() {
            if blocks.last().is_some_and(|b| !b.is_empty()) {
                blocks.push(Vec::new());
            }
        } else if let Some(kv) = line.split_once('=') {
            blocks.last_mut().expect("never empty").push(kv);
        }
    }
    blocks.retain(|b| !b.is_empty());
    fn get<'a>(b: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
        b.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
    let state = |b: &[(&str, &str)]| {
        Some(UnitState {
            id: get(b, "Id").unwrap_or("").to_string(),
            active: ActiveState::parse(get(b, "ActiveState")?)?,
            sub: get(b, "SubState").unwrap_or("").to_string(),
            invocation: get(b, "InvocationID")
                .filter(|v| !v.is_empty())
                .map(str::to_string),
        })
    };
    if blocks.len() == units.len() {
        blocks.iter().map(|b| state(b)).collect()
    } else {
        units
            .iter()
            .map(|u| {
                blocks
                    .iter()
                    .find(|b| get(b, "Id") == Some(u.as_str()))
                    .and_then(|b| state(b))
            })
            .collect()
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

/// Stops `unit`, waiting for the stop job to end (systemctl's own wait).
pub fn stop(unit: &str) -> Result<()> {
    let status = std::process::Command::new(systemctl())
        .args(["stop", unit])
        .status()
        .with_context(|| format!("cannot run {}", systemctl().display()))?;
    if !status.success() {
        anyhow::bail!("systemctl stop {unit} failed ({status})");
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn units(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// `systemctl show -p Id,ActiveState,SubState,InvocationID` of four microvm@ units on
    /// systemd 252 (the order of the keys is systemd's, not the order asked): one running,
    /// one that was never started (no such VM: systemd shows it all the same), one failed,
    /// one waiting to be started again.
    const FOUR: &str = "\
Id=microvm@vm1.service
ActiveState=active
SubState=running
InvocationID=3c3d0c7a8c0b4a2e9f61d1c2b7a4e5f6

Id=microvm@gone.service
ActiveState=inactive
SubState=dead
InvocationID=

Id=microvm@my-vm.dev.service
ActiveState=failed
SubState=failed
InvocationID=8f0e2d7c6b5a49382716f5e4d3c2b1a0

Id=microvm@\\xc3\\xbcmlaut.service
ActiveState=activating
SubState=auto-restart
InvocationID=0a1b2c3d4e5f40718293a4b5c6d7e8f9
";

    #[test]
    fn show_output_becomes_one_typed_state_per_unit_in_the_order_asked() {
        let asked = units(&[
            "microvm@vm1.service",
            "microvm@gone.service",
            "microvm@my-vm.dev.service",
            "microvm@\\xc3\\xbcmlaut.service",
        ]);
        let got = parse_show(FOUR, &asked);
        let active: Vec<_> = got.iter().map(|s| s.as_ref().map(|s| s.active)).collect();
        assert_eq!(
            active,
            [
                Some(ActiveState::Active),
                Some(ActiveState::Inactive),
                Some(ActiveState::Failed),
                Some(ActiveState::Activating)
            ]
        );
        let vm1 = got[0].as_ref().unwrap();
        assert_eq!(vm1.id, "microvm@vm1.service");
        assert_eq!(vm1.sub, "running");
        assert_eq!(
            vm1.invocation.as_deref(),
            Some("3c3d0c7a8c0b4a2e9f61d1c2b7a4e5f6")
        );
        assert_eq!(got[1].as_ref().unwrap().invocation, None);
        assert_eq!(got[3].as_ref().unwrap().sub, "auto-restart");
        let running: Vec<bool> = got
            .iter()
            .map(|s| s.as_ref().unwrap().active.is_active())
            .collect();
        assert_eq!(running, [true, false, false, false]);
    }

    #[test]
    fn blocks_go_by_place_when_one_per_unit_else_by_id() {
        // An alias is shown under the name it aliases: one block per unit, so by place.
        let text = "Id=real.service\nActiveState=reloading\nSubState=reload\nInvocationID=\n";
        let got = parse_show(text, &units(&["alias.service"]));
        assert_eq!(got[0].as_ref().unwrap().active, ActiveState::Reloading);
        // A block missing: the others by their Id, the missing one unknown.
        let asked = units(&[
            "microvm@my-vm.dev.service",
            "microvm@nowhere.service",
            "microvm@vm1.service",
        ]);
        let blocks: Vec<&str> = FOUR.split("\n\n").collect();
        let two = [blocks[0], blocks[2]].join("\n\n");
        let got = parse_show(&two, &asked);
        assert_eq!(got[0].as_ref().unwrap().active, ActiveState::Failed);
        assert_eq!(got[1], None);
        assert_eq!(got[2].as_ref().unwrap().active, ActiveState::Active);
    }

    #[test]
    fn an_unknown_or_missing_active_state_tells_nothing() {
        let text = "Id=a.service\nActiveState=hibernating\nSubState=x\n\nId=b.service\nSubState=dead\n\n\nId=c.service\nActiveState=maintenance\nSubState=cleaning\nInvocationID=\n";
        let got = parse_show(text, &units(&["a.service", "b.service", "c.service"]));
        assert_eq!(got[0], None);
        assert_eq!(got[1], None);
        assert_eq!(got[2].as_ref().unwrap().active, ActiveState::Maintenance);
        assert!(parse_show("", &units(&["a.service"]))[0].is_none());
        assert!(parse_show("garbage without equals\n", &units(&["a.service"]))[0].is_none());
    }

    #[test]
    fn active_states_are_systemds_words_and_is_active_is_systemctls() {
        for s in ActiveState::ALL {
            assert_eq!(ActiveState::parse(s.as_str()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(ActiveState::parse("Active"), None);
        let active: Vec<_> = ActiveState::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .collect();
        assert_eq!(
            active,
            [
                ActiveState::Active,
                ActiveState::Reloading,
                ActiveState::Refreshing
            ]
        );
    }

    #[test]
    fn no_units_no_call_and_overlong_names_are_no_units() {
        // Neither needs systemctl: nothing is asked.
        assert_eq!(unit_states(&[]), Some(Vec::new()));
        let long = format!("microvm@{}.service", "x".repeat(UNIT_NAME_MAX));
        assert_eq!(unit_states(&[long]), Some(vec![None]));
    }
}
