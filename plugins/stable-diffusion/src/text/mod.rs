//! Text conditioning: A1111 prompt syntax and chunking, textual-inversion embeddings, the CLIP
//! text transformers, A1111's emphasis, and the conditioner that stacks a family's encoders.
pub mod clip;
pub mod conditioner;
pub mod embeddings;
pub mod emphasis;
pub mod tokenizer;
