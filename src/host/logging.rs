//! Logging: the journal with structured fields (VM, TAG, PATH, ACTION) when our stderr is
//! connected to it (`JOURNAL_STREAM` names stderr's device and inode, as systemd.exec(5) says
//! to check: libsystemd does), stderr otherwise. `-v` or `RUST_LOG` raise the verbosity.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

///
/// The journal gets every step (info); a terminal only warnings unless `-v`, so a failure
/// stays the one line it is meant to be.
pub fn init(verbose: u8) {
    let journal = libsystemd::logging::connected_to_journal();
    let default = match (journal, verbose) {
        (false, 0) => LevelFilter::WARN,
        (true, 0) | (_, 1) => LevelFilter::INFO,
        (_, 2) => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    // `Targets` takes RUST_LOG's `target=level,level` directives (not EnvFilter's span and
    // field filters) without a regex engine: a third of prepare's binary (bench/notes.md).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(default));
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
