pub mod cli;
pub mod doctor;
pub mod fetch;
pub mod flow;
pub mod pool;
pub mod shell;
pub mod status;
