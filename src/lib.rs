//! The hiresfix host as a library: profile, plugin registry, planning and the multi-pass run.
//! `main.rs` is the command line over it.
pub mod commands;
pub mod convert;
pub mod generate;
pub mod hash_cache;
pub mod import;
pub mod infotext;
pub mod job;
pub mod limits;
pub mod lint;
pub mod loras;
pub mod memory;
pub mod models;
pub mod noise;
pub mod output;
pub mod parameters;
pub mod plan;
pub mod profile;
pub mod registry;
pub mod run;
pub mod seamless;
pub mod sheet;
pub mod stored_latent;
pub mod switch;
pub mod timings;
pub mod upscaler_models;
