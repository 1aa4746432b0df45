//! Model families as data, in the spirit of ComfyUI's `supported_models.py`: each family is
//! one entry (its text encoders, conditioning, head rule, latent scale, prediction rule) in
//! one file of this folder, written in the types of [`spec`], and [`FAMILIES`] lists them.
//! Detection ([`crate::detect`]) matches what a checkpoint holds against the entries — never a
//! guess from sizes, so tiny test models of a family load like real ones — and imports this
//! list; nothing here reads a checkpoint.
pub mod sd1;
pub mod sd2;
pub mod sdxl;
pub mod sdxl_refiner;
pub mod spec;

pub use spec::{
    EncoderSpec, Family, Pad, Prediction, PredictionRule, TextLayout, UNetInput, Vector,
    UNET_INPUTS,
};

/// Every family this crate knows, supported or not.
pub const FAMILIES: &[&Family] = &[
    &sd1::SD1,
    &sd2::SD2,
    &sdxl::SDXL,
    &sdxl_refiner::SDXL_REFINER,
];

/// The ids of the supported families.
pub fn supported_ids() -> String {
    let ids: Vec<&str> = FAMILIES
        .iter()
        .filter(|f| f.unsupported.is_none())
        .map(|f| f.id)
        .collect();
    ids.join(", ")
}
