//! Names: the VM name derived from a repo's directory, and the repo root it is taken from.

use std::path::Path;

use crate::cmd::flow::{derive_vm_name, repo_root};

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
