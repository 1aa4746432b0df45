//! The host's integration tests as one binary (ripgrep's layout): one module per behaviour
//! area, sharing `common` (the hiresfix binary, the tiny test models, scratch folders, and
//! out-of-tree plugins built once per run).
mod common;

mod bad_input;
mod batch;
mod chain;
mod check;
mod compat;
mod convert;
mod cross_family;
mod embeddings;
mod files_hostile;
mod flow_model;
mod img2img;
mod info;
mod inpaint_model;
mod live_preview;
mod lora;
mod merge_and_switch;
mod model_upscalers;
mod noise_parity;
mod output;
mod parity;
mod patches;
mod plugins;
mod png_hostile;
mod prompt_schedule;
mod refiner;
mod resolve;
mod sampler_parity;
mod sd3_run;
mod serve;
mod serve_embeddings;
mod serve_extras;
mod serve_hostile;
mod serve_img2img;
mod serve_options;
mod serve_previews;
mod serve_seeds;
mod serve_webuiapi;
mod stages;
mod tiled;
mod upscaler_names;
mod upscaler_parity;
mod upscaler_plugins;
mod workflow;
