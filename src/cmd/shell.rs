//! `microvm-link shell`: from a repo to a shell in its VM (docs/reference/cli.md#shell). The privileged
//! part (link and start, each only if needed) runs as root, through sudo for a normal user;
//! the SSH part runs as the user, with their agent, keys and `~/.ssh/config`.

use std::io::IsTerminal;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd::cli::Target;
use crate::cmd::flow::{self, Env, Options};
use crate::cmd::{fetch, pool};
use crate::fs::paths::{self, show};
use crate::host::caller::{self, Ids};
use crate::host::ssh;
use crate::model::config::Config;
use crate::model::names::{PoolName, SshDest, VmName};
use crate::model::record;

/// Where `shell` goes.
#[derive(Debug)]
pub struct Plan {
    pub vm: VmName,
    /// The repo around the working directory (inside path).
    pub repo: PathBuf,
    pub destination: SshDest,
    /// The guest directory matching the working directory, when the workspace share's
    /// mount point is known.
    pub dir: Option<String>,
    /// Whom ssh runs as (`None`: whoever runs this).
    pub user: Option<Ids>,
    /// For a live workspace share: the guest path of its `current` and the inode (the
    /// repo's on the host, which virtiofs passes on) it must show before the command runs.
    pub view: Option<(String, u64)>,
}

/// `microvm-link shell`, whole: the VM (named, derived, or leased from a pool), linked and
/// started only if needed (through sudo for a user, only then), the SSH wait, the session as
/// the caller, the guest's branches fetched after. Returns the remote command's status.
pub fn main(
    env: &Env,
    target: Target,
    given: Option<&SshDest>,
    command: &[String],
    timeout: Duration,
    progress: bool,
) -> Result<u8> {
    let root = nix::unistd::Uid::effective().is_root();
    let (vm, pool) = match target {
        Target::Vm(vm) => (vm, None),
        Target::Pool(p) => {
            pool::vms_of(&env.cfg, &p)?;
            let repo = env.repo(None)?;
            let own = pool::own_lease_in(&env.tree, &env.cfg, &p, env.caller.uid(), &repo.path);
            (own, Some(p))
        }
    };
    // A pool with no lease of this worktree yet: nothing to plan until one is taken.
    let planned = match (&vm, &pool) {
        (None, Some(_)) => None,
        _ => Some(plan(env, vm.clone(), given)?),
    };
    let serving = planned.as_ref().is_some_and(|p| serving(env, p));
    let mut vm = planned.as_ref().map(|p| p.vm.clone());
    if root {
        let opts = Options {
            if_needed: true,
            no_wait: true,
            progress,
            ..Options::default()
        };
        let out = match &pool {
            Some(p) => flow::lease(env, p, None, opts)?,
            None => flow::link(env, vm.clone(), None, opts)?,
        };
        out.lines().iter().for_each(|l| eprintln!("{l}"));
        anyhow::ensure!(out.success(), "linking and starting {} failed", out.vm);
        vm = Some(out.vm);
    } else if !serving {
        link_through_sudo(vm.as_ref(), pool.as_ref(), given)?;
        if let Some(p) = &pool {
            let repo = env.repo(None)?;
            vm = Some(
                pool::own_lease_in(&env.tree, &env.cfg, p, env.caller.uid(), &repo.path)
                    .with_context(|| {
                        format!(
                            "no lease of pool {p} is recorded for {} after leasing",
                            show(&repo.path)
                        )
                    })?,
            );
        }
    }
    let plan = match planned {
        Some(p) if Some(&p.vm) == vm.as_ref() => p,
        _ => plan(env, vm, given)?,
    };
    let control = wait(env, &plan, serving, timeout, progress)?;
    let code = run(&plan, control.as_deref(), command)?;
    caller::drop_to(env.caller)?;
    if let Some(line) = fetch::after_shell(env, &plan.vm) {
        eprintln!("microvm-link: {line}");
    }
    Ok(code)
}

/// The VM (named, or derived from the repo around the working directory), its destination,
/// and the guest directory matching the working directory.
pub fn plan(env: &Env, vm: Option<VmName>, given: Option<&SshDest>) -> Result<Plan> {
    let repo = env.repo(None)?;
    let vm = match vm {
        Some(v) => v,
        None => flow::vm_for(env, &repo)?,
    };
    env.known_vm(&vm)?;
    let destination = flow::ssh_destination(env, &vm, given)
        .with_context(|| {
            format!("{vm} has no SSH destination; set vms.{vm}.ssh in the config (NixOS: services.microvm-workspaces.ssh) or pass --ssh DEST")
        })?
        .name;
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let rel = env
        .root
        .inside(&cwd)
        .and_then(|c| c.strip_prefix(&repo.path).ok().map(Path::to_path_buf));
    let guest = guest_view(&env.cfg, &vm);
    let view = guest
        .as_ref()
        .filter(|g| g.1)
        .map(|(mp, _)| (mp.clone(), repo.id().1));
    let dir = match (guest.map(|g| g.0), rel) {
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
        repo: repo.path,
        destination,
        dir,
        user: ssh::as_user(env.caller),
        view,
    })
}

/// Where the guest sees `vm`'s own workspace, from the config: the mount point of its share
/// of `<workspaceDir>/<vm>`, or `<mount point>/current` for its live root
/// `<workspaceDir>/.live/<vm>`.
pub fn guest_workspace(cfg: &Config, vm: &VmName) -> Option<String> {
    guest_view(cfg, vm).map(|(dir, _)| dir)
}

/// [`guest_workspace`], and whether it is the live view (`<mount point>/current`).
fn guest_view(cfg: &Config, vm: &VmName) -> Option<(String, bool)> {
    let pinned = cfg.workspace_dir.join(vm);
    let live = cfg.workspace_dir.join(paths::LIVE).join(vm);
    cfg.vm(vm)?.shares.iter().find_map(|s| {
        let path = paths::normalize(&cfg.state_dir.join(vm).join(&s.source));
        let mp = s.mount_point.as_deref()?;
        if path == pinned {
            Some((mp.to_string(), false))
        } else if path == live {
            let current = crate::fs::paths::LIVE_CURRENT;
            Some((format!("{}/{current}", mp.trim_end_matches('/')), true))
        } else {
            None
        }
    })
}

/// The privileged part for a user who is not root: `sudo microvm-link VM --if-needed
/// --no-wait` (or `--pool POOL` instead of the VM), in this working directory; its output is
/// theirs to see.
pub fn link_through_sudo(
    vm: Option<&VmName>,
    pool: Option<&PoolName>,
    given: Option<&SshDest>,
) -> Result<()> {
    let (mut c, sudo) = caller::sudo_command();
    let exe = std::env::current_exe().context("cannot find microvm-link's own executable")?;
    c.arg("--").arg(&exe).args(["--if-needed", "--no-wait"]);
    if let Some(d) = given {
        c.arg(format!("--ssh={d}"));
    }
    if let Some(p) = pool {
        c.arg(format!("--pool={p}"));
    }
    // After `--`: a VM named like a subcommand or an option is still the VM.
    if let Some(vm) = vm.filter(|_| pool.is_none()) {
        c.arg("--").arg(vm);
    }
    // Its report is about linking, not the session: stderr, so that `$(microvm-link shell --
    // CMD)` captures only CMD's output (as when root runs shell and links in-process).
    let status = c
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("microvm-link needs root and could not run {sudo}"))?;
    if !status.success() {
        match (pool, vm) {
            (Some(p), _) => bail!("leasing a VM of pool {p} failed ({status})"),
            (None, Some(vm)) => bail!("linking and starting {vm} failed ({status})"),
            (None, None) => bail!("linking and starting the VM failed ({status})"),
        }
    }
    Ok(())
}

/// Whether `vm` already serves the plan's repo: running, its workspace entry linked to this
/// repo, nothing stale. Then the privileged `--if-needed` would change nothing, and a user's
/// shell skips sudo. Asked with the user's own rights; any doubt is a "no", and the
/// privileged run decides.
pub fn serving(env: &Env, plan: &Plan) -> bool {
    crate::cmd::status::status_of(&env.tree, &env.cfg, &env.root, &plan.vm).is_ok_and(|s| {
        s.running == Some(true)
            && !s.stale
            && s.workspace.state == crate::engine::entry::State::Linked
            && s.workspace.target == Some(show(&plan.repo))
    })
}

/// How long a shell waits, in the guest, for a live view to show the repo (virtiofs'
/// `--cache=auto` keeps an entry for a second).
const VIEW_WAIT: Duration = Duration::from_secs(3);

/// How long a shared connection outlives its last session.
const CONTROL_PERSIST: Duration = Duration::from_secs(300);

/// A VM that has run this long is past its boot: its sshd listens, no banner to wait for.
const SETTLED: Duration = Duration::from_secs(60);

/// Waits for the VM's SSH banner as the user's ssh resolves the destination, unless a shared
/// connection to this start of the VM is open already, or the VM was serving the repo before
/// this call and started more than [`SETTLED`] ago (the probe is a connection of its own:
/// on a slow guest it costs what the ssh after it costs). Returns the control socket to
/// share connections through, if any.
pub fn wait(
    env: &Env,
    plan: &Plan,
    serving: bool,
    timeout: Duration,
    progress: bool,
) -> Result<Option<PathBuf>> {
    let target = ssh::resolve(&plan.destination, plan.user.as_ref())?;
    let control = match target.own_control || plan.user.is_some() {
        true => None,
        false => control_path(env, plan),
    };
    // A master's socket is there: ssh asks it (and starts afresh if it is dead).
    let master = control.as_deref().is_some_and(Path::exists);
    let settled = serving
        && record::start_record(&env.root, &plan.vm)
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > SETTLED);
    if !target.proxied && !master && !settled {
        let took = ssh::wait_for_banner(&target, plan.user.as_ref(), timeout, progress, false)?;
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
    Ok(control)
}

/// `<runtime dir>/microvm-workspaces/<start>-<key>`: one shared connection per user, VM,
/// destination and start of that VM (`<start>` names the VM's /run record, which every start
/// writes anew), so a restarted VM never meets a master of its previous life. The runtime
/// dir is the user's own (`XDG_RUNTIME_DIR`, else `/run/user/<uid>`, owned by them and
/// private); without one, or when the path would not fit a socket address, `None`: no
/// sharing.
pub fn control_path(env: &Env, plan: &Plan) -> Option<PathBuf> {
    use std::hash::{Hash, Hasher};
    let uid = nix::unistd::Uid::effective().as_raw();
    let private = |p: &Path| {
        std::fs::symlink_metadata(p)
            .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0)
    };
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from(format!("/run/user/{uid}")));
    if !private(&runtime) {
        return None;
    }
    let dir = runtime.join("microvm-workspaces");
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    if !private(&dir) {
        return None;
    }
    let start = record::start_record(&env.root, &plan.vm)
        .map(|m| (m.ino() as u32) ^ (m.mtime_nsec() as u32))
        .unwrap_or(0);
    let mut key = std::collections::hash_map::DefaultHasher::new();
    (&plan.vm, &plan.destination).hash(&mut key);
    let path = dir.join(format!("{start:08x}-{:016x}", key.finish()));
    // sun_path holds 107 bytes, and ssh adds a temporary suffix (17) while it sets the
    // master up. The option is one word, its `%` a token: none of those in it.
    let text = path.to_str()?;
    let plain = !text.contains(['%', ' ', '"', '\'', '\\']);
    (text.len() + 17 <= 107 && plain).then_some(path)
}

/// Runs `ssh DEST -- <cd DIR && COMMAND>` as the user and waits for it; its exit status is
/// the remote command's (ssh's own 255 on a connection failure). With `control`, through one
/// shared connection, kept for a while after the last session. (Not exec: when the session
/// ends, what the guest committed is fetched.)
pub fn run(plan: &Plan, control: Option<&Path>, command: &[String]) -> anyhow::Result<u8> {
    let mut c = ssh::command(plan.user.as_ref());
    if command.is_empty() && std::io::stdin().is_terminal() {
        c.arg("-t");
    }
    if let Some(path) = control {
        c.arg("-o").arg("ControlMaster=auto");
        c.arg("-o").arg(format!("ControlPath={}", path.display()));
        c.arg("-o")
            .arg(format!("ControlPersist={}", CONTROL_PERSIST.as_secs()));
    }
    // A live view just switched may still be the previous one in the guest for up to a
    // second (virtiofs caches the entry `current`): wait for the repo's own inode first.
    let fresh = match &plan.view {
        Some((view, ino)) => ssh::await_inode(view, *ino, VIEW_WAIT),
        None => String::new(),
    };
    let st = c
        .arg("--")
        .arg(&plan.destination)
        .arg(fresh + &ssh::remote_command(plan.dir.as_deref(), command))
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run ssh: {e}"))?;
    // Killed by a signal: the shell's convention, 128 + its number.
    Ok(st
        .code()
        .map_or_else(|| 128 + st.signal().unwrap_or(0) as u8, |c| c as u8))
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
        let vm = |n: &str| VmName::try_from(n).unwrap();
        assert_eq!(guest_workspace(&cfg, &vm("a")).as_deref(), Some("/work"));
        assert_eq!(
            guest_workspace(&cfg, &vm("b")).as_deref(),
            Some("/run/microvm-workspaces/l/current")
        );
        assert_eq!(guest_workspace(&cfg, &vm("c")), None);
        assert_eq!(guest_workspace(&cfg, &vm("nope")), None);
    }
}
