//! How far the running job is, for `hiresfix serve`'s `/progress` and progress events: the
//! run updates it at every sampler step (the terminal's progress bars are separate).
use std::sync::Mutex;
use std::time::Instant;

/// A snapshot of the running job.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Sampler steps of the whole job (every pass of every UNet batch).
    pub job_steps: usize,
    /// Steps done so far.
    pub done: usize,
    /// Images the job makes.
    pub images: usize,
    /// The running pass (1-based) and its step counter.
    pub pass: usize,
    pub pass_steps: usize,
    pub pass_step: usize,
    /// Seconds since the job started.
    pub elapsed: f64,
    pub active: bool,
}

impl Progress {
    /// Fraction of the job's steps done, 0 to 1.
    pub fn fraction(&self) -> f64 {
        match self.job_steps {
            0 => 0.0,
            n => (self.done as f64 / n as f64).min(1.0),
        }
    }

    /// Seconds left at the pace so far (0 before the first step).
    pub fn eta(&self) -> f64 {
        let f = self.fraction();
        match f > 0.0 {
            true => self.elapsed * (1.0 - f) / f,
            false => 0.0,
        }
    }
}

struct State {
    progress: Progress,
    started: Option<Instant>,
}

static STATE: Mutex<State> = Mutex::new(State {
    progress: Progress {
        job_steps: 0,
        done: 0,
        images: 0,
        pass: 0,
        pass_steps: 0,
        pass_step: 0,
        elapsed: 0.0,
        active: false,
    },
    started: None,
});

fn with<T>(f: impl FnOnce(&mut State) -> T) -> T {
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut guard)
}

/// A job of `steps` sampler steps making `images` images starts.
pub fn begin_job(steps: usize, images: usize) {
    with(|s| {
        s.progress = Progress {
            job_steps: steps,
            images,
            active: true,
            ..Progress::default()
        };
        s.started = Some(Instant::now());
    });
}

/// Pass `pass` (of `steps` steps) starts.
pub fn begin_pass(pass: usize, steps: usize) {
    with(|s| {
        s.progress.pass = pass;
        s.progress.pass_steps = steps;
        s.progress.pass_step = 0;
    });
}

/// The sampler finished step `i` (0-based) of the running pass.
pub fn step(i: usize) {
    with(|s| {
        let p = &mut s.progress;
        let new = (i + 1).saturating_sub(p.pass_step);
        p.pass_step = i + 1;
        p.done += new;
    });
}

/// The job ended (done, failed or cancelled).
pub fn end_job() {
    with(|s| {
        s.progress.active = false;
        s.started = None;
    });
}

/// The running job's progress now.
pub fn snapshot() -> Progress {
    with(|s| {
        let mut p = s.progress.clone();
        p.elapsed = s.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        p
    })
}
