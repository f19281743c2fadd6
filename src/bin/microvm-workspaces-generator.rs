//! systemd generator: drop-ins so that every start of microvm@VM and microvm-virtiofsd@VM
//! first runs microvm-workspaces-prepare. Reads the config; writes only into its output dir.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use microvm_workspaces::{fs::paths::Root, host::logging, host::units};

const NAME: &str = "microvm-workspaces-generator";

/// To /dev/kmsg when PID 1 runs us (stderr goes nowhere that early), else stderr.
fn log(level: u8, msg: &str) {
    if std::env::var_os("SYSTEMD_EXEC_PID").is_some() {
        if let Ok(mut k) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            let _ = writeln!(k, "<{level}>{NAME}: {msg}");
            return;
        }
    }
    eprintln!("{NAME}: {msg}");
}

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    const USAGE: &str = "usage: microvm-workspaces-generator NORMAL_DIR [EARLY_DIR LATE_DIR]\n\
run by systemd at boot and daemon-reload; writes drop-ins for microvm@ and microvm-virtiofsd@";
    match args.first().and_then(|a| a.to_str()) {
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("{NAME} {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    // systemd passes absolute directories; anything else (an option, a relative path) would
    // have drop-ins written where nobody asked.
    if let Some(a) = args.iter().find(|a| !a.is_absolute()) {
        log(3, &format!("{a:?} is not an absolute directory; {USAGE}"));
        return ExitCode::from(2);
    }
    if args.len() != 1 && args.len() != 3 {
        log(
            3,
            "expected 1 or 3 arguments: NORMAL_DIR [EARLY_DIR LATE_DIR]",
        );
        return ExitCode::from(2);
    }
    let result = Root::from_args(None).and_then(|root| {
        let prepare = units::prepare_path()?;
        units::generate(&root, &units::GenEnv::from_process(), &args[0], &prepare)
    });
    match result {
        Ok(units::Generated::Wrote(files)) => {
            log(7, &format!("wrote {} drop-ins", files.len()));
            ExitCode::SUCCESS
        }
        Ok(units::Generated::Disabled(why)) => {
            log(6, &format!("disabled: {why}; nothing written"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            log(3, &logging::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
