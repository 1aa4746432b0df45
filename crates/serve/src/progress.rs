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
    /// The latest live preview as PNG, and how many the job has made.
    preview: Option<Vec<u8>>,
    previews: u64,
}

/// A1111's `live_previews_enable` and `show_progress_every_n_steps` (a preview at sampler
/// steps 0, N, 2N, … of each pass, as its `store_latent`; -1 or 0: none while sampling).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PreviewSettings {
    pub enabled: bool,
    pub every: i64,
}

impl Default for PreviewSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            every: 10,
        }
    }
}

/// The server's observer of the running job: what `/progress` and the progress events read,
/// and the flag `/interrupt` and shutdown raise (the sampler stops at its next step).
pub struct JobObserver {
    state: Mutex<State>,
    /// A1111's task id of the running job (`task(txt2img-ABC1234)`), for `current_task`.
    task: Mutex<Option<String>>,
    cancelled: AtomicBool,
    previews: Mutex<PreviewSettings>,
}

impl Default for JobObserver {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                progress: Progress::default(),
                started: None,
                preview: None,
                previews: 0,
            }),
            task: Mutex::new(None),
            cancelled: AtomicBool::new(false),
            previews: Mutex::new(PreviewSettings::default()),
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

    /// The running job's latest live preview (PNG) and how many it has made so far.
    pub fn latest_preview(&self) -> (Option<Vec<u8>>, u64) {
        self.with(|s| (s.preview.clone(), s.previews))
    }

    /// Sets when previews are made (`POST /options`).
    pub fn set_previews(&self, settings: PreviewSettings) {
        *self.previews.lock().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    /// The running job's A1111 task id (set as it starts, cleared as it ends).
    pub fn set_task(&self, task: Option<String>) {
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = task;
    }

    pub fn task(&self) -> Option<String> {
        self.task.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
            s.preview = None;
            s.previews = 0;
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

    /// A1111 answers an interrupted request with the image as far as it got.
    fn keeps_partial(&self) -> bool {
        true
    }

    fn preview_wanted(&self, i: usize) -> bool {
        let settings = *self.previews.lock().unwrap_or_else(|e| e.into_inner());
        settings.enabled && settings.every > 0 && (i as i64) % settings.every == 0
    }

    fn preview(&self, image: &hiresfix_engine::extras::Rgb8) {
        if let Ok(png) = hiresfix_engine::live_preview::png(image) {
            self.with(|s| {
                s.preview = Some(png);
                s.previews += 1;
            });
        }
    }
}

/// A1111's id of a queued job, `task(<kind>-<7 of A-Z0-9>)` as its `create_task_id` makes
/// it, or the request's `force_task_id`.
pub fn task_id(kind: &str, forced: Option<String>) -> String {
    use std::sync::atomic::AtomicU64;
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    if let Some(id) = forced {
        return id;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // Distinct per job (the sequence) and per server start (the clock); not a secret.
    let mut n = nanos
        ^ SEQUENCE
            .fetch_add(1, Ordering::SeqCst)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    const DIGITS: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut id = String::with_capacity(7);
    for _ in 0..7 {
        id.push(DIGITS[(n % 36) as usize] as char);
        n /= 36;
    }
    format!("task({kind}-{id})")
}

#[cfg(test)]
mod tests {
    use super::task_id;

    #[test]
    fn task_ids_have_a1111s_shape_and_differ() {
        let (a, b) = (task_id("txt2img", None), task_id("txt2img", None));
        assert_ne!(a, b);
        let inner = a
            .strip_prefix("task(txt2img-")
            .unwrap()
            .strip_suffix(')')
            .unwrap();
        assert_eq!(inner.len(), 7);
        assert!(
            inner
                .bytes()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()),
            "{a}"
        );
        assert_eq!(task_id("img2img", Some("mine".into())), "mine");
    }
}
