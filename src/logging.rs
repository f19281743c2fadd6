//! Logging: the journal with structured fields (VM, TAG, PATH, ACTION) when our stderr is
//! connected to it (`JOURNAL_STREAM` names stderr's device and inode, as systemd.exec(5) says
//! to check: libsystemd does), stderr otherwise. `-v` or `RUST_LOG` raise the verbosity.

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

///
/// The journal gets every step (info); a terminal only warnings unless `-v`, so a failure
/// stays the one line it is meant to be.
pub fn init(verbose: u8) {
    let journal = libsystemd::logging::connected_to_journal();
    let default = match (journal, verbose) {
        (false, 0) => "warn",
        (true, 0) | (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    if journal {
        if let Ok(journal) = tracing_journald::layer() {
            // Field names as the design gives them (VM, TAG, ...), without the default prefix.
            let journal = journal.with_field_prefix(None);
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(journal)
                .try_init();
            return;
        }
    }
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .without_time(),
        )
        .try_init();
}

/// One line for a failure: the anyhow chain joined by ": ", with every control character
/// escaped. Not only newlines: a carriage return or an escape sequence from a hostile input
/// (serde quotes an unknown config key verbatim) would garble the terminal or the journal.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for ch in format!("{e:#}").chars() {
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}
