//! microvm-link's help and completions, as the binary's `Cli::parse` produces them: the same
//! parser in process (the binary only prints what it renders and exits 0).

use clap::{CommandFactory, Parser};

use crate::cmd::cli::{Cli, Cmd};

/// What `microvm-link ARGS` prints for a help request (clap's "error" of kind DisplayHelp,
/// printed to stdout with exit status 0).
fn help(args: &[&str]) -> String {
    let argv = std::iter::once("microvm-link").chain(args.iter().copied());
    let e = Cli::try_parse_from(argv)
        .err()
        .unwrap_or_else(|| panic!("{args:?} parsed as a command, not a help request"));
    assert_eq!(
        e.kind(),
        clap::error::ErrorKind::DisplayHelp,
        "{args:?}: {e}"
    );
    assert!(!e.use_stderr() && e.exit_code() == 0, "{args:?}");
    e.to_string()
}

#[test]
fn help_has_examples_and_completions_are_generated() {
    for args in [
        &["--help"][..],
        &["status", "--help"],
        &["unlink", "--help"],
        &["completions", "--help"],
    ] {
        assert!(help(args).contains("Example"), "{args:?}");
    }
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef microvm-link"),
        ("fish", "complete -c microvm-link"),
    ] {
        let cli = Cli::try_parse_from(["microvm-link", "completions", shell]).unwrap();
        let Some(Cmd::Completions { shell }) = cli.cmd else {
            panic!("completions {shell} parsed as something else");
        };
        // What the binary does with it.
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "microvm-link", &mut text);
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains(needle) && text.contains("restart-stale"),
            "{shell}"
        );
    }
}

#[test]
fn status_help_documents_vm_json_and_the_words() {
    let help = help(&["status", "--help"]);
    for needle in [
        "[VM]",
        "--json",
        "placeholder",
        "repo PATH",
        "directory",
        "missing",
        "STALE",
        "device:inode",
    ] {
        assert!(help.contains(needle), "{needle:?} not in:\n{help}");
    }
}

#[test]
fn doctor_help_says_what_it_checks_and_the_exit_status() {
    let help = help(&["doctor", "--help"]);
    for needle in ["--json", "Exits 1", "sudo", "Example"] {
        assert!(help.contains(needle), "{needle:?} not in:\n{help}");
    }
}
