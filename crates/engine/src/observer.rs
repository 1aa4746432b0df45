//! What a run tells its caller as it goes, and how the caller stops it: k-diffusion's
//! `callback` and diffusers' `callback_on_step_end` (a step callback whose answer says go on
//! or stop). The caller passes one in — the command line draws progress bars and records
//! phase timings, the server fills `/progress` and honours `/interrupt` — so the engine keeps
//! no process-wide state of its own.
use std::time::Instant;

/// Every method has a default that reports nothing and never stops.
pub trait Observer: Sync {
    /// A job of `steps` sampler steps (every pass of every UNet batch) making `images`
    /// images starts.
    fn job_started(&self, _steps: usize, _images: usize) {}

    /// Pass `pass` (1-based) of `steps` steps starts; `label` names it for a progress bar
    /// (`pass 2`, or `pass 2 ×4` for four images in one UNet call).
    fn pass_started(&self, _pass: usize, _steps: usize, _label: &str) {}

    /// Step `i` (0-based) of the running pass is done; `false` stops the run (the sampler
    /// returns at its next step and nothing more is written).
    fn step(&self, _i: usize) -> bool {
        true
    }

    /// The running pass's sampling ended (done, failed or stopped).
    fn pass_ended(&self) {}

    /// Whether the caller has asked the run to stop (checked between images and passes, and
    /// to tell a stop from a failure).
    fn stopped(&self) -> bool {
        false
    }

    /// Whether a stopped run still returns its images as far as they got (A1111's
    /// `/interrupt`: the last denoised prediction, decoded, and no later pass); `false` (the
    /// command line's Ctrl-C) ends the run with an error and nothing written.
    fn keeps_partial(&self) -> bool {
        false
    }

    /// Whether a live preview is wanted after step `i` (0-based) of the running pass; when
    /// true the run computes one and calls [`Self::preview`].
    fn preview_wanted(&self, _i: usize) -> bool {
        false
    }

    /// A live preview of the running image ([`crate::live_preview`]: TAESD, or ComfyUI's
    /// latent-to-RGB factors).
    fn preview(&self, _image: &crate::png_pixels::Rgb8) {}

    /// `phase` (`load`, `text encode`, `pass 1`, `upscale`, `vae decode`, `png`) took
    /// `seconds`; a phase may be reported more than once (each image, each pass).
    fn timed(&self, _phase: &str, _seconds: f64) {}
}

/// Reports nothing and never stops (tests, library callers that want neither).
pub struct Silent;

impl Observer for Silent {}

/// The observer of callers that pass none.
pub static SILENT: Silent = Silent;

/// Runs `f`, reporting its wall time to `observer` as `phase`.
pub fn timed<T>(observer: &dyn Observer, phase: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    observer.timed(phase, start.elapsed().as_secs_f64());
    out
}
