//! Sigma schedules: pure functions from the model's sigma table and a step count to
//! `steps + 1` descending sigmas ending with zero (k-diffusion convention).
use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use abi_stable::StableAbi;

use crate::error::{from_ffi, guard, Error, Result};
use crate::sampler::strings;
use crate::sigmas::ModelSigmas;

pub trait Schedule: 'static {
    const NAME: &'static str;
    /// Other accepted names; A1111's display name first (e.g. "Karras").
    const ALIASES: &'static [&'static str] = &[];
    fn sigmas(model: &ModelSigmas, steps: usize) -> Result<Vec<f64>>;
}

#[repr(C)]
#[derive(StableAbi)]
pub struct ScheduleDecl {
    pub name: RString,
    pub aliases: RVec<RString>,
    pub sigmas: extern "C" fn(RSlice<'_, f64>, u32) -> RResult<RVec<f64>, RString>,
}

extern "C" fn sigmas_trampoline<S: Schedule>(
    table: RSlice<'_, f64>,
    steps: u32,
) -> RResult<RVec<f64>, RString> {
    guard(|| {
        let model = ModelSigmas::new(table.to_vec())?;
        let sigmas = S::sigmas(&model, steps as usize)?;
        if sigmas.len() != steps as usize + 1 {
            return Err(Error(format!(
                "returned {} sigmas for {steps} steps",
                sigmas.len()
            )));
        }
        Ok(sigmas.into())
    })
}

impl ScheduleDecl {
    pub fn of<S: Schedule>() -> Self {
        Self {
            name: S::NAME.into(),
            aliases: strings(S::ALIASES),
            sigmas: sigmas_trampoline::<S>,
        }
    }

    /// Host side: `steps + 1` sigmas for `model`.
    pub fn run(&self, model: &ModelSigmas, steps: usize) -> Result<Vec<f64>> {
        from_ffi((self.sigmas)(
            RSlice::from_slice(model.table()),
            steps as u32,
        ))
        .map(RVec::into_vec)
    }
}
