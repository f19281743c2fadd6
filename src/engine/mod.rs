pub mod entry;
pub mod gitview;
pub mod prepare;
pub mod shows;
