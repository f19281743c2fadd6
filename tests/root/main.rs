//! The root set: prepare, microvm-link and the generator as root runs them, against temporary
//! roots laid out like a microvm.nix host. One test binary, one module per subject:
//!
//! * `prepare`: one test per rule of docs/design.md#prepare-rules;
//! * `link`: link, relink, unlink, companions, dry runs, the legacy layout;
//! * `engine`: for generated workspaces and intents, a dry run plans exactly what the act does;
//! * `live`: live links (`.live/<name>`), followed without a restart;
//! * `pool`: pools and leases (`--pool`, `release`, `.leases/<vm>`);
//! * `guest`: idmapped link mounts, the guest's own git dir, `fetch`;
//! * `status`: what each share showed at start and shows now, in words;
//! * `shell`: `microvm-link shell` and the SSH wait, with a stand-in ssh;
//! * `doctor`: every check firing and not firing;
//! * `generator`: golden output trees, checked by the real `systemd-analyze verify`;
//! * `virtiofsd`: the real virtiofsd on every kind of source prepare leaves.
//!
//! Every test needs root, and checks for it first (`common::require_root`, reached through
//! `Fx::new`, `in_mount_ns!` or directly): without root it fails saying so, it never skips.
//! Tests that mount run in a private mount namespace (`in_mount_ns!`, which re-runs
//! `module::test` by its full name). Tests without root are the library's (`cargo test`).

#![forbid(unsafe_code)]

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod doctor;
mod engine;
mod generator;
mod guest;
mod link;
mod live;
mod pool;
mod prepare;
mod shell;
mod status;
mod virtiofsd;
