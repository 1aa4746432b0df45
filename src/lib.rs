//! The `hiresfix` command line as a library: one module per command (`commands/`), batches
//! (`batch/`) and grid sheets (`sheet.rs`), over the engine (`hiresfix-engine`, re-exported
//! here so `hiresfix::profile`, `hiresfix::generate`, ... name its modules), the server
//! (`hiresfix-serve`) and the pickle reader (`torch-pickle`). `main.rs` parses and dispatches.
pub mod batch;
pub mod commands;
pub mod preview_file;
pub mod sheet;
pub mod terminal;
pub mod timings;

pub use hiresfix_engine::*;
pub use hiresfix_serve as serve;
pub use torch_pickle as convert;
