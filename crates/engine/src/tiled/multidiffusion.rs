//! MultiDiffusion's merge (the extension's `MultiDiffusion.sample_one_step`): the sum of the
//! tiles' denoised predictions divided by how many tiles cover the cell, where more than one.
use host_api::tch::Tensor;

/// `sum` over `count` where `count > 1` (a cell of one tile keeps its value as it is).
pub fn average(sum: &Tensor, count: &Tensor) -> Tensor {
    sum.where_self(&count.le(1.0), &(sum / count))
}
