//! Logging: the journal with structured fields (VM, TAG, PATH, ACTION) when systemd runs us
//! (`JOURNAL_STREAM` set), stderr otherwise. `-v` or `RUST_LOG` raise the verbosity.

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
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

/// One line for a failure: the anyhow chain joined by ": ", with any newline escaped.
pub fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', "\\n")
}
