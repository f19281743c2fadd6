pub mod action;
pub mod config;
pub mod record;
pub mod runner;
pub mod workspace;
