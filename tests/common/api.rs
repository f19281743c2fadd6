//! Every library item the integration tests use, named in one place: when modules in src/
//! move, only the paths here change. Tests write `api::Tree`, `api::check_name`, ...
#![allow(unused_imports)]

pub use microvm_workspaces::chase::{Tree, Trust, Walk};
pub use microvm_workspaces::config::Config;
pub use microvm_workspaces::entry::{unmount, Change, Workspace};
pub use microvm_workspaces::failpoint::FAILPOINT_ENV;
pub use microvm_workspaces::flow::{derive_vm_name, repo_root};
pub use microvm_workspaces::logging::one_line;
pub use microvm_workspaces::paths::{check_name, normalize, Root};
pub use microvm_workspaces::prepare::prepare_vm;
pub use microvm_workspaces::runner::shares;
pub use microvm_workspaces::units::{generate, mangle, unmangle, GenEnv, Generated};
