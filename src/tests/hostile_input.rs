//! Hostile input for bounded property tests: a seeded runner that counts its cases, bytes
//! that like to break parsers and paths, and the check that an error prints as one clean
//! line. Shared by the library's tests (src/tests/names.rs) and tests/reliability/hostile.rs,
//! which includes this file with `#[path]`: it names nothing of this crate but
//! `super::one_line` (how the binaries print an error), which each includer provides.

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config as PConfig, RngAlgorithm, TestRng, TestRunner};

use super::one_line;

pub static CASES: AtomicUsize = AtomicUsize::new(0);

/// A runner with a fixed seed (reproducible in CI) and no regression files.
pub fn seeded(cases: u32, seed: u8) -> TestRunner {
    let cfg = PConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..PConfig::default()
    };
    TestRunner::new_with_rng(cfg, TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]))
}

pub fn check<S: Strategy>(
    what: &str,
    cases: u32,
    seed: u8,
    s: S,
    f: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let r = seeded(cases, seed).run(&s, |v| {
        CASES.fetch_add(1, Ordering::Relaxed);
        f(v)
    });
    if let Err(e) = r {
        panic!("{what}: {e}");
    }
}

/// An error as the binaries print it (`one_line`) is the whole chain of causes, each
/// non-empty, joined by ": ", every control character escaped and nothing else changed (a
/// carriage return or an escape sequence would garble a terminal or the journal). Checked
/// against [`printed`], an escaping done here independently: a line that dropped a cause,
/// kept a raw control character or mangled the text fails.
pub fn one_clean_line(e: &anyhow::Error) -> Result<(), TestCaseError> {
    let causes: Vec<String> = e.chain().map(ToString::to_string).collect();
    prop_assert!(
        causes.iter().all(|c| !c.trim().is_empty()),
        "an empty cause in {:?}",
        causes
    );
    prop_assert_eq!(one_line(e), printed(&causes));
    Ok(())
}

/// The causes of an error as one terminal-safe line: joined by ": ", control characters as
/// Rust writes them in a string literal (`\n`, `\r`, `\t`, `\u{1b}`).
pub fn printed(causes: &[String]) -> String {
    let mut out = String::new();
    for ch in causes.join(": ").chars() {
        match ch {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Bytes that like to break parsers and paths.
pub fn nasty_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => any::<u8>().prop_map(|b| vec![b]),
        2 => prop::sample::select(vec![
            &b"/"[..], b"..", b".", b"\n", b"\0", b"\r", b"\x1b[2J", b"\xff", b"\xc3",
            b"\xc3\xbc", b"//", b"../", b"/etc", b"/nix/store", b" ", b"\\", b"%",
            b"\"", b"-", b"\t", b"\xe2\x80\xae",
        ])
        .prop_map(|s| s.to_vec()),
        2 => "[a-z0-9._-]{1,8}".prop_map(|s| s.into_bytes()),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}
