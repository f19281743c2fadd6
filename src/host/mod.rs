pub mod caller;
pub mod logging;
pub mod ssh;
pub mod systemd;
pub mod units;
