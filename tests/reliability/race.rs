//! Concurrency: many prepares and links at once on VMs that share sources.

use std::process::Stdio;

use crate::common::*;
use crate::*;

const HOSTS: usize = 7;

/// nixfiles (linked back and forth between two checkouts, with the companion nix-secrets)
/// and seven VMs sharing nix-secrets, a nested placeholder tree and each their own directory
/// inside nixfiles.
fn racing_rig() -> Rig {
    let fx = rig();
    fx.config(r#"{"companions": {"nixfiles": {"nix-secrets": "../nix-secrets"}}}"#);
    fx.runner(
        "nixfiles",
        &[
            ("nixfiles", b"/var/lib/microvm-workspaces/nixfiles"),
            ("secrets", b"/var/lib/microvm-workspaces/nix-secrets"),
        ],
    );
    for h in 0..HOSTS {
        let host = format!("/var/lib/microvm-workspaces/nixfiles/hosts/microvms/h{h}");
        let own = format!("/var/lib/microvm-workspaces/h{h}");
        fx.runner(
            &format!("h{h}"),
            &[
                ("host", host.as_bytes()),
                ("secrets", b"/var/lib/microvm-workspaces/nix-secrets"),
                ("own", own.as_bytes()),
                ("common", b"/var/lib/microvm-workspaces/shared/common/deep"),
                ("data", b"/srv/vm-data/common"),
            ],
        );
    }
    for r in ["/home/alice/a/nixfiles", "/home/alice/b/nixfiles"] {
        fx.repo(r, ALICE);
        fx.mkdir(&format!("{r}/.git"), ALICE, 0o755);
    }
    fx.repo("/home/alice/a/nix-secrets", ALICE);
    fx
}

#[test]
fn thirty_two_prepares_and_eight_links_racing_fifty_times_stay_consistent() {
    in_mount_ns!(thirty_two_prepares_and_eight_links_racing_fifty_times_stay_consistent);
    let vms: Vec<String> = std::iter::once("nixfiles".to_string())
        .chain((0..HOSTS).map(|h| format!("h{h}")))
        .collect();
    let mut runs = 0;
    for round in 0..50 {
        let fx = racing_rig();
        let mut children = Vec::new();
        for i in 0..40 {
            let c = if i % 5 == 4 {
                let repo = if (i / 5 + round) % 2 == 0 { "a" } else { "b" };
                Run::link(&fx)
                    .user(ALICE)
                    .cwd(format!("/home/alice/{repo}/nixfiles"))
                    .args(["--no-restart"])
            } else {
                Run::prepare(&fx, &vms[i % vms.len()])
            };
            children.push((
                c.describe(),
                c.command()
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            ));
        }
        for (what, child) in children {
            let out = child.wait_with_output().unwrap();
            let err = stderr(&out);
            assert!(out.status.success(), "round {round}: {what} failed: {err}");
            assert!(
                !err.contains("exists") && !err.contains("EEXIST"),
                "round {round}: {what}: {err}"
            );
            runs += 1;
        }
        let ctx = format!("round {round}");
        for entry in ["nixfiles", "nix-secrets"] {
            assert_agree(&fx, entry, &ctx);
        }
        assert!(record(&fx, "nixfiles").is_some(), "{ctx}");
        for h in 0..HOSTS {
            for p in [
                format!("{WS}/nixfiles/hosts/microvms/h{h}"),
                format!("{WS}/h{h}"),
                format!("{WS}/nix-secrets"),
                format!("{WS}/shared/common/deep"),
                "/srv/vm-data/common".to_string(),
            ] {
                assert!(fx.p(&p).is_dir(), "{ctx}: {p} missing");
            }
        }
        for vm in &vms {
            let rec = fx.record(vm);
            assert_eq!(rec["vm"], vm.as_str(), "{ctx}");
        }
        let left = leftovers(fx.root());
        assert!(left.is_empty(), "{ctx}: leftovers {left:?}");
        for r in ["a/nixfiles", "b/nixfiles", "a/nix-secrets"] {
            assert_all_owned_by(&fx.p(&format!("/home/alice/{r}")), ALICE, &ctx);
        }
        assert!(
            is_marked(&fx.p(&format!("{WS}/shared/common/deep"))),
            "{ctx}"
        );
    }
    eprintln!("concurrency: 50 rounds of 32 prepares + 8 links, {runs} runs, none failed");
}
