//! Sigma schedules: pure functions from the model's sigma table and a step count to
//! `steps + 1` descending sigmas ending with zero (k-diffusion convention).
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use abi_stable::StableAbi;

use crate::error::{from_ffi, guard, Error, Result};
use crate::sampling::ModelSampling;
use crate::sigmas::ModelSigmas;
use crate::strings::{owned, static_strs};

pub trait Schedule: 'static {
    const NAME: &'static str;
    /// Other accepted names; A1111's display name first (e.g. "Karras").
    const ALIASES: &'static [&'static str] = &[];
    fn sigmas(model: &ModelSigmas, steps: usize) -> Result<Vec<f64>>;
}

/// A registered schedule as it crosses the boundary. Host API 1.0's fields end at `sigmas`;
/// later ones are appended and read as `Option`s.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = ScheduleFfiRef)))]
#[sabi(missing_field(option))]
pub struct ScheduleFfi {
    pub name: RStr<'static>,
    pub aliases: RSlice<'static, RStr<'static>>,
    #[sabi(last_prefix_field)]
    pub sigmas: extern "C" fn(RSlice<'_, f64>, u32) -> RResult<RVec<f64>, RString>,
    /// 1.5.0: the schedule of any model sampling (a flow model's too); absent, the host
    /// schedules only discrete models with this plugin.
    pub sigmas_of: extern "C" fn(&ModelSampling, u32) -> RResult<RVec<f64>, RString>,
}

fn checked<S: Schedule>(model: &ModelSigmas, steps: u32) -> Result<RVec<f64>> {
    let sigmas = S::sigmas(model, steps as usize)?;
    if sigmas.len() != steps as usize + 1 {
        return Err(Error(format!(
            "returned {} sigmas for {steps} steps",
            sigmas.len()
        )));
    }
    Ok(sigmas.into())
}

extern "C" fn sigmas_trampoline<S: Schedule>(
    table: RSlice<'_, f64>,
    steps: u32,
) -> RResult<RVec<f64>, RString> {
    guard(|| checked::<S>(&ModelSigmas::new(table.to_vec())?, steps))
}

extern "C" fn sigmas_of_trampoline<S: Schedule>(
    sampling: &ModelSampling,
    steps: u32,
) -> RResult<RVec<f64>, RString> {
    guard(|| checked::<S>(&sampling.model_sigmas()?, steps))
}

impl ScheduleFfi {
    pub fn of<S: Schedule>() -> ScheduleFfiRef {
        ScheduleFfi {
            name: RStr::from_str(S::NAME),
            aliases: static_strs(S::ALIASES),
            sigmas: sigmas_trampoline::<S>,
            sigmas_of: sigmas_of_trampoline::<S>,
        }
        .leak_into_prefix()
    }
}

/// The host's view of a registered schedule.
pub struct ScheduleDecl {
    pub name: String,
    pub aliases: Vec<String>,
    ffi: ScheduleFfiRef,
}

impl ScheduleDecl {
    pub fn of<S: Schedule>() -> Self {
        Self::from_ffi(ScheduleFfi::of::<S>())
    }

    pub fn from_ffi(ffi: ScheduleFfiRef) -> Self {
        Self {
            name: ffi.name().to_string(),
            aliases: owned(ffi.aliases()),
            ffi,
        }
    }

    /// Host side: `steps + 1` sigmas for `model` (a discrete model's sigma table).
    pub fn run(&self, model: &ModelSigmas, steps: usize) -> Result<Vec<f64>> {
        match model.flow_time() {
            None => from_ffi((self.ffi.sigmas())(
                RSlice::from_slice(model.table()),
                steps as u32,
            ))
            .map(RVec::into_vec),
            Some(flow) => {
                let sampling = ModelSampling {
                    kind: crate::sampling::FLOW.into(),
                    shift: flow.shift,
                    multiplier: flow.multiplier,
                    sigmas: model.table().to_vec().into(),
                    extra: RVec::new(),
                };
                self.run_sampling(&sampling, steps)
            }
        }
    }

    /// Host side (1.5.0): `steps + 1` sigmas for a model's sampling; a schedule plugin built
    /// against host-api 1.4 or older schedules discrete models only.
    pub fn run_sampling(&self, sampling: &ModelSampling, steps: usize) -> Result<Vec<f64>> {
        match (self.ffi.sigmas_of(), sampling.is_flow()) {
            (Some(f), _) => from_ffi(f(sampling, steps as u32)).map(RVec::into_vec),
            (None, false) => self.run(&sampling.model_sigmas()?, steps),
            (None, true) => Err(Error(format!(
                "schedule `{}` was built against host-api 1.4 or older, which cannot schedule a flow model; rebuild it against host-api 1.5, or pick another schedule",
                self.name
            ))),
        }
    }
}
