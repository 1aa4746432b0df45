//! A third-party sampler: Euler's method, registered as `example_euler`.
//! Build: `cargo build --release`, copy the .so into a plugin folder, then
//! `sampler = "example_euler"` in a profile.
use host_api::tch::Tensor;
use host_api::{Result, SampleCtx, Sampler};

pub struct ExampleEuler;

impl Sampler for ExampleEuler {
    const NAME: &'static str = "example_euler";
    const ALIASES: &'static [&'static str] = &["Example Euler"];

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        for i in 0..sigmas.len() - 1 {
            let denoised = ctx.denoise(&x, sigmas[i])?;
            let d = (&x - &denoised) / sigmas[i];
            x = &x + d * (sigmas[i + 1] - sigmas[i]);
            ctx.step(i, sigmas.len() - 1)?;
        }
        Ok(x)
    }
}

host_api::export_plugin! {
    samplers: [ExampleEuler],
}
