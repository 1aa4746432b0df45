//! Sigma schedules: pure functions from the model's sigma table and a step count to
//! `steps + 1` descending sigmas ending with zero (k-diffusion convention).
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use abi_stable::StableAbi;

use crate::error::{from_ffi, guard, Error, Result};
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

impl ScheduleFfi {
    pub fn of<S: Schedule>() -> ScheduleFfiRef {
        ScheduleFfi {
            name: RStr::from_str(S::NAME),
            aliases: static_strs(S::ALIASES),
            sigmas: sigmas_trampoline::<S>,
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

    /// Host side: `steps + 1` sigmas for `model`.
    pub fn run(&self, model: &ModelSigmas, steps: usize) -> Result<Vec<f64>> {
        from_ffi((self.ffi.sigmas())(
            RSlice::from_slice(model.table()),
            steps as u32,
        ))
        .map(RVec::into_vec)
    }
}
