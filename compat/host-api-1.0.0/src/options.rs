//! Per-sampler knobs from the profile (`sampler_options = { eta = 1.0 }`).
use abi_stable::std_types::RString;
use abi_stable::StableAbi;

use crate::error::{Error, Result};

#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub enum OptionValue {
    Number(f64),
    Text(RString),
    Flag(bool),
}

#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct OptionEntry {
    pub key: RString,
    pub value: OptionValue,
}

/// Read access to the options a plugin received; a missing key yields the default.
#[derive(Clone, Copy)]
pub struct Options<'a>(pub &'a [OptionEntry]);

impl<'a> Options<'a> {
    fn get(&self, key: &str) -> Option<&'a OptionValue> {
        self.0
            .iter()
            .find(|e| e.key.as_str() == key)
            .map(|e| &e.value)
    }

    pub fn number(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(OptionValue::Number(v)) => Ok(*v),
            Some(other) => Err(Error(format!(
                "option `{key}` must be a number, got {other:?}"
            ))),
        }
    }

    pub fn text(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(OptionValue::Text(v)) => Ok(v.as_str()),
            Some(other) => Err(Error(format!(
                "option `{key}` must be a string, got {other:?}"
            ))),
        }
    }

    pub fn flag(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(OptionValue::Flag(v)) => Ok(*v),
            Some(other) => Err(Error(format!(
                "option `{key}` must be true or false, got {other:?}"
            ))),
        }
    }
}
