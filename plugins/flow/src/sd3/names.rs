//! Key prefixes of the single file and the defaults every part of the backend reads.

/// Model-key prefix of CLIP-L (the single file's own).
pub const CLIP_L_PREFIX: &str = "text_encoders.clip_l.transformer.";
/// Model-key prefix of OpenCLIP bigG.
pub const CLIP_G_PREFIX: &str = "text_encoders.clip_g.transformer.";
/// SD3's flow shift where no scheduler config says (diffusers' SD3 scheduler_config.json).
pub const DEFAULT_SHIFT: f64 = 3.0;
