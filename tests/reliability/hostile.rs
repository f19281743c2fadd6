//! Hostile input: bounded property tests of the config and runner parsers, in process and
//! through the binaries (name derivation and `VmName`, which need no root, are the
//! library's: src/tests/names.rs). The runner and the inputs are src/tests/hostile_input.rs.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use crate::common::api::{self, Config, EntryName, Root, Tree, VmName};
use crate::common::*;
use crate::hostile_input::*;

const TEMPLATES: &[&str] = &[
    r#"{"enable": true, "stateDir": "/var/lib/microvms", "workspaceDir": "/var/lib/microvm-workspaces",
        "placeholder": {"user": "root", "group": "root", "mode": "0555"},
        "vms": {"testvm": {"hostName": "testvm", "shares": [{"tag": "workspace", "proto": "virtiofs",
            "source": "/var/lib/microvm-workspaces/testvm", "readOnly": false}]}},
        "companions": {"nixfiles": {"nix-secrets": "../nix-secrets"}}}"#,
    r#"{}"#,
    r#"{"vms": {"a": {"shares": [{"tag": "t", "proto": "9p", "source": "rel/dir"}]}}}"#,
    r#"{"placeholder": {"mode": "0500"}, "enable": false}"#,
];

const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"0",
    b"-1",
    b"1e999",
    b"\"\\u0000\"",
    b"\"a\\nb\"",
    b"\"../x\"",
    b"\"/\"",
    b"\"\"",
    b"\"\\r\\u001b\"",
    b"\"vms\"",
    b"\"shares\"",
    b"\"companions\"",
    b"\"mode\"",
    b"\"7777\"",
    b"\"9p\"",
    b"\xff",
    b"\xc3",
    b"\\",
    b"\"unknownKey\": 1,",
    b"{\"x\":{}}",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    Token(usize, usize),
    Flip(usize, u8),
}

pub fn mutated_json() -> impl Strategy<Value = Vec<u8>> {
    let m = prop_oneof![
        (any::<usize>(), 1..8usize).prop_map(|(p, n)| Mutation::Delete(p, n)),
        (any::<usize>(), nasty_bytes()).prop_map(|(p, b)| Mutation::Insert(p, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(p, t)| Mutation::Token(p, t)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Flip(p, b)),
    ];
    (0..TEMPLATES.len(), prop::collection::vec(m, 1..6)).prop_map(|(t, ms)| {
        let mut text = TEMPLATES[t].as_bytes().to_vec();
        for m in ms {
            let at = |p: usize| p % (text.len() + 1);
            match m {
                Mutation::Delete(p, n) => {
                    let s = at(p);
                    let e = (s + n).min(text.len());
                    text.drain(s..e);
                }
                Mutation::Insert(p, b) => {
                    let s = at(p);
                    text.splice(s..s, b);
                }
                Mutation::Token(p, t) => {
                    let s = at(p);
                    text.splice(s..s, TOKENS[t].iter().copied());
                }
                Mutation::Flip(p, b) => {
                    if !text.is_empty() {
                        let s = p % text.len();
                        text[s] = b;
                    }
                }
            }
        }
        text
    })
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A config built from hostile strings in every place a string goes.
pub fn structured_config() -> impl Strategy<Value = serde_json::Value> {
    let s = || nasty_bytes().prop_map(|b| lossy(&b));
    let share = (s(), prop::sample::select(vec!["virtiofs", "9p", "nfs"]), s(), any::<bool>())
        .prop_map(|(tag, proto, source, ro)| {
            serde_json::json!({"tag": tag, "proto": proto, "source": source, "readOnly": ro})
        });
    let vm = (s(), prop::collection::vec(share, 0..4));
    (
        prop::collection::vec(vm, 0..4),
        prop::collection::vec((s(), s(), s()), 0..3),
        prop::option::of((s(), s(), s())),
        prop::option::of(s()),
    )
        .prop_map(|(vms, comps, ph, ws)| {
            let mut v = serde_json::json!({});
            let mut m = serde_json::Map::new();
            for (name, shares) in vms {
                m.insert(name, serde_json::json!({"shares": shares}));
            }
            v["vms"] = m.into();
            let mut c = serde_json::Map::new();
            for (vm, name, rel) in comps {
                c.insert(vm, serde_json::json!({ name: rel }));
            }
            v["companions"] = c.into();
            if let Some((user, group, mode)) = ph {
                v["placeholder"] = serde_json::json!({"user": user, "group": group, "mode": mode});
            }
            if let Some(ws) = ws {
                v["workspaceDir"] = ws.into();
            }
            v
        })
}

/// An accepted config satisfies everything the rest of the code relies on.
pub fn accepted(cfg: &Config) -> Result<(), TestCaseError> {
    prop_assert!(cfg.workspace_dir.is_absolute() && cfg.state_dir.is_absolute());
    for (vm, v) in &cfg.vms {
        prop_assert!(VmName::try_from(vm.as_str()).is_ok());
        for s in &v.shares {
            prop_assert!(!s.source.is_empty() && !s.source.contains(['\n', '\0']));
            prop_assert!(!s.tag.is_empty() && !s.tag.contains('/'));
        }
    }
    for (vm, set) in &cfg.companions {
        prop_assert!(VmName::try_from(vm.as_str()).is_ok());
        for (name, rel) in set {
            prop_assert!(EntryName::try_from(name.as_str()).is_ok());
            prop_assert!(rel.is_relative());
        }
    }
    Ok(())
}

#[test]
fn hostile_config_bytes_never_panic_and_fail_in_one_clean_line() {
    // The generator below believes only root-owned configs, and the binary runs as root.
    require_root();
    let n0 = CASES.load(Ordering::Relaxed);
    check(
        "arbitrary bytes",
        1000,
        1,
        prop::collection::vec(any::<u8>(), 0..256),
        |b| match Config::parse(&b) {
            Ok(c) => accepted(&c),
            Err(e) => one_clean_line(&e),
        },
    );
    let accepted_mutants = AtomicUsize::new(0);
    check(
        "mutated valid JSON",
        2000,
        2,
        mutated_json(),
        |b| match Config::parse(&b) {
            Ok(c) => {
                accepted_mutants.fetch_add(1, Ordering::Relaxed);
                accepted(&c)
            }
            Err(e) => one_clean_line(&e),
        },
    );
    // Control: the mutations are not all fatal, so the accepted path is exercised too.
    assert!(accepted_mutants.load(Ordering::Relaxed) > 0);
    let (ok, bad) = (AtomicUsize::new(0), AtomicUsize::new(0));
    check(
        "hostile strings in a well-formed config",
        600,
        3,
        structured_config(),
        |v| {
            let text = serde_json::to_vec(&v).unwrap();
            match Config::parse(&text) {
                Ok(c) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    accepted(&c)?;
                    generate_stays_in_its_directory(&text)
                }
                Err(e) => {
                    bad.fetch_add(1, Ordering::Relaxed);
                    one_clean_line(&e)
                }
            }
        },
    );
    assert!(ok.load(Ordering::Relaxed) > 0 && bad.load(Ordering::Relaxed) > 0);

    // Through the prepare binary: what it prints is exactly its name, the file, and the
    // parse error's chain as one clean line (the binary's own printing path, not only the
    // escaper), or nothing at all when the config is accepted.
    let fx = Fx::new();
    fx.runner("vm1", &[("t", b"/srv/t")]);
    // First the inputs that reach the terminal raw unless escaped: serde quotes an unknown
    // key verbatim, and JSON escapes make any control character of it.
    for b in [
        &br#"{"col\u001b[2Jour": 1}"#[..],
        br#"{"a\r\nb": 1}"#,
        br#"{"placeholder": {"mode": "0555"}, "x\u0085y": 1}"#,
    ] {
        let e = Config::parse(b).expect_err("an unknown key");
        let causes: Vec<String> = e.chain().map(ToString::to_string).collect();
        assert!(causes.concat().chars().any(char::is_control), "{causes:?}");
        fx.write("/etc/microvm-workspaces/config.json", b);
        let out = fx.run(PREPARE, &["--dry-run", "vm1"]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out),
            format!(
                "microvm-workspaces-prepare: config /etc/microvm-workspaces/config.json: {}\n",
                printed(&causes)
            )
        );
    }
    let refused = AtomicUsize::new(0);
    check(
        "mutated valid JSON, prepare binary",
        150,
        9,
        mutated_json(),
        |b| {
            fx.write("/etc/microvm-workspaces/config.json", &b);
            let out = fx.run(PREPARE, &["--dry-run", "vm1"]);
            let err = stderr(&out);
            match Config::parse(&b) {
                // Accepted: vm1 is prepared (in plan), or a later step fails, in one clean line.
                Ok(_) => match out.status.code() {
                    Some(0) => prop_assert_eq!(err, ""),
                    Some(1) => {
                        prop_assert!(err.starts_with("microvm-workspaces-prepare: "), "{:?}", err);
                        prop_assert_eq!(err.matches('\n').count(), 1, "{:?}", err);
                        prop_assert!(!err.trim_end().chars().any(char::is_control), "{:?}", err);
                    }
                    other => prop_assert!(false, "exit {:?}: {:?}", other, err),
                },
                Err(e) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    let causes: Vec<String> = e.chain().map(ToString::to_string).collect();
                    prop_assert_eq!(out.status.code(), Some(1));
                    prop_assert_eq!(
                    err,
                    format!(
                        "microvm-workspaces-prepare: config /etc/microvm-workspaces/config.json: {}\n",
                        printed(&causes)
                    )
                );
                }
            }
            Ok(())
        },
    );
    assert!(refused.load(Ordering::Relaxed) > 0);
    eprintln!(
        "hostile config: {} cases",
        CASES.load(Ordering::Relaxed) - n0
    );
}

/// The generator, fed an accepted config, writes only drop-ins, each in a directory of its own
/// right under the output directory.
fn generate_stays_in_its_directory(config: &[u8]) -> Result<(), TestCaseError> {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("etc/microvm-workspaces")).unwrap();
    std::fs::write(root.join("etc/microvm-workspaces/config.json"), config).unwrap();
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let env = api::GenEnv {
        in_initrd: Some(false),
        cmdline: Some(String::new()),
    };
    let r = api::generate(
        &Root::from_args(Some(&root)).unwrap(),
        &env,
        &out,
        Path::new("/bin/prepare"),
    );
    let files = match r {
        Ok(api::Generated::Wrote(f)) => f,
        Ok(api::Generated::Disabled(_)) => return Ok(()),
        Err(e) => return one_clean_line(&e),
    };
    for f in &files {
        let parts: Vec<_> = f.components().collect();
        proptest::prop_assert_eq!(parts.len(), 2, "{:?}", f);
        proptest::prop_assert!(
            matches!(parts[0], std::path::Component::Normal(_)),
            "{:?}",
            f
        );
        proptest::prop_assert!(out.join(f).is_file(), "{:?}", f);
    }
    let on_disk = files_named(&out, "50-microvm-workspaces.conf").len();
    proptest::prop_assert_eq!(on_disk, files.len());
    Ok(())
}

#[test]
fn hostile_runner_sources_never_panic_and_fail_in_one_clean_line() {
    let n0 = CASES.load(Ordering::Relaxed);
    let fx = Fx::new();
    fx.runner("vm1", &[("t", b"/x")]);
    let file = fx.p("/nix/store/0000-microvm-vm1/share/microvm/virtiofs/t/source");
    let root = Root::from_args(Some(fx.root())).unwrap();
    let tree = Tree::open(&root).unwrap();
    let cfg = Config::default();
    let before = fx.snapshot();
    let accepted = AtomicUsize::new(0);
    let bytes = prop_oneof![nasty_bytes(), prop::collection::vec(any::<u8>(), 0..300)];
    check("runner source bytes", 1000, 4, bytes, |b| {
        std::fs::write(&file, &b).unwrap();
        match api::shares(&tree, &cfg, "vm1") {
            Ok(shares) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                prop_assert_eq!(shares.len(), 1);
                let s = &shares[0];
                prop_assert!(!s.source.is_empty() && !s.source.contains(['\n', '\0']));
                prop_assert!(s.path.is_absolute());
                prop_assert_eq!(&api::normalize(&s.path), &s.path);
                prop_assert!(!s
                    .path
                    .components()
                    .any(|c| c == std::path::Component::ParentDir));
                // Preparing it (as a plan: nothing is written) never panics either.
                if let Err(e) = api::prepare_vm(&tree, &cfg, "vm1", true) {
                    one_clean_line(&e)?;
                }
                Ok(())
            }
            Err(e) => one_clean_line(&e),
        }
    });
    assert!(accepted.load(Ordering::Relaxed) > 0);
    std::fs::write(&file, b"/x\n").unwrap();
    assert_eq!(before, fx.snapshot(), "a dry run changed the tree");

    // The same through the prepare binary, for real: exit 0, or 1 with one clean line.
    let fx = Fx::new();
    fx.runner("vm1", &[("t", b"/x")]);
    let file = fx.p("/nix/store/0000-microvm-vm1/share/microvm/virtiofs/t/source");
    check(
        "runner source bytes, prepare binary",
        120,
        5,
        nasty_bytes(),
        |b| {
            std::fs::write(&file, &b).unwrap();
            let out = fx.prepare("vm1");
            let err = stderr(&out);
            match out.status.code() {
                Some(0) => Ok(()),
                Some(1) => {
                    prop_assert_eq!(err.matches('\n').count(), 1, "{:?}", err);
                    prop_assert!(err.ends_with('\n'));
                    prop_assert!(!err.trim_end().chars().any(char::is_control), "{:?}", err);
                    Ok(())
                }
                other => Err(TestCaseError::fail(format!("exit {other:?}: {err}"))),
            }
        },
    );
    eprintln!(
        "hostile runner: {} cases",
        CASES.load(Ordering::Relaxed) - n0
    );
}

/// The runner is read with one `openat2` per source when no symlink is on the way; a runner
/// whose tag directory or source file is a symlink (as `symlinkJoin` makes them) still reads
/// through the careful walk, absolute targets inside the root.
#[test]
fn runner_files_behind_symlinks_are_still_read() {
    let fx = Fx::new();
    fx.runner("vm1", &[("plain", b"/srv/plain")]);
    let virtiofs = "/nix/store/0000-microvm-vm1/share/microvm/virtiofs";
    fx.write("/nix/store/1111-other/source", b"/srv/via-file-link\n");
    fx.write("/nix/store/2222-tagdir/source", b"/srv/via-dir-link\n");
    fx.mkdir(&format!("{virtiofs}/filelink"), 0, 0o755);
    fx.symlink(
        "/nix/store/1111-other/source",
        &format!("{virtiofs}/filelink/source"),
    );
    fx.symlink("../../../../2222-tagdir", &format!("{virtiofs}/dirlink"));
    fx.prepare_ok("vm1");
    let rec = fx.record("vm1");
    let paths: Vec<&str> = rec["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    for p in ["/srv/plain", "/srv/via-file-link", "/srv/via-dir-link"] {
        assert!(paths.contains(&p), "{p} not in {paths:?}");
        assert!(is_marked(&fx.p(p)), "{p}");
    }
}
