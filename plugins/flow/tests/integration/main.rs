//! Parity of the flow backend's parts with diffusers / transformers on tiny models.
mod flux;
mod flux_backend;
mod flux_lora;
mod mmdit;
mod sd3;
mod t5;
