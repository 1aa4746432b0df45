//! The T5 v1.1 encoder (T5-XXL as SD3 and Flux use it) and its tokenizer, with A1111 prompt
//! emphasis applied as Forge applies it to T5. Parity reference: transformers'
//! `T5EncoderModel` and `T5TokenizerFast` (scripts/make_t5_reference.py).
//!
//! - `config`: the encoder's sizes, read off the weights' shapes.
//! - `weights`: reading the weights (transformers / ComfyUI split files, single-file prefix).
//! - `layers`: RMS norm, attention with the shared relative position bias, gated-GELU FFN.
//! - `encoder`: the stack of blocks.
//! - `tokenizer`: `tokenizer.json` through the `tokenizers` crate, padding and truncation as
//!   diffusers does, and where the tokenizer file comes from.
//! - `spiece`: a SentencePiece `spiece.model` read into the same tokenizer.
//! - `emphasis`: Forge's "Original" emphasis on a prompt's T5 output.
//! - `placement`: `[model] t5`, the device T5 runs on.
mod config;
mod emphasis;
mod encoder;
mod layers;
mod placement;
mod spiece;
mod tokenizer;
mod weights;

pub use config::T5Config;
pub use emphasis::apply_emphasis;
pub use encoder::T5Encoder;
pub use placement::{T5Placement, PLACEMENT_KEY};
pub use tokenizer::{
    locate_tokenizer, T5Tokenizer, T5Tokens, FLUX_DEV_MAX_LENGTH, FLUX_SCHNELL_MAX_LENGTH,
    SD3_MAX_LENGTH, TOKENIZER_KEY,
};
pub use weights::{ScaledTensor, T5Weights, SINGLE_FILE_PREFIX};
