//! The workspace engine: observe (descriptors held) -> plan (pure) -> apply (each operation
//! re-checked under the lock), for a VM's start (prepare) and for microvm-link (relink).
pub mod apply;
pub mod entry;
pub mod gitview;
pub mod observe;
pub mod plan;
pub mod policy;
pub mod prepare;
pub mod shows;
