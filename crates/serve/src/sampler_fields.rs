//! A1111's sampler knobs on a request (`eta`, `s_churn`, `s_tmin`, `s_tmax`, `s_noise`): each
//! becomes the `sampler_options` entry of every pass whose sampler has that option (euler's
//! churn, the ancestral samplers' eta and s_noise, DDIM's eta); one that pass 1's sampler does
//! not have is named in the response's `info.warnings`.
use serde_json::{Map, Value};

use super::error::{cut, ApiError, ApiResult};
use super::txt2img::Fields;
use hiresfix_engine::parameters::knob_key;
use hiresfix_engine::profile::Profile;
use hiresfix_engine::registry::{find, Registry};

/// The request fields, each named as the option it sets.
pub const FIELDS: [&str; 5] = ["eta", "s_churn", "s_tmin", "s_tmax", "s_noise"];

/// Largest magnitude taken for a knob (k-diffusion's useful values are a few units).
const MAX_KNOB: f64 = 1000.0;

/// The sampler options of `sampler` (a registry id or alias); none when it is unknown.
fn options_of(registry: &Registry, sampler: &str) -> Vec<String> {
    find(&registry.samplers, sampler, "sampler")
        .map(|e| e.decl.options.clone())
        .unwrap_or_default()
}

/// The registry id of `sampler` (an id or alias), or itself when unknown.
fn canonical(registry: &Registry, sampler: &str) -> String {
    find(&registry.samplers, sampler, "sampler")
        .map(|e| e.decl.name.to_string())
        .unwrap_or_else(|_| sampler.to_owned())
}

/// The knobs of `f` set on the passes of `profile` whose sampler (a pass without one runs
/// the pass before's) has them, unless the value is that sampler's default; a value that is not a finite number within ±1000 is a 422.
pub fn apply(registry: &Registry, f: &Fields<'_>, profile: &mut Profile) -> ApiResult<()> {
    for field in FIELDS {
        let Some(value) = f.float(field)? else {
            continue;
        };
        if !value.is_finite() || value.abs() > MAX_KNOB {
            return Err(ApiError::field(
                field,
                format!(
                    "{field} = {} is outside -{MAX_KNOB}..={MAX_KNOB}",
                    cut(&value.to_string(), 40)
                ),
            ));
        }
        let mut sampler = hiresfix_engine::defaults::SAMPLER.to_owned();
        for pass in &mut profile.passes {
            if let Some(own) = &pass.sampler {
                sampler = own.clone();
            }
            // A sampler's own default is left unset, so the profile (and the PNG) is the one
            // a request without the field makes.
            let default = knob_key(&canonical(registry, &sampler), field).map(|(_, d)| d);
            if default == Some(value) {
                continue;
            }
            if options_of(registry, &sampler).iter().any(|o| o == field) {
                pass.sampler_options
                    .insert(field.to_owned(), toml::Value::Float(value));
            }
        }
    }
    Ok(())
}

/// Whether `value` asks for nothing of a sampler without the option: A1111's neutral values
/// (eta 0 or 1, the ancestral default; s_noise 1; 0 for the churn knobs, s_tmax 0 = none).
fn neutral(field: &str, value: f64) -> bool {
    value == 0.0 || (value == 1.0 && matches!(field, "eta" | "s_noise"))
}

/// A warning for each knob of `body` that pass 1's sampler has no option for.
pub fn warnings(registry: &Registry, body: &Map<String, Value>, profile: &Profile) -> Vec<String> {
    let f = Fields(body);
    let sampler = profile
        .passes
        .first()
        .and_then(|p| p.sampler.clone())
        .unwrap_or_else(|| hiresfix_engine::defaults::SAMPLER.to_owned());
    let options = options_of(registry, &sampler);
    FIELDS
        .iter()
        .filter_map(|field| {
            let value = f.float(field).ok().flatten()?;
            let ignored = !neutral(field, value) && !options.iter().any(|o| o == field);
            ignored.then(|| {
                format!(
                    "{field} = {} was ignored: sampler `{}` has no {field} option",
                    cut(&value.to_string(), 40),
                    cut(&sampler, 40)
                )
            })
        })
        .collect()
}
