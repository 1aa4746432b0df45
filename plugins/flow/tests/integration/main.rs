//! Parity of the flow backend's parts with diffusers / transformers on tiny models.
mod flux;
mod mmdit;
mod t5;
