//! Integration tests of the shared model parts (one binary: each links libtorch).
mod vae16;
