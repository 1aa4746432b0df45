//! A third-party UNet patch: scales every skip connection the decoder reads by `scale`
//! (while the call's sigma is at least `from_sigma`), registered as `example_skip_scale`.
//! Build: `cargo build --release`, copy the .so into a plugin folder, then
//! `patches = [{ name = "example_skip_scale", scale = 0.9 }]` in a profile.
use host_api::tch::Tensor;
use host_api::{Error, HookCtx, Options, Patch, PatchModel, Result};

pub struct SkipScale {
    scale: f64,
    from_sigma: f64,
}

impl Patch for SkipScale {
    const NAME: &'static str = "example_skip_scale";
    const ALIASES: &'static [&'static str] = &["Example skip scale"];
    const OPTIONS: &'static [&'static str] = &["scale", "from_sigma"];

    fn new(options: Options<'_>, _model: &PatchModel) -> Result<Self> {
        let scale = options.number("scale", 1.0)?;
        if !(0.0..=4.0).contains(&scale) {
            return Err(Error::new(format!(
                "option `scale` must be between 0 and 4, got {scale}"
            )));
        }
        Ok(Self {
            scale,
            from_sigma: options.number("from_sigma", 0.0)?,
        })
    }

    fn infotext(&self) -> Vec<(String, String)> {
        vec![("Example skip scale".into(), format!("{}", self.scale))]
    }

    fn output_block(&self, ctx: &HookCtx, h: Tensor, skip: Tensor) -> Result<(Tensor, Tensor)> {
        match ctx.sigma >= self.from_sigma {
            true => Ok((h, skip * self.scale)),
            false => Ok((h, skip)),
        }
    }
}

host_api::export_plugin! {
    patches: [SkipScale],
}
