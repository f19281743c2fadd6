//! File-system safety: the layer everything else stands on. Imports nothing of the crate.
pub mod chase;
pub mod dirs;
pub mod failpoint;
pub mod idmap;
pub mod paths;
pub mod placeholder;
pub mod seal;
