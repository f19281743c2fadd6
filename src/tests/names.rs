//! Names: the VM name derived from a repo's directory and the repo root it is taken from;
//! which names `VmName` lets become paths, and unit instance names, as bounded property
//! tests (src/tests/hostile_input.rs).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use super::hostile_input::{check, nasty_bytes, one_clean_line, CASES};
use crate::cmd::flow::{derive_vm_name, repo_root};
use crate::host::logging::one_line;
use crate::host::units::{mangle, unmangle};
use crate::model::names::VmName;

#[test]
fn vm_names_derive_from_the_repo_directory() {
    for (dir, want) in [
        ("/home/a/vm1", "vm1"),
        ("/home/a/My Project", "My-Project"),
        ("/home/a/  two  spaces ", "two-spaces"),
        ("/home/a/ümlaut-vm", "mlaut-vm"),
        ("/home/a/web.app_2", "web.app_2"),
        ("/home/a/--x--", "x"),
    ] {
        assert_eq!(derive_vm_name(Path::new(dir)).unwrap(), want, "{dir}");
    }
    for dir in ["/home/a/.dotfiles", "/home/a/§§§", "/"] {
        let err = format!("{:#}", derive_vm_name(Path::new(dir)).unwrap_err());
        assert!(err.contains("name the VM"), "{dir}: {err}");
    }
}

#[test]
fn the_repo_root_is_the_nearest_ancestor_with_git() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("r");
    std::fs::create_dir_all(repo.join("a/b")).unwrap();
    assert_eq!(
        repo_root(&repo.join("a/b")),
        repo.join("a/b"),
        "no .git: the directory itself"
    );
    std::fs::write(repo.join(".git"), "gitdir: elsewhere\n").unwrap(); // a worktree's .git file
    assert_eq!(repo_root(&repo.join("a/b")), repo);
}

#[test]
fn hostile_names_never_panic_and_derive_only_safe_names() {
    let n0 = CASES.load(Ordering::Relaxed);
    let derived = AtomicUsize::new(0);
    check("derive_vm_name", 1000, 6, nasty_bytes(), |b| {
        let p = PathBuf::from("/home/u").join(OsStr::from_bytes(&b));
        match derive_vm_name(&p) {
            Ok(name) => {
                derived.fetch_add(1, Ordering::Relaxed);
                prop_assert!(VmName::try_from(name.as_str()).is_ok());
                prop_assert!(name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
                prop_assert!(!name.starts_with('-') && !name.ends_with('-'));
                Ok(())
            }
            Err(e) => one_clean_line(&e),
        }
    });
    assert!(derived.load(Ordering::Relaxed) > 0);
    // A unit instance (%i), unescaped the way prepare does it: never a path out of its dir.
    check("unit instance names", 500, 8, nasty_bytes(), |b| {
        let inst = String::from_utf8_lossy(&b);
        let vm = unmangle(&inst);
        if VmName::try_from(vm.as_str()).is_ok() {
            prop_assert!(!vm.contains('/') && vm != ".." && vm != ".");
            prop_assert_eq!(unmangle(&mangle(&vm)), vm);
        }
        Ok(())
    });
    eprintln!(
        "hostile names: {} cases",
        CASES.load(Ordering::Relaxed) - n0
    );
}

/// What `VmName` (and `EntryName`, the same rule) must mean for names that become paths (`<workspaceDir>/<name>`,
/// `/run/microvm-workspaces/<name>.json`), judged by the path library and the file system
/// rather than by restating its rules: an accepted name is one visible path component that
/// names a new entry right inside the directory it is joined to; ordinary VM names pass.
#[test]
fn vm_names_are_exactly_the_names_that_stay_one_visible_component() {
    let n0 = CASES.load(Ordering::Relaxed);
    let long_ok = "a".repeat(200);
    let long_utf8_ok = "é".repeat(100); // 200 bytes
    let good = crate::model::names::tests::GOOD_NAMES;
    for name in good
        .into_iter()
        .chain([long_ok.as_str(), long_utf8_ok.as_str()])
    {
        assert!(VmName::try_from(name).is_ok(), "{name:?} refused");
    }
    let too_long = "a".repeat(201);
    let too_long_utf8 = format!("{}a", "é".repeat(100)); // 201 bytes, 101 characters
    for name in [
        "",
        ".",
        "..",
        ".hidden",
        "..hidden",
        "a/b",
        "/",
        "vm1/",
        "/vm1",
        "../etc",
        "a\nb",
        "a\rb",
        "a\tb",
        "a\u{1b}[2Jb",
        "a\0b",
        "a\u{85}b",
        too_long.as_str(),
        too_long_utf8.as_str(),
    ] {
        let e = anyhow::Error::from(VmName::try_from(name).expect_err(name));
        let line = one_line(&e);
        assert!(line.starts_with("VM name "), "{name:?}: {line}");
    }

    // Oracles: std's path parser, and the file system itself.
    let dir = tempfile::tempdir().unwrap();
    let accepted = AtomicUsize::new(0);
    check("VmName", 1000, 7, nasty_bytes(), |b| {
        let s = String::from_utf8_lossy(&b).into_owned();
        let Ok(_) = VmName::try_from(s.as_str()) else {
            return Ok(());
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let parts: Vec<_> = Path::new(&s).components().collect();
        prop_assert_eq!(
            parts,
            vec![std::path::Component::Normal(OsStr::new(&s))],
            "not one path component"
        );
        prop_assert!(!s.starts_with('.'), "hidden: {:?}", s);
        prop_assert!(!s.chars().any(char::is_control), "control: {:?}", s);
        let made = dir.path().join(&s);
        std::fs::create_dir(&made).map_err(|e| TestCaseError::fail(format!("{s:?}: {e}")))?;
        let listed: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        std::fs::remove_dir(&made).unwrap();
        prop_assert_eq!(listed, vec![OsStr::new(&s).to_os_string()]);
        Ok(())
    });
    assert!(accepted.load(Ordering::Relaxed) > 0);
    // Names as people write them for hosts and VMs always pass.
    check(
        "ordinary names",
        300,
        10,
        "[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}",
        |s| {
            prop_assert!(VmName::try_from(s.as_str()).is_ok(), "{:?} refused", s);
            Ok(())
        },
    );
    eprintln!("VmName: {} cases", CASES.load(Ordering::Relaxed) - n0);
}
