//! Text conditioning: A1111 prompt syntax and chunking, textual-inversion embeddings, the CLIP
//! text transformers, A1111's emphasis, and the conditioner that stacks a family's encoders.
//! The CLIP transformers, prompt parsing and emphasis are shared with the flow backend
//! (crates/model-parts).
pub mod conditioner;
pub mod embeddings;

pub use hiresfix_model_parts::text::{clip, emphasis, tokenizer};
