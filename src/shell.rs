//! `microvm-link shell`: from a repo to a shell in its VM (docs/design.md#ssh). The privileged
//! part (link and start, each only if needed) runs as root, through sudo for a normal user;
//! the SSH part runs as the user, with their agent, keys and `~/.ssh/config`.

use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::flow::{self, Env};
use crate::paths::{self, show};
use crate::ssh;

/// Where `shell` goes.
#[derive(Debug)]
pub struct Plan {
    pub vm: String,
    pub destination: String,
    /// The guest directory matching the working directory, when the workspace share's
    /// mount point is known.
    pub dir: Option<String>,
    /// Whom ssh runs as (`None`: whoever runs this).
    pub user: Option<ssh::As>,
}

/// The VM (named, or derived from the repo around the working directory), its destination,
/// and the guest directory matching the working directory.
pub fn plan(env: &Env, vm: Option<&str>, given: Option<&str>) -> Result<Plan> {
    let repo = env.repo(None)?;
    let vm = match vm {
        Some(v) => v.to_string(),
        None => flow::derive_vm_name(&repo.path)?,
    };
    env.known_vm(&vm)?;
    let destination = flow::ssh_destination(env, &vm, given)
        .with_context(|| {
            format!("{vm} has no SSH destination; set vms.{vm}.ssh in the config (NixOS: services.microvm-workspaces.ssh) or pass --ssh DEST")
        })?
        .name;
    crate::config::check_ssh_destination(&destination)?;
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let rel = env
        .root
        .inside(&cwd)
        .and_then(|c| c.strip_prefix(&repo.path).ok().map(Path::to_path_buf));
    let dir = match (guest_workspace(&env.cfg, &vm), rel) {
        (Some(mp), Some(rel)) if rel.as_os_str().is_empty() => Some(mp),
        (Some(mp), Some(rel)) => Some(
            Path::new(&mp)
                .join(rel)
                .to_str()
                .with_context(|| format!("the working directory {} is not UTF-8", show(&cwd)))?
                .to_string(),
        ),
        _ => None,
    };
    Ok(Plan {
        vm,
        destination,
        dir,
        user: ssh::as_user(env.user),
    })
}

/// Where the guest sees `vm`'s own workspace, from the config: the mount point of its share
/// of `<workspaceDir>/<vm>`, or `<mount point>/current` for its live root
/// `<workspaceDir>/.live/<vm>`.
pub fn guest_workspace(cfg: &Config, vm: &str) -> Option<String> {
    let pinned = cfg.workspace_dir.join(vm);
    let live = cfg.workspace_dir.join(paths::LIVE).join(vm);
    cfg.vms.get(vm)?.shares.iter().find_map(|s| {
        let path = paths::normalize(&cfg.state_dir.join(vm).join(&s.source));
        let mp = s.mount_point.as_deref()?;
        if path == pinned {
            Some(mp.to_string())
        } else if path == live {
            Some(format!(
                "{}/{}",
                mp.trim_end_matches('/'),
                crate::entry::LIVE_CURRENT
            ))
        } else {
            None
        }
    })
}

/// The privileged part for a user who is not root: `sudo microvm-link VM --if-needed
/// --no-wait`, in this working directory; its output is theirs to see.
pub fn link_through_sudo(vm: &str, given: Option<&str>) -> Result<()> {
    let (mut c, sudo) = flow::sudo_command();
    let exe = std::env::current_exe().context("cannot find microvm-link's own executable")?;
    c.arg("--").arg(&exe).args(["--if-needed", "--no-wait"]);
    if let Some(d) = given {
        c.arg(format!("--ssh={d}"));
    }
    // After `--`: a VM named like a subcommand or an option is still the VM.
    c.args(["--", vm]);
    // Its report is about linking, not the session: stderr, so that `$(microvm-link shell --
    // CMD)` captures only CMD's output (as when root runs shell and links in-process).
    let status = c
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("microvm-link needs root and could not run {sudo}"))?;
    if !status.success() {
        bail!("linking and starting {vm} failed ({status})");
    }
    Ok(())
}

/// Waits for the VM's SSH banner as the user's ssh resolves the destination.
pub fn wait(plan: &Plan, timeout: std::time::Duration, progress: bool) -> Result<()> {
    let target = ssh::resolve(&plan.destination, plan.user)?;
    if !target.proxied {
        let took = ssh::wait_for_banner(&target, timeout, progress)?;
        if progress {
            eprintln!(
                "ssh {} ({}:{}) answered after {:.1} s",
                target.destination,
                target.host,
                target.port,
                took.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Replaces this process with `ssh DEST -- <cd DIR && COMMAND>` as the user; returns only
/// if that cannot start. Its exit status is the remote command's.
pub fn exec(plan: &Plan, command: &[String]) -> anyhow::Error {
    let mut c = ssh::command(plan.user);
    if command.is_empty() && std::io::stdin().is_terminal() {
        c.arg("-t");
    }
    let err = c
        .arg("--")
        .arg(&plan.destination)
        .arg(ssh::remote_command(plan.dir.as_deref(), command))
        .exec();
    anyhow::anyhow!("cannot run ssh: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_workspace_is_the_own_shares_mount_point_or_its_live_view() {
        let cfg = Config::parse(
            br#"{"vms": {
                "a": {"shares": [
                    {"tag": "o", "proto": "virtiofs", "source": "/srv/other", "mountPoint": "/o"},
                    {"tag": "w", "proto": "virtiofs", "source": "/var/lib/microvm-workspaces/a", "mountPoint": "/work"}]},
                "b": {"shares": [{"tag": "l", "proto": "virtiofs",
                    "source": "/var/lib/microvm-workspaces/.live/b", "mountPoint": "/run/microvm-workspaces/l"}]},
                "c": {"shares": [{"tag": "w", "proto": "virtiofs", "source": "/var/lib/microvm-workspaces/c"}]}}}"#,
        )
        .unwrap();
        assert_eq!(guest_workspace(&cfg, "a").as_deref(), Some("/work"));
        assert_eq!(
            guest_workspace(&cfg, "b").as_deref(),
            Some("/run/microvm-workspaces/l/current")
        );
        assert_eq!(guest_workspace(&cfg, "c"), None);
        assert_eq!(guest_workspace(&cfg, "nope"), None);
    }
}
