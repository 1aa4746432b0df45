//! The hiresfix engine: the profile and its resolution, the plugin registry, planning, loaded
//! models, the multi-pass run, A1111 infotext and PNG output. The command line (`hiresfix`)
//! and the HTTP server (`hiresfix-serve`) are built on it; it imports neither.
pub mod defaults;
pub mod device_memory;
pub mod embeddings;
pub mod errors;
pub mod extras;
pub mod generate;
pub mod hash_cache;
pub mod img2img;
pub mod import;
pub mod infotext;
pub mod job;
pub mod limits;
pub mod lint;
pub mod live_preview;
pub mod loras;
pub mod memory;
pub mod models;
pub mod noise;
pub mod observer;
pub mod output;
pub mod parameters;
pub mod pass_size;
pub mod plan;
pub mod png_pixels;
pub mod png_text;
pub mod profile;
pub mod prompt_schedule;
pub mod refiner;
pub mod registry;
pub mod run;
pub mod seamless;
pub mod stored_latent;
pub mod switch;
pub mod tiled;
pub mod upscaler_models;
