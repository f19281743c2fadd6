//! The library's tests that are about more than one module (each module's own are beside
//! it). Like every in-crate test they need no root: `cargo test` runs them for anyone. The
//! tests that mount, chown and act as other users are tests/root and tests/reliability.

mod cli;
mod docs;
mod hostile_input;
mod layout;
mod names;

// How the binaries print an error: what hostile_input checks errors against.
use crate::host::logging::one_line;
