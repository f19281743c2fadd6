//! ExecStartPre helper: make every share source of one VM exist (docs/design.md#prepare).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use microvm_workspaces::{
    engine::prepare, fs::chase::Tree, fs::paths, host::logging, host::systemd, host::units,
    model::config::Config, model::names::VmName, model::record, model::runner,
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
    /// Mount a placeholder where a linked repo cannot serve a source (microvm-virtiofsd@'s
    /// start: its namespace, made after, keeps it; `--release` takes it off the host's).
    #[arg(long)]
    serve_fallbacks: bool,
    /// Only detach VM's fallback placeholders from this namespace (ExecStartPost/StopPost).
    #[arg(long, conflicts_with = "serve_fallbacks")]
    release: bool,
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
    let joined = if !rerooted && !args.dry_run && systemd::run_by_systemd() {
        systemd::join_host_mount_namespace()
    } else {
        Ok(false)
    };
    logging::init(args.verbose);
    match joined.and_then(|_| run(&args, &vm)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("microvm-workspaces-prepare: {}", logging::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args, vm: &str) -> Result<()> {
    let vm = &VmName::try_from(vm)?;
    if args.release {
        return prepare::release_fallbacks(vm);
    }
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
    record::write(&tree, &record::VmRecord::new(vm, &out.prepared))
        .with_context(|| format!("VM {vm}"))?;
    tracing::debug!(
        vm = vm.as_str(),
        shares = out.prepared.len(),
        actions = out.actions.len(),
        "prepared"
    );
    if args.serve_fallbacks {
        prepare::serve_fallbacks(&tree, &cfg, vm, &out.fallbacks)
            .with_context(|| format!("VM {vm}"))?;
    }
    Ok(())
}
