//! Text encoding shared by the backends: A1111 prompt syntax and 75-token chunking, the CLIP
//! text transformers (OpenAI CLIP-L, OpenCLIP ViT-H / bigG) and A1111's emphasis.
pub mod clip;
pub mod clip_config;
pub mod emphasis;
pub mod tokenizer;
