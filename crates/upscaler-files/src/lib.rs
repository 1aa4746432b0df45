//! What an ESRGAN-family model file is, from its keys and shapes alone: [`arch`] infers the
//! architecture (RRDBNet in both key layouts, SRVGGNetCompact), scale and widths; [`probe`]
//! reads only a file's header (a `.safetensors` JSON, or a `.pth`/`.pt` state dict's pickle
//! through `torch-pickle`'s restricted reader) to get those shapes. The pixel plugin runs the
//! models; the host lists them and refuses bad files before a run. Both link this crate, so
//! neither carries the other's code.
pub mod arch;
pub mod probe;
