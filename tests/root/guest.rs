//! The guest is not trusted (docs/security.md#idmap): every link mount is an idmapped,
//! `nosuid,nodev`, private clone, so that what a guest does through it, as any uid, is at most
//! what the linker could do. virtiofsd acts for a guest caller with the caller's ids; these
//! tests act with those ids on the host side of the mount, as virtiofsd would. The real
//! guest's view is proven by the end-to-end suite (`18-guest-contained`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;

use crate::common::*;

const WS: &str = "/var/lib/microvm-workspaces";

fn link(fx: &Fx, cwd: &str, uid: u32, args: &[&str]) -> Output {
    Run::link(fx).user(uid).cwd(cwd).args(args).output()
}

/// VM `vm1` shares entry `vm1`; `vm2` (guest uid 2000) shares entry `vm2`; alice's and bob's
/// repos, each with a file of their own.
fn fixture(extra_vm_config: &str) -> Fx {
    let fx = Fx::new();
    for vm in ["vm1", "vm2"] {
        fx.runner(vm, &[("workspace", format!("{WS}/{vm}").as_bytes())]);
    }
    fx.config(&format!(
        r#"{{"vms": {{
            "vm1": {{"shares": [{{"tag": "workspace", "proto": "virtiofs", "source": "{WS}/vm1"}}]{extra_vm_config}}},
            "vm2": {{"guestUid": 2000, "guestGid": 2000, "shares": [{{"tag": "workspace", "proto": "virtiofs", "source": "{WS}/vm2"}}]}}
        }}}}"#
    ));
    for (who, uid) in [("alice", ALICE), ("bob", BOB)] {
        fx.mkdir(&format!("/home/{who}"), uid, 0o755);
        let repo = format!("/home/{who}/repo");
        fx.repo(&repo, uid);
        fx.mkdir(&format!("{repo}/.git"), uid, 0o755);
        let f = fx.write(&format!("{repo}/file"), who.as_bytes());
        std::os::unix::fs::chown(&f, Some(uid), Some(uid)).unwrap();
    }
    fx
}

/// alice links her repo into vm1 (no restart); its entry.
fn link_alice(fx: &Fx) -> std::path::PathBuf {
    assert_ok(&link(
        fx,
        "/home/alice/repo",
        ALICE,
        &["vm1", "--no-restart"],
    ));
    fx.p(WS).join("vm1")
}

/// `microvm-link fetch ARGS` as alice in her repo, without sudo.
fn fetch(fx: &Fx, args: &[&str]) -> Output {
    Run::link(fx)
        .drop_to(ALICE)
        .cwd("/home/alice/repo")
        .arg("fetch")
        .args(args)
        .output()
}

/// A config of one VM, vm1, sharing its entry over `proto`; `extra` opens its keys.
fn one_vm(fx: &Fx, extra: &str, proto: &str) {
    fx.config(&format!(
        r#"{{"vms": {{"vm1": {{{extra}"shares": [{{"tag": "workspace", "proto": "{proto}", "source": "{WS}/vm1"}}]}}}}}}"#
    ));
}

/// Nothing under `dir` is root's, by user or group: a set-id bit there is at most the
/// linker's own (which they could set themselves).
fn nothing_of_roots(dir: &Path) {
    for (p, m) in walk(dir) {
        assert_ne!(m.uid(), 0, "{} is root's", p.display());
        assert_ne!(m.gid(), 0, "{} is group root's", p.display());
    }
}

#[test]
fn through_a_link_the_guest_user_is_the_linker_and_guest_root_is_nobody() {
    in_mount_ns!(through_a_link_the_guest_user_is_the_linker_and_guest_root_is_nobody);
    let fx = fixture("");
    let entry = link_alice(&fx);
    let repo = fx.p("/home/alice/repo");

    // The guest sees alice's files as its user's (guest uid 1000, gid the same number as
    // alice's group); root's directory of nothing is nobody's.
    assert_eq!(meta(&entry.join("file")).0, GUEST_UID);
    assert_eq!(meta(&repo.join("file")).0, ALICE);

    // The guest user creates, renames, hard-links, chmods: all of it is alice's on the host.
    let out = sh_as(
        GUEST_UID,
        ALICE,
        &format!(
            "cd '{}' && echo g > new && mv new renamed && ln renamed hard && mkdir d && echo x > d/f && chmod 4755 renamed && setfattr -n user.k -v v renamed 2>/dev/null; ls -ln",
            entry.display()
        ),
    );
    assert_ok(&out);
    for f in ["renamed", "hard", "d", "d/f"] {
        assert_eq!(
            meta(&repo.join(f)).0,
            ALICE,
            "{f} is not alice's on the host"
        );
    }
    // chmod 4755 by the owner is allowed, but it is alice's file: set-uid alice at most.
    assert_eq!(
        std::fs::metadata(repo.join("renamed")).unwrap().uid(),
        ALICE
    );

    // The guest's root (virtiofsd acting with root's credentials, as it does for renames and
    // hard links): what it creates, and what it chowns to root, is nobody's on the host.
    std::fs::write(entry.join("by-root"), b"x").unwrap();
    std::fs::create_dir(entry.join("dir-by-root")).unwrap();
    std::fs::copy("/bin/true", entry.join("suid-by-root")).unwrap();
    std::fs::set_permissions(
        entry.join("suid-by-root"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    std::os::unix::fs::chown(entry.join("hard"), Some(0), Some(0)).unwrap();
    for f in ["by-root", "dir-by-root", "suid-by-root", "hard"] {
        let m = std::fs::metadata(repo.join(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{f} on the host");
    }
    // ...and renames to new names and hard links work (with root unmapped they would not:
    // EOVERFLOW, and no guest could `mv a b`).
    std::fs::rename(entry.join("by-root"), entry.join("by-root-renamed")).unwrap();
    std::fs::hard_link(entry.join("d/f"), entry.join("d/f-link")).unwrap();
    assert_eq!(meta(&repo.join("d/f-link")).0, ALICE);
    // Another guest uid is nobody at all.
    let err = write_as(1001, 1001, &entry.join("by-1001"), "x").unwrap_err();
    assert!(err.contains("Value too large"), "{err}");
    assert!(!repo.join("by-1001").exists());
    nothing_of_roots(&repo);

    // The mount: idmapped, nosuid, nodev; nothing mounted under the repo's own path.
    let opts = mount_options(&entry);
    for o in ["idmapped", "nosuid", "nodev"] {
        assert!(opts.contains(&o.to_string()), "{o} missing: {opts:?}");
    }
    assert!(mounts_under(&repo).is_empty(), "{:?}", mounts_under(&repo));
}

#[test]
fn a_second_user_and_a_second_guest_uid_map_to_their_own() {
    in_mount_ns!(a_second_user_and_a_second_guest_uid_map_to_their_own);
    let fx = fixture("");
    // bob links vm2, whose guest user is 2000:2000: it writes as bob (uid and group); 1000
    // is nobody there, and so is the guest group of bob's group's number.
    assert_ok(&link(&fx, "/home/bob/repo", BOB, &["vm2", "--no-restart"]));
    let entry = fx.p(WS).join("vm2");
    write_as(2000, 2000, &entry.join("from-guest"), "x").unwrap();
    let m = std::fs::metadata(fx.p("/home/bob/repo/from-guest")).unwrap();
    assert_eq!((m.uid(), m.gid()), (BOB, BOB));
    let err = write_as(2000, BOB, &entry.join("bobs-gid"), "x").unwrap_err();
    assert!(err.contains("Value too large"), "{err}");
    let err = write_as(GUEST_UID, BOB, &entry.join("from-1000"), "x").unwrap_err();
    assert!(err.contains("Value too large"), "{err}");
    // The status says how each VM's guest sees its links.
    let out = link(&fx, "/", 0, &["status", "--json"]);
    assert_ok(&out);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vm = |name: &str| {
        st["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["vm"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(vm("vm2")["guest"]["uid"], 2000, "{st}");
    assert_eq!(vm("vm2")["guest"]["idmap"], true, "{st}");
    assert_eq!(vm("vm1")["guest"]["uid"], GUEST_UID, "{st}");
}

#[test]
fn idmap_false_keeps_the_ids_and_says_so() {
    in_mount_ns!(idmap_false_keeps_the_ids_and_says_so);
    let fx = fixture(r#", "idmap": false"#);
    let entry = link_alice(&fx);
    // Ids pass through: root writes as root (what the VM's admin chose), still nosuid.
    std::fs::write(entry.join("by-root"), b"x").unwrap();
    assert_eq!(meta(&fx.p("/home/alice/repo/by-root")).0, 0);
    let opts = mount_options(&entry);
    assert!(!opts.contains(&"idmapped".to_string()), "{opts:?}");
    assert!(opts.contains(&"nosuid".to_string()), "{opts:?}");
    let out = link(&fx, "/", 0, &["status"]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "vm1: guest ids unmapped (idmap = false): the guest's root is root on linked repos"
        ),
        "{text}"
    );
}

#[test]
fn a_plain_mount_left_by_an_older_version_is_remounted_idmapped_at_start() {
    in_mount_ns!(a_plain_mount_left_by_an_older_version_is_remounted_idmapped_at_start);
    let fx = fixture("");
    let entry = link_alice(&fx);
    // What the previous version left: a plain bind of the repo on the entry.
    let st = std::process::Command::new("umount")
        .arg("-R")
        .arg(&entry)
        .status()
        .unwrap();
    assert!(st.success());
    let st = std::process::Command::new("mount")
        .arg("--bind")
        .arg(fx.p("/home/alice/repo"))
        .arg(&entry)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(std::fs::write(entry.join("root-can"), b"x").is_ok());
    std::fs::remove_file(entry.join("root-can")).unwrap();

    fx.prepare_ok("vm1");
    assert_eq!(mount_count(&entry), 1, "one mount on the entry, not two");
    std::fs::write(entry.join("root-is-nobody"), b"x").unwrap();
    assert_eq!(meta(&fx.p("/home/alice/repo/root-is-nobody")).0, 65534);
    // Once right, a start changes nothing.
    let before = mount_options(&entry);
    fx.prepare_ok("vm1");
    assert_eq!(mount_options(&entry), before);
}

#[test]
fn a_mount_made_on_a_link_never_appears_at_the_repos_own_path() {
    in_mount_ns!(a_mount_made_on_a_link_never_appears_at_the_repos_own_path);
    let fx = fixture("");
    // /home shared, as under systemd: a plain bind would join its peer group.
    let home = fx.p("/home");
    for args in [
        vec!["--bind".into(), home.clone(), home.clone()],
        vec!["--make-shared".into(), home.clone()],
    ] {
        assert!(std::process::Command::new("mount")
            .args(&args)
            .status()
            .unwrap()
            .success());
    }
    let entry = link_alice(&fx);
    // Something mounted on the link (what a guest-only view of .git would be)...
    let on = entry.join(".git");
    assert!(std::process::Command::new("mount")
        .args(["-t", "tmpfs", "guest-only"])
        .arg(&on)
        .status()
        .unwrap()
        .success());
    // ...stays off the repo's own path, which the user keeps as it was.
    let repo = fx.p("/home/alice/repo");
    assert!(mounts_under(&repo).is_empty(), "{:?}", mounts_under(&repo));
    std::fs::write(repo.join(".git/config"), b"[core]\n").unwrap();
    assert!(!on.join("config").exists());
}

#[test]
fn repos_the_guest_could_not_work_in_are_refused_in_one_line() {
    in_mount_ns!(repos_the_guest_could_not_work_in_are_refused_in_one_line);
    let fx = fixture("");
    // A repo of root's: the guest user would be root on it.
    fx.repo("/srv/rootrepo", 0);
    let out = link(&fx, "/srv/rootrepo", 0, &["vm1", "--no-restart"]);
    assert_one_line_error(&out, &["/srv/rootrepo is root's", "idmap = false"]);
    // Two VMs sharing one entry with different guest uids: one mount cannot serve both.
    fx.config(&format!(
        r#"{{"vms": {{
            "vm1": {{"shares": [{{"tag": "workspace", "proto": "virtiofs", "source": "{WS}/vm1"}}]}},
            "vm2": {{"guestUid": 2000, "shares": [{{"tag": "workspace", "proto": "virtiofs", "source": "{WS}/vm1"}}]}}
        }}}}"#
    ));
    let out = link(&fx, "/home/alice/repo", ALICE, &["vm1", "--no-restart"]);
    assert_one_line_error(&out, &["VMs vm1", "vm2", "share entry vm1", "guestUid"]);
    assert!(!fx.p(WS).join(".links/vm1").exists());
    // A 9p share of the entry: qemu writes as the hypervisor user, whom the idmap does not map.
    one_vm(&fx, r#""#, "9p");
    let out = link(&fx, "/home/alice/repo", ALICE, &["vm1", "--no-restart"]);
    assert_one_line_error(&out, &["VM vm1 shares entry vm1 over 9p", "idmap = false"]);
}

/// The options of the mount at `p` (the last one there), from /proc/self/mountinfo.
fn mount_options(p: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = p.to_str().unwrap();
    info.lines()
        .rfind(|l| l.split(' ').nth(4) == Some(want))
        .map(|l| {
            l.split(' ')
                .nth(5)
                .unwrap()
                .split(',')
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `git` as `uid:gid` in `dir`, with a throw-away home and an identity.
fn git_as(uid: u32, gid: u32, dir: &Path, args: &str) -> Output {
    sh_as(
        uid,
        gid,
        &format!(
            "export HOME=/nonexistent GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=g GIT_AUTHOR_EMAIL=g@x GIT_COMMITTER_NAME=g GIT_COMMITTER_EMAIL=g@x; cd '{}' && git {args}",
            dir.display()
        ),
    )
}

/// alice's repo as a real git repo with one commit on `main`.
fn real_repo(fx: &Fx) -> std::path::PathBuf {
    let repo = fx.p("/home/alice/repo");
    std::fs::remove_dir_all(repo.join(".git")).unwrap();
    for cmd in ["init -q -b main", "add file", "commit -q -m host-commit"] {
        assert_ok(&git_as(ALICE, ALICE, &repo, cmd));
    }
    repo
}

#[test]
fn the_guest_commits_in_its_own_git_dir_and_fetch_brings_it_home() {
    in_mount_ns!(the_guest_commits_in_its_own_git_dir_and_fetch_brings_it_home);
    let fx = fixture("");
    let repo = real_repo(&fx);
    let config_before = std::fs::read(repo.join(".git/config")).unwrap();
    let entry = link_alice(&fx);

    // The guest's git works in its view: status clean, log shows the host's commit.
    let out = git_as(GUEST_UID, ALICE, &entry, "status --porcelain");
    assert_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let out = git_as(GUEST_UID, ALICE, &entry, "log --format=%s");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "host-commit");
    // It commits, branches, amends freely...
    std::fs::write(entry.join("file"), b"changed in the guest").unwrap_or_else(|_| {
        write_as(
            GUEST_UID,
            ALICE,
            &entry.join("file"),
            "changed in the guest",
        )
        .unwrap()
    });
    for cmd in [
        "commit -q -am guest-commit",
        "checkout -q -b topic",
        "commit -q --allow-empty -m topic-commit",
        "commit -q --amend --allow-empty -m topic-amended",
    ] {
        assert_ok(&git_as(GUEST_UID, ALICE, &entry, cmd));
    }
    // ...but cannot touch what the host's git would run: config and hooks are read-only,
    // .git cannot be renamed away, the repo's own .git never changes.
    let attacks = git_as(
        GUEST_UID,
        ALICE,
        &entry,
        "echo '[core] fsmonitor = touch /tmp/pwned' >> .git/config; echo x > .git/hooks/post-checkout; mv .git .git-old; rm -rf .git/hooks; true",
    );
    assert_ok(&attacks);
    assert_eq!(
        std::fs::read(repo.join(".git/config")).unwrap(),
        config_before
    );
    assert!(!repo.join(".git/hooks/post-checkout").exists());
    assert!(!entry.join(".git-old").exists(), "the guest renamed .git");
    let guest_config = std::fs::read_to_string(entry.join(".git/config")).unwrap();
    assert!(!guest_config.contains("fsmonitor"), "{guest_config}");
    // The host repo: its branch did not move; the host edits its own config and commits
    // while the link stands.
    let host_log = git_as(ALICE, ALICE, &repo, "log --format=%s main");
    assert_eq!(
        String::from_utf8_lossy(&host_log.stdout).trim(),
        "host-commit"
    );
    assert_ok(&git_as(
        ALICE,
        ALICE,
        &repo,
        "config user.name alice-on-host",
    ));
    assert_ok(&git_as(
        ALICE,
        ALICE,
        &repo,
        "commit -q --allow-empty -m host-two",
    ));
    assert!(mounts_under(&repo).is_empty(), "{:?}", mounts_under(&repo));

    // fetch, as alice (no root): the guest's branches arrive as refs/remotes/vm1/*.
    let out = fetch(&fx, &[]);
    assert_ok(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("vm1: 2 branches new or moved (main, topic)"),
        "{said}"
    );
    let log = git_as(ALICE, ALICE, &repo, "log --format=%s vm1/topic");
    assert_eq!(
        String::from_utf8_lossy(&log.stdout).trim(),
        "topic-amended\nguest-commit\nhost-commit"
    );
    // Again: nothing new.
    let out = fetch(&fx, &["vm1"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("vm1: up to date (2 branches"));
}

#[test]
fn readonly_and_shared_git_modes() {
    in_mount_ns!(readonly_and_shared_git_modes);
    let fx = fixture(r#", "git": "readonly""#);
    let repo = real_repo(&fx);
    let entry = link_alice(&fx);
    assert_ok(&git_as(GUEST_UID, ALICE, &entry, "status --porcelain"));
    let out = git_as(GUEST_UID, ALICE, &entry, "commit -q --allow-empty -m nope");
    assert!(!out.status.success(), "a commit through a read-only .git");
    let out = sh_as(
        GUEST_UID,
        ALICE,
        &format!("mv '{0}/.git' '{0}/.git-old'", entry.display()),
    );
    assert!(!out.status.success(), "renamed a read-only .git");
    let out = fetch(&fx, &[]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("git = readonly"));

    // Switched to private in the config: the next start gives the guest its own git dir.
    one_vm(&fx, r#""git": "private", "#, "virtiofs");
    fx.prepare_ok("vm1");
    assert!(
        entry.join(".git/origin").exists(),
        "still the read-only view"
    );
    assert_ok(&git_as(
        GUEST_UID,
        ALICE,
        &entry,
        "commit -q --allow-empty -m private",
    ));

    // shared: the repo's own .git, and status says what that means.
    one_vm(&fx, r#""git": "shared", "#, "virtiofs");
    fx.prepare_ok("vm1");
    assert!(
        !is_mountpoint(&entry.join(".git")),
        "shared: no mount on .git"
    );
    assert_ok(&git_as(
        GUEST_UID,
        ALICE,
        &entry,
        "commit -q --allow-empty -m shared",
    ));
    let log = git_as(ALICE, ALICE, &repo, "log -1 --format=%s");
    assert_eq!(String::from_utf8_lossy(&log.stdout).trim(), "shared");
    let out = link(&fx, "/", 0, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("vm1: git = shared: the guest can make your git run commands"),
        "{text}"
    );
}

#[test]
fn doctor_says_how_each_guest_sees_links_and_whether_idmapped_mounts_work() {
    in_mount_ns!(doctor_says_how_each_guest_sees_links_and_whether_idmapped_mounts_work);
    let fx = fixture(r#", "idmap": false, "git": "shared""#);
    fx.mkdir(WS, 0, 0o755);
    let out = link(&fx, "/", 0, &["doctor", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let found = |check: &str, needle: &str| {
        doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == check && f["what"].as_str().unwrap().contains(needle))
            .cloned()
            .unwrap_or_else(|| panic!("no {check} finding with {needle:?} in {doc:#}"))
    };
    assert_eq!(
        found("idmap", "can carry idmapped mounts")["severity"],
        "ok"
    );
    assert_eq!(
        found("guest", "vm1: guest ids unmapped")["severity"],
        "warn"
    );
    assert_eq!(found("guest", "vm1: git = shared")["severity"], "warn");
    assert_eq!(
        found("guest", "VM vm2: guest uid 2000 gid 2000 as the linker")["severity"],
        "ok"
    );
}

#[test]
fn fetch_reads_nothing_the_guest_points_it_to() {
    in_mount_ns!(fetch_reads_nothing_the_guest_points_it_to);
    let fx = fixture("");
    let repo = real_repo(&fx);
    // Another repo of alice's, which the guest must never get into this one.
    let secret = fx.p("/home/alice/secret");
    fx.repo("/home/alice/secret", ALICE);
    for cmd in [
        "init -q -b main",
        "commit -q --allow-empty -m secret-commit",
    ] {
        assert_ok(&git_as(ALICE, ALICE, &secret, cmd));
    }
    let secret_id =
        String::from_utf8(git_as(ALICE, ALICE, &secret, "rev-parse HEAD").stdout).unwrap();
    let secret_id = secret_id.trim();
    let entry = link_alice(&fx);
    // The guest (its user is alice through the idmap) swaps its objects dir for one whose
    // alternates name the secret repo, its refs for a symlink to the secret repo's, and tries
    // to give the host's git a config through `commondir`.
    let out = sh_as(
        GUEST_UID,
        ALICE,
        &format!(
            "cd '{e}/.git' && mv objects objects-old && mkdir -p objects/info && echo '{s}/.git/objects' > objects/info/alternates && mv refs refs-old && ln -s '{s}/.git/refs' refs && printf '{s}/.git\\n' > commondir; echo {secret_id} > packed-refs-guest; true",
            e = entry.display(),
            s = secret.display(),
        ),
    );
    assert_ok(&out);
    assert_eq!(
        std::fs::read_to_string(entry.join(".git/commondir")).unwrap(),
        ".\n",
        "the guest rewrote commondir"
    );
    let out = fetch(&fx, &[]);
    assert_ok(&out);
    let has = git_as(ALICE, ALICE, &repo, &format!("cat-file -e {secret_id}"));
    assert!(
        !has.status.success(),
        "the secret commit reached the repo: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let refs = git_as(ALICE, ALICE, &repo, "for-each-ref refs/remotes");
    assert_eq!(String::from_utf8_lossy(&refs.stdout), "", "{refs:?}");
}

#[test]
fn a_git_dir_with_a_file_of_roots_gets_the_read_only_view_never_a_copy_of_it() {
    in_mount_ns!(a_git_dir_with_a_file_of_roots_gets_the_read_only_view_never_a_copy_of_it);
    let fx = fixture("");
    let repo = real_repo(&fx);
    // What `sudo git add` leaves: the index root's. Root must not copy a file of someone
    // else's where the repo's owner reads it; the guest gets .git read-only instead.
    std::os::unix::fs::chown(repo.join(".git/index"), Some(0), Some(0)).unwrap();
    let out = link(&fx, "/home/alice/repo", ALICE, &["vm1", "--no-restart"]);
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("read-only instead of a git dir of its own") && err.contains("owned by uid 0"),
        "{err}"
    );
    let entry = fx.p(WS).join("vm1");
    assert!(
        !entry.join(".git/origin").exists(),
        "a private git dir was made"
    );
    assert!(is_mountpoint(&entry.join(".git")));
    let out = git_as(GUEST_UID, ALICE, &entry, "commit -q --allow-empty -m nope");
    assert!(!out.status.success(), "a commit through the read-only .git");
}

#[test]
fn a_repo_on_a_file_system_without_idmapped_mounts_is_refused_naming_it() {
    in_mount_ns!(a_repo_on_a_file_system_without_idmapped_mounts_is_refused_naming_it);
    let fx = fixture("");
    // ramfs has no idmapped mounts.
    let home = fx.p("/home/carol");
    std::fs::create_dir_all(&home).unwrap();
    assert!(std::process::Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(&home)
        .status()
        .unwrap()
        .success());
    fx.repo("/home/carol/repo", ALICE);
    std::os::unix::fs::chown(&home, Some(ALICE), Some(ALICE)).unwrap();
    let out = link(&fx, "/home/carol/repo", ALICE, &["vm1", "--no-restart"]);
    assert_one_line_error(
        &out,
        &[
            "/home/carol/repo",
            "cannot make idmapped mounts",
            "idmap = false",
        ],
    );
    assert!(
        !fx.p(WS).join(".links/vm1").exists(),
        "a record of a refused link"
    );
    // A link made unmapped there, then the VM switched to idmap: doctor names the repo.
    one_vm(&fx, r#""idmap": false, "#, "virtiofs");
    assert_ok(&link(
        &fx,
        "/home/carol/repo",
        ALICE,
        &["vm1", "--no-restart"],
    ));
    one_vm(&fx, "", "virtiofs");
    let out = link(&fx, "/", 0, &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("repo /home/carol/repo (linked at /var/lib/microvm-workspaces/vm1) cannot carry idmapped mounts"),
        "{text}"
    );
}

// Worktrees and submodules (issue 20), in a file of their own.
mod worktree;
