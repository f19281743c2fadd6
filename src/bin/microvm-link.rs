//! microvm-link: point a VM's workspace at the repo you are in, restart the VM, and show
//! which other running VMs now see a stale directory (docs/reference/cli.md#microvm-link).
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser};
use microvm_workspaces::cmd::cli::{self, Cli, Cmd};
use microvm_workspaces::cmd::flow::{self, Env, Options};
use microvm_workspaces::cmd::{doctor, fetch, shell, status};
use microvm_workspaces::{fs::paths, host::caller, host::logging, host::ssh};

fn main() -> ExitCode {
    caller::harden();
    let cli = Cli::parse();
    logging::init(cli.verbose);
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("microvm-link: {}", logging::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode> {
    let a = &cli.link;
    let progress = std::io::stderr().is_terminal();
    let ssh_timeout = std::time::Duration::from_secs(cli.ssh_timeout);
    let env = |privileged: bool| -> Result<Env> {
        if privileged {
            caller::become_root(cli.root.is_some(), cli.user.is_some())?;
        }
        Env::open(cli.root.as_deref(), cli.user.as_deref())
    };
    let (out, json) = match &cli.cmd {
        Some(Cmd::Completions { shell }) => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "microvm-link", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Some(Cmd::ProbeSsh { host, port }) => return ssh::probe_command(host, *port),
        Some(Cmd::Status { vm, json }) => {
            let env = env(false)?;
            // Root for a caller looks with the caller's eyes (docs/security.md#sudo-boundary).
            caller::drop_to(env.caller)?;
            let (vm, verbose) = (cli::vm(vm.as_deref())?, cli.verbose > 0);
            status::print(&env.tree, &env.cfg, &env.root, vm.as_ref(), *json, verbose)?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(Cmd::Fetch { vm }) => {
            let env = env(false)?;
            caller::drop_to(env.caller)?;
            fetch::run(&env, cli::vm(vm.as_deref())?.as_ref())?
                .iter()
                .for_each(|f| println!("{}", f.line));
            return Ok(ExitCode::SUCCESS);
        }
        Some(Cmd::Shell {
            vm,
            pool,
            ssh,
            command,
        }) => {
            let target = cli::target(vm.as_deref(), pool.as_deref())?;
            let ssh = cli::ssh(ssh.as_deref())?;
            let env = env(false)?;
            let code = shell::main(&env, target, ssh.as_ref(), command, ssh_timeout, progress)?;
            return Ok(ExitCode::from(code));
        }
        Some(Cmd::Doctor { json }) => {
            let root = paths::Root::from_args(cli.root.as_deref())?;
            let caller = caller::invoking_user(cli.user.as_deref())?;
            let failed = doctor::print(&root, caller, &doctor::System, *json)?;
            return Ok(ExitCode::from(u8::from(failed)));
        }
        Some(Cmd::Unlink {
            vm,
            no_restart,
            no_wait,
            json,
        }) => {
            let opts = Options {
                no_restart: *no_restart,
                no_wait: *no_wait,
                progress: progress && !json,
                ssh_timeout,
                ..Options::default()
            };
            (flow::unlink(&env(true)?, &vm.parse()?, opts)?, *json)
        }
        Some(Cmd::Release {
            vm,
            no_restart,
            no_wait,
            dry_run,
            json,
        }) => {
            let opts = Options {
                no_restart: *no_restart,
                no_wait: *no_wait,
                dry_run: *dry_run,
                progress: progress && !json,
                ssh_timeout,
                ..Options::default()
            };
            let vm = cli::vm(vm.as_deref())?;
            (flow::release(&env(true)?, vm, opts)?, *json)
        }
        None => {
            let target = cli::target(a.vm.as_deref(), a.pool.as_deref())?;
            let env = env(true)?;
            let opts = Options {
                dry_run: a.dry_run,
                no_restart: a.no_restart,
                restart_stale: a.restart_stale,
                progress: progress && !a.json,
                no_wait: a.no_wait,
                if_needed: a.if_needed,
                ssh: cli::ssh(a.ssh.as_deref())?,
                ssh_timeout,
            };
            let out = match target {
                cli::Target::Pool(p) => flow::lease(&env, &p, a.repo.as_deref(), opts)?,
                cli::Target::Vm(vm) => flow::link(&env, vm, a.repo.as_deref(), opts)?,
            };
            (out, a.json)
        }
    };
    out.print(json)?;
    Ok(if out.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
