//! microvm-link's command line (the binary parses it; completions are generated from it).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::model::names::{PoolName, SshDest, VmName};

const EXAMPLES: &str = "Examples:
  cd ~/src/vm1 && microvm-link          link ~/src/vm1 into VM vm1, restart it
  microvm-link web --repo ~/src/site    link another directory into VM web
  microvm-link --no-restart --dry-run   show what would change, change nothing
  microvm-link status                   which VMs see what, and which are stale
  microvm-link unlink vm1               back to the read-only placeholder
  cd ~/src/proj-wt1 && microvm-link --pool agents   lease a VM of pool agents for this worktree
  microvm-link release                  end this worktree's lease";

#[derive(Parser)]
#[command(name = "microvm-link", version, subcommand_precedence_over_arg = true, after_help = EXAMPLES)]
/// Link the repo you are in into a microvm.nix VM's workspace and restart the VM.
///
/// Runs as root: invoked as a normal user it re-executes itself through sudo.
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    #[command(flatten)]
    pub link: LinkArgs,
    /// Take every absolute path under DIR (also MICROVM_WORKSPACES_ROOT); restarts are skipped.
    /// For root itself: refused through sudo.
    #[arg(long, value_name = "DIR", global = true)]
    pub root: Option<PathBuf>,
    /// Act for this user (a name or uid), as if they had come through sudo. For root itself
    /// (tests, image builders): refused through sudo.
    #[arg(long, value_name = "UID|NAME", global = true)]
    pub user: Option<String>,
    /// How long to wait for a VM's SSH banner after its start, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120, global = true)]
    pub ssh_timeout: u64,
    /// More log output (repeatable); `status` adds device:inode to the table.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Args)]
pub struct LinkArgs {
    /// The VM; default: the repo directory's name, cleaned to [A-Za-z0-9._-] (for a worktree,
    /// else its main repo's).
    pub vm: Option<String>,
    /// The repo to link; default: the nearest ancestor of the working directory holding .git.
    #[arg(long, value_name = "PATH")]
    pub repo: Option<PathBuf>,
    /// Do not restart the VM.
    #[arg(long)]
    pub no_restart: bool,
    /// Also restart other running VMs left seeing a stale directory.
    #[arg(long)]
    pub restart_stale: bool,
    /// Print what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// The VM's SSH destination (default: the config's vms.<vm>.ssh), waited for after a start.
    /// (A value starting with '-' is taken, then refused by microvm-link's own check.)
    #[arg(long, value_name = "DEST", allow_hyphen_values = true)]
    pub ssh: Option<String>,
    /// Do not wait for SSH after starting the VM.
    #[arg(long)]
    pub no_wait: bool,
    /// Link only if the repo is not linked already, (re)start only if it is not running.
    #[arg(long)]
    pub if_needed: bool,
    /// Lease a VM of this pool for the repo (a worktree): its own lease if it holds one, else
    /// the pool's first free VM, linked without a restart (live share). Names no VM.
    #[arg(long, value_name = "POOL", allow_hyphen_values = true)]
    pub pool: Option<String>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Show every VM: running, workspace link, what each share showed at start and shows
    /// now, STALE and why.
    ///
    /// A share shows `placeholder`, `repo PATH` (a linked repo), `directory` or `missing`.
    /// It is STALE when it resolves to another directory than at the VM's start: the VM
    /// still sees the old one until it restarts. Runs as you; needs no root.
    #[command(
        after_help = "Examples:\n  microvm-link status\n  microvm-link status vm1 -v          add device:inode at start and now\n  microvm-link status vm1 --json | jq '.vms[0].stale'"
    )]
    Status {
        /// Only this VM (default: every VM known or with a runtime record).
        vm: Option<String>,
        /// Print JSON: {"vms": [...]}, each share with its words (showedAtStart, showsNow,
        /// staleBecause) and device:inode (atStart, now).
        #[arg(long)]
        json: bool,
    },
    /// Check the host: generator and drop-ins, virtiofsd, sources, runners, config, sudo rule,
    /// link records, stale VMs; each finding with its fix.
    ///
    /// Exits 1 when a finding will make a VM fail (severity fail), else 0. Runs as you and
    /// says what it could not read; run it through sudo to check the sudoers files too.
    #[command(
        after_help = "Examples:\n  microvm-link doctor\n  microvm-link doctor --json | jq '.findings[] | select(.severity != \"ok\")'"
    )]
    Doctor {
        /// Print JSON: {"ok": bool, "findings": [{check, severity, what, fix}]}.
        #[arg(long)]
        json: bool,
    },
    /// Remove VM's link (record and mount): its placeholder serves again; then restart it.
    #[command(after_help = "Example:\n  microvm-link unlink vm1 --no-restart")]
    Unlink {
        vm: String,
        #[arg(long)]
        no_restart: bool,
        /// Do not wait for SSH after restarting the VM.
        #[arg(long)]
        no_wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Link (if needed), start (if needed), wait for SSH, then ssh into the VM as you, in the
    /// guest directory that matches your working directory; or run COMMAND there.
    #[command(
        after_help = "Examples:\n  cd ~/src/vm1/sub && microvm-link shell\n  microvm-link shell -- make test\n  microvm-link shell web --ssh web.local -- uptime\n\nThe exit status is the remote command's (ssh's own 255 on a connection failure)."
    )]
    Shell {
        /// The VM; default: the repo directory's name.
        vm: Option<String>,
        /// Lease a VM of this pool for the repo (or find its lease) instead of naming one.
        #[arg(long, value_name = "POOL", allow_hyphen_values = true)]
        pool: Option<String>,
        /// The VM's SSH destination (default: the config's vms.<vm>.ssh).
        #[arg(long, value_name = "DEST", allow_hyphen_values = true)]
        ssh: Option<String>,
        /// The command to run (after --); default: a login shell.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// End a lease of a pool VM: VM's, or (none named) the lease of the worktree you are in.
    /// The VM is unlinked (its placeholder serves; it keeps running) and the lease removed.
    ///
    /// Only the lease's holder or root may release it, or anyone once its worktree is gone.
    #[command(
        after_help = "Examples:\n  cd ~/src/proj-wt1 && microvm-link release\n  microvm-link release agents-2"
    )]
    Release {
        /// The pool VM (default: the one leased for the worktree you are in).
        vm: Option<String>,
        #[arg(long)]
        no_restart: bool,
        /// Do not wait for SSH after restarting the VM.
        #[arg(long)]
        no_wait: bool,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Bring the guest's branches home: from the VM's own git dir (git = private) into the
    /// repo as remote-tracking refs refs/remotes/<entry>/<branch>. Runs as you.
    ///
    /// Without VM: every VM that sees the repo you are in. Reads nothing of the guest's but
    /// objects and refs; the host repo's .git is never written by a guest.
    #[command(
        after_help = "Examples:\n  cd ~/src/vm1 && microvm-link fetch\n  microvm-link fetch vm1 && git log vm1/main"
    )]
    Fetch {
        /// The VM (default: every VM that sees the repo of the working directory).
        vm: Option<String>,
    },
    /// Internal: one SSH banner probe of HOST:PORT, run by microvm-link as the invoking user
    /// (root connects nowhere for a caller). Refused through sudo.
    #[command(name = "__probe-ssh", hide = true)]
    ProbeSsh { host: String, port: u16 },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  microvm-link completions bash > /etc/bash_completion.d/microvm-link\n  microvm-link completions fish > ~/.config/fish/completions/microvm-link.fish"
    )]
    Completions { shell: clap_complete::Shell },
}

/// A VM named on the command line, checked once, here (`VM name "../x" starts with '.'`).
/// Not clap's value parser: its error is a usage message, not microvm-link's one line.
pub fn vm(arg: Option<&str>) -> Result<Option<VmName>> {
    Ok(arg.map(VmName::try_from).transpose()?)
}

/// What a link or a shell goes to: a VM (named, or derived from the repo), or a lease from a
/// pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Vm(Option<VmName>),
    Pool(PoolName),
}

/// The VM or `--pool POOL`, each checked once, here; both at once is refused in one line.
pub fn target(vm: Option<&str>, pool: Option<&str>) -> Result<Target> {
    match (self::vm(vm)?, pool) {
        (None, Some(p)) => Ok(Target::Pool(PoolName::try_from(p).context("--pool")?)),
        (Some(v), Some(p)) => {
            anyhow::bail!("--pool {p:?} chooses the VM itself: name no VM ({v}) with it")
        }
        (vm, None) => Ok(Target::Vm(vm)),
    }
}

/// `--ssh DEST`, checked once, here: never an ssh option, one word.
pub fn ssh(arg: Option<&str>) -> Result<Option<SshDest>> {
    arg.map(SshDest::try_from).transpose().context("--ssh")
}
