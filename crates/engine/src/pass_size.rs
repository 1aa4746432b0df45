//! A pass's size in pixels and latent cells (made by `plan::pass_sizes`).

/// A pass's image size: pixels, latent cells, and the size to upscale to before a centre crop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PassSize {
    pub width: u32,
    pub height: u32,
    pub latent_w: i64,
    pub latent_h: i64,
    /// Latent size to resize to before cropping to `latent_h × latent_w` (cover, A1111 rule).
    pub cover_h: i64,
    pub cover_w: i64,
}
