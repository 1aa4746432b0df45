//! Single-step samplers after k-diffusion `k_diffusion/sampling.py`: the Euler family of
//! Karras et al. 2022 (with its optional churn), their ancestral variants, and DPM-Solver++ SDE.
mod ancestral;
mod karras;
mod sde;

pub use ancestral::{Dpm2Ancestral, DpmPp2sAncestral, EulerAncestral};
pub use karras::{Dpm2, Euler, Heun};
pub use sde::DpmPpSde;

host_api::export_plugin! {
    samplers: [Euler, EulerAncestral, Heun, Dpm2, Dpm2Ancestral, DpmPp2sAncestral, DpmPpSde],
}
