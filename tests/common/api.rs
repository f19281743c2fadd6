//! Every library item the integration tests use, named in one place: when modules in src/
//! move, only the paths here change. Tests write `api::Tree`, `api::VmName`, ...
#![allow(unused_imports)]

pub use microvm_workspaces::cmd::flow::{derive_vm_name, repo_root, Env, Options};
pub use microvm_workspaces::cmd::flow::{lease as flow_lease, release as flow_release};
pub use microvm_workspaces::engine::entry::{Change, Workspace};
pub use microvm_workspaces::engine::link::relink;
pub use microvm_workspaces::engine::plan::Op;
pub use microvm_workspaces::engine::prepare::prepare_shares;
pub use microvm_workspaces::engine::prepare::prepare_vm;
pub use microvm_workspaces::fs::chase::{Tree, Trust, Walk};
pub use microvm_workspaces::fs::failpoint::FAILPOINT_ENV;
pub use microvm_workspaces::fs::idmap::unmount;
pub use microvm_workspaces::fs::paths::{normalize, Root};
pub use microvm_workspaces::fs::seal;
pub use microvm_workspaces::host::caller::Caller;
pub use microvm_workspaces::host::logging::one_line;
pub use microvm_workspaces::host::units::{generate, mangle, unmangle, GenEnv, Generated};
pub use microvm_workspaces::model::config::Config;
pub use microvm_workspaces::model::names::{EntryName, VmName};
pub use microvm_workspaces::model::runner::shares;
