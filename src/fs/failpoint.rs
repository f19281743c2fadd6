//! Crash-safety failpoints: with the `failpoints` feature (tests only; release builds leave it
//! off), `MICROVM_WORKSPACES_FAILPOINT=N` makes the process kill itself (SIGKILL, like a power
//! cut or the OOM killer) right after its Nth change to the file system or the mount table, so
//! every point between two steps can be hit deterministically. Without the feature, [`step`]
//! is empty.

pub const FAILPOINT_ENV: &str = "MICROVM_WORKSPACES_FAILPOINT";

/// Marks one completed change (`what` names it).
#[cfg(feature = "failpoints")]
pub fn step(what: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static DONE: AtomicU32 = AtomicU32::new(0);
    let n = DONE.fetch_add(1, Ordering::Relaxed) + 1;
    let Some(at) = std::env::var_os(FAILPOINT_ENV) else {
        return;
    };
    if at.to_str().and_then(|s| s.parse::<u32>().ok()) == Some(n) {
        eprintln!("failpoint: killed after step {n} ({what})");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Marks one completed change (`what` names it); nothing without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn step(_what: &str) {}
