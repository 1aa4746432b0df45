//! Where T5 runs: the profile's `[model] t5` (the `t5` load option). `"device"` (the default):
//! on the run's device like every other part; `"cpu"`: loaded and run on the CPU in the run's
//! dtype, its output moved to the run's device — T5-XXL's 4.8 billion parameters then stay off
//! the GPU (ComfyUI and Forge offer the same to keep text encoders in system memory).
use anyhow::{bail, Result};
use host_api::{OptionEntry, OptionValue};
use tch::Device;

/// The load option (and `[model]` key) naming T5's device.
pub const PLACEMENT_KEY: &str = "t5";

/// Where the T5 encoder's weights live and it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum T5Placement {
    /// The run's device.
    #[default]
    Device,
    /// The CPU, whatever the run's device.
    Cpu,
}

impl T5Placement {
    /// `"cpu"` or `"device"`; anything else names the key and both values.
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "device" => Ok(Self::Device),
            "cpu" => Ok(Self::Cpu),
            other => bail!(
                "`[model] {PLACEMENT_KEY} = \"{other}\"`: expected \"cpu\" (T5 on the CPU, its \
                 output moved to the run's device) or \"device\" (the run's device, the default)"
            ),
        }
    }

    /// The `t5` entry of load or memory-request options (the default without one).
    pub fn from_options(options: &[OptionEntry]) -> Result<Self> {
        match options.iter().find(|e| e.key.as_str() == PLACEMENT_KEY) {
            None => Ok(Self::default()),
            Some(e) => match &e.value {
                OptionValue::Text(t) => Self::parse(t.as_str()),
                other => bail!(
                    "`[model] {PLACEMENT_KEY}` must be text (\"cpu\" or \"device\"), got {other:?}"
                ),
            },
        }
    }

    /// T5's device for a run on `run`.
    pub fn device(self, run: Device) -> Device {
        match self {
            Self::Device => run,
            Self::Cpu => Device::Cpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_device_parse_and_anything_else_names_key_and_values() {
        assert_eq!(T5Placement::parse("cpu").unwrap(), T5Placement::Cpu);
        assert_eq!(T5Placement::parse("device").unwrap(), T5Placement::Device);
        assert_eq!(T5Placement::Cpu.device(Device::Cuda(0)), Device::Cpu);
        assert_eq!(T5Placement::Device.device(Device::Cuda(0)), Device::Cuda(0));
        let message = T5Placement::parse("gpu").unwrap_err().to_string();
        assert_eq!(
            message,
            "`[model] t5 = \"gpu\"`: expected \"cpu\" (T5 on the CPU, its output moved to the \
             run's device) or \"device\" (the run's device, the default)"
        );
    }
}
