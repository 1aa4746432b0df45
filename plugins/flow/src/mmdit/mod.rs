//! The MMDiT transformer of Stable Diffusion 3 / 3.5 (diffusers `SD3Transformer2DModel`).
