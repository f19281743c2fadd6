//! ExecStartPre helper: make every share source of one VM exist (docs/design.md#prepare).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use microvm_workspaces::{
    chase::Tree, config::Config, logging, paths, prepare, record, runner, systemd, units,
};

/// Make every share source of a microvm.nix VM exist before it starts.
#[derive(Parser)]
#[command(
    version,
    after_help = "Run by systemd as ExecStartPre=+ of microvm@VM and microvm-virtiofsd@VM.\n\
Example: microvm-workspaces-prepare --dry-run vm1"
)]
struct Args {
    /// Take every absolute path under DIR (also MICROVM_WORKSPACES_ROOT).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Print what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// More log output (repeatable).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// The VM (a unit instance name as given by %i is accepted: \xNN escapes are decoded).
    vm: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let vm = units::unmangle(&args.vm);
    // Before anything can start a thread.
    // As Root decides it (`--root /` is the host); an invalid root is reported by run().
    // Root::from_args starts no thread.
    let rerooted = paths::Root::from_args(args.root.as_deref()).map_or(true, |r| r.is_rerooted());
    // The unit's own namespace (PrivateTmp=), kept to serve fallbacks in (docs: fallback).
    let own = std::fs::File::open("/proc/self/ns/mnt").ok();
    let joined = if !rerooted && !args.dry_run && systemd::run_by_systemd() {
        systemd::join_host_mount_namespace()
    } else {
        Ok(false)
    };
    logging::init(args.verbose);
    let own = own.filter(|_| matches!(joined, Ok(true)));
    match joined.and_then(|_| run(&args, &vm, own)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("microvm-workspaces-prepare: {}", logging::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args, vm: &str, own_ns: Option<std::fs::File>) -> Result<()> {
    paths::check_name("VM", vm)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let root = paths::Root::from_args(args.root.as_deref())?;
    let tree = Tree::open(&root)?;
    let cfg = Config::load(&tree)?;
    runner::check_known(&tree, &cfg, vm)?;
    let out = prepare::prepare_vm(&tree, &cfg, vm, args.dry_run)?;
    if args.dry_run {
        if out.actions.is_empty() {
            println!("{vm}: every share source exists; nothing to do");
        }
        for a in &out.actions {
            println!("would {a}");
        }
        return Ok(());
    }
    record::write(
        &tree,
        &record::VmRecord::observed(&tree, &cfg, vm, &out.prepared),
    )
    .with_context(|| format!("VM {vm}"))?;
    tracing::debug!(
        vm,
        shares = out.prepared.len(),
        actions = out.actions.len(),
        "prepared"
    );
    // In the unit's own namespace only (microvm@'s prepare has none: virtiofsd's serves it).
    if let (false, Some(ns)) = (out.fallbacks.is_empty(), own_ns) {
        use std::os::fd::AsFd;
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS)
            .context("cannot return to the unit's mount namespace")?;
        prepare::serve_fallbacks(&root, &cfg, &out.fallbacks)
            .with_context(|| format!("VM {vm}"))?;
    }
    Ok(())
}
