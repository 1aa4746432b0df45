//! How far the running job is, for `/progress` and the native progress events: the server's
//! [`Observer`] of the engine's run, updated at every sampler step, and its stop flag.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use hiresfix_engine::observer::Observer;

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

/// The server's observer of the running job: what `/progress` and the progress events read,
/// and the flag `/interrupt` and shutdown raise (the sampler stops at its next step).
pub struct JobObserver {
    state: Mutex<State>,
    cancelled: AtomicBool,
}

impl Default for JobObserver {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                progress: Progress::default(),
                started: None,
            }),
            cancelled: AtomicBool::new(false),
        }
    }
}

impl JobObserver {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    /// The running job's progress now.
    pub fn snapshot(&self) -> Progress {
        self.with(|s| {
            let mut p = s.progress.clone();
            p.elapsed = s.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
            p
        })
    }

    /// The job ended (done, failed or cancelled).
    pub fn end_job(&self) {
        self.with(|s| {
            s.progress.active = false;
            s.started = None;
        });
    }

    /// Asks the running job to stop at its next step (`/interrupt`, shutdown).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Lets the next job run (the flag stays raised through a shutdown).
    pub fn clear_cancel(&self) {
        self.cancelled.store(false, Ordering::SeqCst);
    }

    /// Whether the running job was asked to stop.
    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

impl Observer for JobObserver {
    fn job_started(&self, steps: usize, images: usize) {
        self.with(|s| {
            s.progress = Progress {
                job_steps: steps,
                images,
                active: true,
                ..Progress::default()
            };
            s.started = Some(Instant::now());
        });
    }

    fn pass_started(&self, pass: usize, steps: usize, _label: &str) {
        self.with(|s| {
            s.progress.pass = pass;
            s.progress.pass_steps = steps;
            s.progress.pass_step = 0;
        });
    }

    fn step(&self, i: usize) -> bool {
        self.with(|s| {
            let p = &mut s.progress;
            let new = (i + 1).saturating_sub(p.pass_step);
            p.pass_step = i + 1;
            p.done += new;
        });
        !self.cancelled()
    }

    fn stopped(&self) -> bool {
        self.cancelled()
    }
}
