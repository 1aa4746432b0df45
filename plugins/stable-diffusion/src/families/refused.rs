//! Families recognised but not supported yet, as entries, so that detection refuses them by
//! name instead of loading them as a wrong family: the SDXL refiner. (Other architectures and
//! UNet variants are refused by their markers in [`crate::detect`].)
use super::sdxl;
use super::spec::{EncoderSpec, Family, Vector};

/// SDXL's bigG, alone and first in the refiner's single files.
const REFINER_BIGG: EncoderSpec = EncoderSpec {
    ldm_prefix: "conditioner.embedders.0.model.",
    ..sdxl::OPENCLIP_BIGG
};

pub const SDXL_REFINER: Family = Family {
    id: "sdxl-refiner",
    name: "Stable Diffusion XL refiner",
    encoders: &[REFINER_BIGG],
    vector: Vector::PooledTextSizesAndAesthetic,
    unsupported: Some(REFINER_REASON),
    ..sdxl::SDXL
};

const REFINER_REASON: &str = "the SDXL refiner (OpenCLIP-G only, context 1280, adm 2560 with an aesthetic score) — use an SDXL base checkpoint";
