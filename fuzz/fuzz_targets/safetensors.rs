//! Safetensors files as a checkpoint or VAE: the header, every key rename from a foreign layout
//! over the stored keys, and opening the file as a checkpoint (family detection, key mapping).
//! Errors are expected; panics are bugs.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use hiresfix_sd::checkpoint::safetensors::parse_header;
use hiresfix_sd::checkpoint::Checkpoint;
use hiresfix_sd::convert::diffusers_unet::{diffusers_unet_key, UnetLayout};
use hiresfix_sd::convert::diffusers_vae::{diffusers_vae_key, standalone_vae_keys};
use hiresfix_sd::convert::{hf_clip, indices_under, open_clip};
use libfuzzer_sys::fuzz_target;

/// Single-file prefixes of the text encoders, as the families declare them.
const CLIP_PREFIXES: [&str; 2] = [
    "cond_stage_model.transformer.",
    "conditioner.embedders.0.transformer.",
];
const OPEN_CLIP_PREFIXES: [&str; 3] = [
    "cond_stage_model.model.",
    "conditioner.embedders.1.model.",
    "conditioner.embedders.0.model.",
];

/// One file per fuzzing process, in memory.
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        PathBuf::from(format!(
            "/dev/shm/hiresfix-fuzz-{}.safetensors",
            std::process::id()
        ))
    })
}

fn rename_keys(keys: &[&str]) {
    let layout = UnetLayout::from_keys(keys.iter().copied());
    let num_up = indices_under(keys.iter().copied(), "decoder.up_blocks.").len();
    for key in keys {
        let _ = diffusers_unet_key(key, &layout);
        let _ = diffusers_vae_key(key, num_up);
        let _ = hf_clip::text_encoder_key("", key);
        let _ = open_clip::to_model("", key, 32);
        for prefix in CLIP_PREFIXES {
            if let Some(rest) = key.strip_prefix(prefix) {
                let _ = hf_clip::text_encoder_key(prefix, rest);
            }
        }
        for prefix in OPEN_CLIP_PREFIXES {
            if let Some(rest) = key.strip_prefix(prefix) {
                let layers = indices_under(
                    keys.iter().copied(),
                    &format!("{prefix}transformer.resblocks."),
                )
                .len();
                let _ = open_clip::to_model(prefix, rest, layers.saturating_sub(1));
            }
        }
    }
    let _ = standalone_vae_keys(keys.iter().copied());
}

fuzz_target!(|data: &[u8]| {
    if let Ok((_, entries)) = parse_header(data) {
        let keys: Vec<&str> = entries.keys().map(String::as_str).collect();
        rename_keys(&keys);
    }
    let path = scratch();
    if std::fs::write(path, data).is_ok() {
        let _ = Checkpoint::open(path);
        let _ = std::fs::remove_file(path);
    }
});
