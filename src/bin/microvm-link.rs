//! microvm-link: point a VM's workspace at the repo you are in, restart the VM, and show
//! which other running VMs now see a stale directory (DESIGN.md section 4).

use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use microvm_workspaces::config::Config;
use microvm_workspaces::fsafe::{Tree, Trust, Walk};
use microvm_workspaces::link::{self, Change};
use microvm_workspaces::paths::{self, show, Root};
use microvm_workspaces::prepare::Ctx;
use microvm_workspaces::state::{self, VmStatus};
use microvm_workspaces::{logging, runner, systemd, units};

const EXAMPLES: &str = "Examples:
  cd ~/src/vm1 && microvm-link          link ~/src/vm1 into VM vm1, restart it
  microvm-link web --repo ~/src/site    link another directory into VM web
  microvm-link --no-restart --dry-run   show what would change, change nothing
  microvm-link status                   which VMs see what, and which are stale
  microvm-link unlink vm1               back to the read-only placeholder";

/// How long a restart may take before we stop waiting (microvm.nix's default start timeout).
const RESTART_TIMEOUT: Duration = Duration::from_secs(150);

#[derive(Parser)]
#[command(name = "microvm-link", version, subcommand_precedence_over_arg = true, after_help = EXAMPLES)]
/// Link the repo you are in into a microvm.nix VM's workspace and restart the VM.
///
/// Runs as root: invoked as a normal user it re-executes itself through sudo.
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    link: LinkArgs,
    /// Take every absolute path under DIR (also MICROVM_WORKSPACES_ROOT); restarts are skipped.
    /// For root itself: refused through sudo.
    #[arg(long, value_name = "DIR", global = true)]
    root: Option<PathBuf>,
    /// Act for this user (a name or uid), as if they had come through sudo. For root itself
    /// (tests, image builders): refused through sudo.
    #[arg(long, value_name = "UID|NAME", global = true)]
    user: Option<String>,
    /// More log output (repeatable).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Args)]
struct LinkArgs {
    /// The VM; default: the repo directory's name, cleaned to [A-Za-z0-9._-].
    vm: Option<String>,
    /// The repo to link; default: the nearest ancestor of the working directory holding .git.
    #[arg(long, value_name = "PATH")]
    repo: Option<PathBuf>,
    /// Do not restart the VM.
    #[arg(long)]
    no_restart: bool,
    /// Also restart other running VMs left seeing a stale directory.
    #[arg(long)]
    restart_stale: bool,
    /// Print what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show every VM: running, workspace link, each share at start vs now, STALE.
    #[command(
        after_help = "Examples:\n  microvm-link status\n  microvm-link status vm1 --json | jq '.vms[0].stale'"
    )]
    Status {
        vm: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove VM's link (record and mount): its placeholder serves again; then restart it.
    #[command(after_help = "Example:\n  microvm-link unlink vm1 --no-restart")]
    Unlink {
        vm: String,
        #[arg(long)]
        no_restart: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  microvm-link completions bash > /etc/bash_completion.d/microvm-link\n  microvm-link completions fish > ~/.config/fish/completions/microvm-link.fish"
    )]
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("microvm-link: {}", logging::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.cmd {
        Some(Cmd::Completions { shell }) => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "microvm-link",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Status { vm, json }) => status(&cli, vm.as_deref(), *json),
        Some(Cmd::Unlink {
            vm,
            no_restart,
            json,
        }) => {
            become_root(&cli)?;
            unlink(&cli, vm, *no_restart, *json)
        }
        None => {
            become_root(&cli)?;
            link_here(&cli)
        }
    }
}

/// Re-executes through sudo unless already root (the NixOS module can allow a group to do so
/// without a password). The re-rooting variable does not survive sudo's environment reset,
/// so it is passed on as `--root`.
fn become_root(cli: &Cli) -> Result<()> {
    if nix::unistd::Uid::effective().is_root() {
        return Ok(());
    }
    let sudo = option_env!("MICROVM_WORKSPACES_SUDO").unwrap_or("sudo");
    // Set on the re-execution below. The real sudo drops it (env_reset) and makes us root;
    // seeing it while still not root means `sudo` ran us unprivileged, and going round again
    // would loop for ever.
    const VIA_SUDO: &str = "MICROVM_LINK_VIA_SUDO";
    if std::env::var_os(VIA_SUDO).is_some() {
        bail!(
            "{sudo} ran microvm-link again as uid {}, not as root; check that {sudo} is the real sudo and allows you to run microvm-link",
            nix::unistd::Uid::effective()
        );
    }
    // Re-rooting and acting for someone else are root's own: sudo would refuse them anyway
    // (see `Root::from_args`, `invoking_user`), so say so before asking for a password.
    if cli.root.is_some() || std::env::var_os(paths::ROOT_ENV).is_some_and(|r| !r.is_empty()) {
        bail!(
            "--root and {} need root itself; through sudo they are refused",
            paths::ROOT_ENV
        );
    }
    if cli.user.is_some() {
        bail!("--user needs root itself; through sudo it is refused");
    }
    let exe = std::env::current_exe().context("cannot find microvm-link's own executable")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let err = std::process::Command::new(sudo)
        .env(VIA_SUDO, "1")
        .arg("--")
        .arg(&exe)
        .args(&args)
        .exec();
    bail!("microvm-link needs root and could not run {sudo}: {err}")
}

/// Who asked. Through sudo (real uid root, `SUDO_UID` set and not 0), the sudo user, who may
/// not pick another with `--user`. Root itself: root, or whoever `--user` names. `SUDO_UID` is
/// believed only when the real uid is root too (a set-uid copy must not let the caller claim
/// to be anyone).
fn invoking_user(cli: &Cli) -> Result<u32> {
    let real = nix::unistd::getuid();
    let sudo = match std::env::var("SUDO_UID") {
        Ok(v) if real.is_root() => Some(
            v.parse::<u32>()
                .with_context(|| format!("SUDO_UID {v:?} is not a number"))?,
        ),
        Ok(_) => {
            bail!("SUDO_UID is set but the real user is uid {real}, not root; refusing to trust it")
        }
        Err(_) => None,
    };
    match (sudo, &cli.user) {
        (Some(uid), Some(_)) if uid != 0 => {
            bail!("--user is refused through sudo (SUDO_UID={uid}): only root itself may act for another user")
        }
        (Some(uid), None) => Ok(uid),
        (_, Some(u)) if real.is_root() => parse_user(u),
        (_, Some(_)) => bail!("--user needs root itself"),
        (None, None) => Ok(real.as_raw()),
    }
}

fn parse_user(u: &str) -> Result<u32> {
    if let Ok(n) = u.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(u) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        _ => bail!("--user {u:?}: no such user"),
    }
}

struct Env {
    root: Root,
    cfg: Config,
    tree: Tree,
    /// Who asked (see `invoking_user`).
    user: u32,
}

fn env(cli: &Cli) -> Result<Env> {
    let user = invoking_user(cli)?;
    let root = Root::from_args(cli.root.as_deref())?;
    let tree = Tree::open(&root)?;
    let cfg = Config::load(&tree)?;
    Ok(Env {
        root,
        cfg,
        tree,
        user,
    })
}

fn link_here(cli: &Cli) -> Result<ExitCode> {
    let a = &cli.link;
    let e = env(cli)?;
    let user = e.user;
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let real = match &a.repo {
        Some(r) => paths::normalize(&cwd.join(r)),
        None => link::repo_root(&cwd),
    };
    let inside = e.root.inside(&real).with_context(|| {
        format!(
            "repo {} is outside the root {}",
            show(&real),
            show(e.root.dir())
        )
    })?;
    let vm = match &a.vm {
        Some(v) => v.clone(),
        None => link::derive_vm_name(&inside)?,
    };
    paths::check_name("VM", &vm)?;
    runner::check_known(&e.tree, &e.cfg, &vm)?;
    let repo = match e.tree.walk(&inside, Trust::Owners)? {
        Walk::Found(n) if n.is_dir() => n,
        _ => bail!("repo {} is not a directory", show(&inside)),
    };
    if user != 0 && repo.uid() != user {
        bail!(
            "repo {} is owned by uid {}, not by you (uid {user}); you may only link your own repos",
            show(&repo.path),
            repo.uid()
        );
    }

    let t0 = Instant::now();
    let changes = link::changes_for(&e.tree, &e.cfg, &vm, &repo.path, user);
    // Everything that can be checked is checked before anything changes.
    link::check_affected(&e.tree, &e.cfg, &changes)?;
    let mut ctx = Ctx::new(&e.tree, &e.cfg, a.dry_run)?;
    ctx.vm = vm.clone();
    let relinked = ctx.relink(&changes, user)?;
    let link::Ensured {
        steps: ensured,
        skipped,
    } = link::ensure_affected(&e.tree, &e.cfg, &changes, a.dry_run)?;
    for (vm, why) in &skipped {
        eprintln!("microvm-link: warning: skipped VM {vm}: {why}");
    }
    let link_ms = t0.elapsed().as_secs_f64() * 1000.0;

    let restart = restart_step(cli, &e, &vm, a.no_restart || a.dry_run)?;
    let stale = stale_others(&e, &vm)?;
    let mut restarted_stale = Vec::new();
    if a.restart_stale && !a.dry_run {
        for s in &stale {
            restarted_stale.push((s.vm.clone(), restart_step(cli, &e, &s.vm, false)?));
        }
    }

    if a.json {
        let v = serde_json::json!({
            "vm": vm, "repo": show(&repo.path), "dryRun": a.dry_run,
            "changes": changes.iter().map(|c| serde_json::json!({"name": c.name, "target": c.target.as_deref().map(show)})).collect::<Vec<_>>(),
            "steps": relinked.steps, "displaced": relinked.displaced, "ensured": ensured,
            "skipped": skipped.iter().map(|(vm, why)| serde_json::json!({"vm": vm, "why": why})).collect::<Vec<_>>(),
            "linkMs": link_ms, "restart": restart,
            "stale": stale.iter().map(|s| serde_json::json!({"vm": s.vm, "running": s.running, "tags": stale_tags(s)})).collect::<Vec<_>>(),
            "restartedStale": restarted_stale,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for s in relinked.steps.iter().chain(&ensured) {
            println!("{s}");
        }
        for (from, to) in &relinked.displaced {
            println!("moved your directory {from} aside to {to} (nothing was deleted)");
        }
        if let Some(r) = &restart {
            println!("{r}");
        }
        print_stale(&stale, &restarted_stale);
    }
    let failed = restart.as_deref().is_some_and(|r| r.contains("failed"))
        || restarted_stale
            .iter()
            .any(|(_, r)| r.as_deref().is_some_and(|r| r.contains("failed")));
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Restarts `microvm@<vm>` and waits; `None` when restarts are off (or re-rooted).
fn restart_step(cli: &Cli, e: &Env, vm: &str, skip: bool) -> Result<Option<String>> {
    if skip {
        return Ok(None);
    }
    if e.root.is_rerooted() {
        return Ok(Some(format!(
            "not restarting {vm}: re-rooted at {}",
            show(e.root.dir())
        )));
    }
    let unit = units::unit_name("microvm@", vm);
    let t0 = Instant::now();
    let progress = std::io::stderr().is_terminal() && !cli.link.json;
    // A restart that cannot be waited for is a result to report, not a reason to skip the
    // rest (the stale list, the JSON).
    let state = systemd::restart_and_wait(&unit, RESTART_TIMEOUT, progress)
        .unwrap_or_else(|e| logging::one_line(&e));
    let secs = t0.elapsed().as_secs_f64();
    Ok(Some(if state == "active" {
        format!("restarted {unit}: active after {secs:.1} s")
    } else {
        format!("restarted {unit}: failed after {secs:.1} s ({state}); see journalctl -u {unit}")
    }))
}

/// Other VMs, running (or, when systemd cannot be asked, recorded), whose recorded sources
/// no longer resolve to what they did at their start.
fn stale_others(e: &Env, vm: &str) -> Result<Vec<VmStatus>> {
    let mut out = Vec::new();
    for other in state::recorded_vms(&e.tree) {
        if other == vm {
            continue;
        }
        let s = state::status_of(&e.tree, &e.cfg, &e.root, &other)?;
        if s.stale && s.running != Some(false) {
            out.push(s);
        }
    }
    Ok(out)
}

fn stale_tags(s: &VmStatus) -> Vec<String> {
    s.shares
        .iter()
        .filter(|x| x.stale)
        .map(|x| x.tag.clone())
        .collect()
}

fn print_stale(stale: &[VmStatus], restarted: &[(String, Option<String>)]) {
    for s in stale {
        let tags = stale_tags(s).join(", ");
        match restarted.iter().find(|(v, _)| *v == s.vm) {
            Some((_, Some(r))) => println!("{} was stale ({tags}): {r}", s.vm),
            _ => println!(
                "stale: {} still sees the old directory for {tags}; restart it (systemctl restart {}) or use --restart-stale",
                s.vm,
                units::unit_name("microvm@", &s.vm)
            ),
        }
    }
}

fn unlink(cli: &Cli, vm: &str, no_restart: bool, json: bool) -> Result<ExitCode> {
    let e = env(cli)?;
    paths::check_name("VM", vm)?;
    runner::check_known(&e.tree, &e.cfg, vm)?;
    let mut changes = vec![Change {
        name: vm.to_string(),
        target: None,
    }];
    for name in e
        .cfg
        .companions
        .get(vm)
        .into_iter()
        .flatten()
        .map(|(n, _)| n)
    {
        changes.push(Change {
            name: name.clone(),
            target: None,
        });
    }
    let mut ctx = Ctx::new(&e.tree, &e.cfg, false)?;
    let done = ctx.relink(&changes, e.user)?;
    let restart = restart_step(cli, &e, vm, no_restart)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"vm": vm, "steps": done.steps, "displaced": done.displaced, "restart": restart})
            )?
        );
    } else {
        for s in &done.steps {
            println!("{s}");
        }
        if let Some(r) = &restart {
            println!("{r}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status(cli: &Cli, vm: Option<&str>, json: bool) -> Result<ExitCode> {
    let e = env(cli)?;
    let vms = match vm {
        Some(v) => {
            paths::check_name("VM", v)?;
            runner::check_known(&e.tree, &e.cfg, v)?;
            vec![v.to_string()]
        }
        None => {
            let mut v = runner::known_vms(&e.tree, &e.cfg);
            v.extend(state::recorded_vms(&e.tree));
            v.sort();
            v.dedup();
            v
        }
    };
    let rows: Vec<VmStatus> = vms
        .iter()
        .map(|v| state::status_of(&e.tree, &e.cfg, &e.root, v))
        .collect::<Result<_>>()?;
    if json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            vms: &'a [VmStatus],
        }
        println!("{}", serde_json::to_string_pretty(&Out { vms: &rows })?);
    } else {
        print_table(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[VmStatus]) {
    let id = |i: &Option<state::Ident>| {
        i.map_or("-".to_string(), |i| format!("{}:{}", i.device, i.inode))
    };
    let mut table = vec![[
        "VM",
        "RUNNING",
        "WORKSPACE",
        "SHARE",
        "SOURCE",
        "AT START",
        "NOW",
        "",
    ]
    .map(String::from)
    .to_vec()];
    for r in rows {
        let running = match r.running {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let ws = match (&r.workspace.target, r.workspace.state) {
            (Some(t), "dangling") => format!("dangling (was {t})"),
            (Some(t), s) if s == "linked" || s == "legacy-symlink" => format!("{s} -> {t}"),
            (_, s) => s.to_string(),
        };
        if r.shares.is_empty() {
            table.push(vec![
                r.vm.clone(),
                running.into(),
                ws.clone(),
                "-".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
        }
        for (i, s) in r.shares.iter().enumerate() {
            let first = i == 0;
            table.push(vec![
                if first { r.vm.clone() } else { String::new() },
                if first { running.into() } else { String::new() },
                if first { ws.clone() } else { String::new() },
                s.tag.clone(),
                s.source.clone(),
                id(&s.at_start),
                id(&s.now),
                if s.stale {
                    "STALE".into()
                } else {
                    String::new()
                },
            ]);
        }
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
