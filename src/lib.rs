//! The hiresfix host as a library: profile, plugin registry, planning and the multi-pass run.
//! `main.rs` is the command line over it.
pub mod commands;
pub mod generate;
pub mod infotext;
pub mod limits;
pub mod loras;
pub mod noise;
pub mod output;
pub mod plan;
pub mod profile;
pub mod registry;
pub mod switch;
