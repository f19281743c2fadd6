pub mod action;
pub mod config;
pub mod names;
pub mod record;
pub mod runner;
pub mod workspace;
