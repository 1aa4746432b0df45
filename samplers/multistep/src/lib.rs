//! Multistep samplers, which reuse earlier denoised predictions: linear multistep (LMS),
//! DPM-Solver++(2M) and its SDE variants, and UniPC.
mod dpmpp;
mod lms;
mod unipc;

pub use dpmpp::{DpmPp2m, DpmPp2mSde, DpmPp3mSde};
pub use lms::Lms;
pub use unipc::UniPc;

host_api::export_plugin! {
    samplers: [Lms, DpmPp2m, DpmPp2mSde, DpmPp3mSde, UniPc],
}

/// A positive integer option such as `order`.
pub(crate) fn order_option(
    ctx: &host_api::SampleCtx<'_>,
    sampler: &str,
    default: usize,
) -> host_api::Result<usize> {
    let order = ctx.options().number("order", default as f64)?;
    if order < 1.0 || order.fract() != 0.0 || order > 16.0 {
        return Err(host_api::Error(format!(
            "{sampler}: option `order` must be a whole number from 1 to 16, got {order}"
        )));
    }
    Ok(order as usize)
}
