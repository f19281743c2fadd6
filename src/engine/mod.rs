//! The workspace engine: observe (descriptors held) -> plan (pure) -> apply (each operation
//! re-checked under the lock), for a VM's start (prepare) and for microvm-link (link).
pub mod apply;
pub mod entry;
pub mod facts;
pub mod gitdir;
pub mod gitview;
pub mod guests;
pub mod leases;
pub mod link;
pub mod links;
pub mod observe;
pub mod plan;
pub mod policy;
pub mod pool;
pub mod prepare;
pub mod sealed;
pub mod shows;
