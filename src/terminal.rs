//! The command line's observer of a run: one progress bar per pass on stderr (hidden with
//! `-q`), each phase's seconds for `HIRESFIX_TIMINGS`, Ctrl-C as the stop, and the live
//! previews of `--preview FILE`.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use hiresfix_engine::observer::Observer;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Raised by the Ctrl-C handler (`main.rs`): the running sampler stops at its next step and
/// nothing more is written.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C was pressed.
pub fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

pub struct Terminal {
    quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
    /// `generate --preview FILE`.
    preview: Option<crate::preview_file::PreviewFile>,
}

impl Terminal {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            bar: Mutex::new(None),
            preview: None,
        }
    }

    /// Live previews written to `preview` as the run goes.
    pub fn with_preview(mut self, preview: Option<crate::preview_file::PreviewFile>) -> Self {
        self.preview = preview;
        self
    }

    fn with_bar(&self, f: impl FnOnce(&mut Option<ProgressBar>)) {
        f(&mut self.bar.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Observer for Terminal {
    fn pass_started(&self, _pass: usize, steps: usize, label: &str) {
        let target = match self.quiet {
            true => ProgressDrawTarget::hidden(),
            false => ProgressDrawTarget::stderr(),
        };
        let bar = ProgressBar::with_draw_target(Some(steps as u64), target);
        let style =
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.to_owned());
        self.with_bar(|slot| *slot = Some(bar));
    }

    fn step(&self, i: usize) -> bool {
        self.with_bar(|slot| {
            if let Some(bar) = slot {
                bar.set_position(i as u64 + 1);
            }
        });
        !stopped()
    }

    fn pass_ended(&self) {
        self.with_bar(|slot| {
            if let Some(bar) = slot.take() {
                bar.finish();
            }
        });
    }

    fn stopped(&self) -> bool {
        stopped()
    }

    fn preview_wanted(&self, i: usize) -> bool {
        self.preview.as_ref().is_some_and(|p| p.wanted(i))
    }

    fn preview(&self, image: &hiresfix_engine::png_pixels::Rgb8) {
        if let Some(p) = &self.preview {
            p.write(image);
        }
    }

    fn timed(&self, phase: &str, seconds: f64) {
        crate::timings::add(phase, seconds);
    }
}
