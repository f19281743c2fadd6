//! Every library item the integration tests use, named in one place: when modules in src/
//! move, only the paths here change. Tests write `api::Tree`, `api::check_name`, ...
#![allow(unused_imports)]

pub use microvm_workspaces::config::Config;
pub use microvm_workspaces::fsafe::{unmount, Tree, Trust, Walk, FAILPOINT_ENV};
pub use microvm_workspaces::link::{derive_vm_name, repo_root, Change};
pub use microvm_workspaces::logging::one_line;
pub use microvm_workspaces::paths::{check_name, normalize, Root};
pub use microvm_workspaces::prepare::{prepare_vm, Ctx};
pub use microvm_workspaces::runner::shares;
pub use microvm_workspaces::units::{generate, mangle, unmangle, GenEnv, Generated};
