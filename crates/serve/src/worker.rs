//! The generation thread: one job at a time on the device, from a bounded queue. It owns the
//! model cache (checkpoints stay loaded between requests; LoRAs are set per pass, so every
//! request starts from the checkpoint's own weights) and answers each job once.
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use hiresfix_engine::errors::one_line;
use hiresfix_engine::generate::{generate_in_memory, Models, Rendered};
use hiresfix_engine::profile::Profile;
use hiresfix_engine::registry::Registry;

use crate::progress::JobObserver;

/// One generation request.
pub struct Work {
    pub profile: Profile,
    /// Told when the job leaves the queue and starts.
    pub started: Option<oneshot::Sender<()>>,
    pub reply: oneshot::Sender<Outcome>,
    /// A1111's task id (`/progress`'s `current_task`), for a generation.
    pub task: Option<String>,
    /// Work other than a generation that needs the device or the model cache (an extras
    /// upscale, unloading the models): run instead of `profile`.
    pub chore: Option<Chore>,
}

/// A [`Work::chore`]: runs on the generation thread with its model cache.
pub type Chore = Box<dyn FnOnce(&mut Models<'_>) -> Outcome + Send>;

/// How a job ended.
pub enum Outcome {
    Done(Vec<Rendered>),
    /// `/interrupt` (or shutdown) stopped it; the images finished before are kept.
    Interrupted(Vec<Rendered>),
    /// The request could not run (a missing LoRA, a bad profile value): a client error.
    Refused(String),
    /// It failed while running (out of memory, NaN, a plugin's error).
    Failed(String),
    /// The server is shutting down; the job never started.
    ShuttingDown,
}

/// The queue's sending end, shared by the request handlers.
pub struct Queue {
    tx: std::sync::Mutex<Option<SyncSender<Work>>>,
    /// Jobs waiting (not counting the running one).
    pub waiting: Arc<AtomicUsize>,
    pub running: Arc<AtomicBool>,
    pub capacity: usize,
    shutting_down: Arc<AtomicBool>,
    /// Held while the running job changes, so an interrupt reaches the job that was running
    /// when it was asked, and a shutdown is never missed by a starting job.
    switch: Arc<std::sync::Mutex<()>>,
    /// The running job's progress and stop flag (the engine's observer).
    pub observer: Arc<JobObserver>,
}

/// Why a job was not queued.
pub enum Rejected {
    Full,
    ShuttingDown,
}

impl Queue {
    /// Queues `work`, or says why not (never blocks).
    pub fn submit(&self, work: Work) -> Result<(), Rejected> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Rejected::ShuttingDown);
        }
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Err(Rejected::ShuttingDown);
        };
        self.waiting.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(work) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => Rejected::Full,
                    TrySendError::Disconnected(_) => Rejected::ShuttingDown,
                })
            }
        }
    }

    /// Jobs running or waiting.
    pub fn jobs(&self) -> usize {
        self.waiting.load(Ordering::SeqCst) + usize::from(self.running.load(Ordering::SeqCst))
    }

    /// Stops the running job at its next step (A1111's `/interrupt`); false when none runs.
    pub fn interrupt(&self) -> bool {
        let _switch = self.switch.lock().unwrap_or_else(|e| e.into_inner());
        let running = self.running.load(Ordering::SeqCst);
        if running {
            self.observer.cancel();
        }
        running
    }

    /// Shutdown: nothing new is queued, the running job is cancelled, waiting ones are
    /// answered `ShuttingDown`; the thread ends when the queue is empty.
    pub fn shut_down(&self) {
        let switch = self.switch.lock().unwrap_or_else(|e| e.into_inner());
        self.shutting_down.store(true, Ordering::SeqCst);
        self.observer.cancel();
        drop(switch);
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Starts the generation thread with a queue of `capacity` waiting jobs; checkpoints beyond
/// the `keep` most recent are unloaded between jobs.
pub fn start(
    registry: &'static Registry,
    base_dir: PathBuf,
    capacity: usize,
    keep: usize,
    quiet: bool,
) -> std::io::Result<(Queue, JoinHandle<()>)> {
    let (tx, rx) = sync_channel::<Work>(capacity);
    let queue = Queue {
        tx: std::sync::Mutex::new(Some(tx)),
        waiting: Arc::new(AtomicUsize::new(0)),
        running: Arc::new(AtomicBool::new(false)),
        capacity,
        shutting_down: Arc::new(AtomicBool::new(false)),
        switch: Arc::new(std::sync::Mutex::new(())),
        observer: Arc::new(JobObserver::default()),
    };
    let flags = Flags {
        waiting: queue.waiting.clone(),
        running: queue.running.clone(),
        shutting_down: queue.shutting_down.clone(),
        switch: queue.switch.clone(),
        observer: queue.observer.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("hiresfix-generate".into())
        .spawn(move || serve_jobs(registry, base_dir, rx, flags, keep, quiet))?;
    Ok((queue, handle))
}

struct Flags {
    waiting: Arc<AtomicUsize>,
    running: Arc<AtomicBool>,
    shutting_down: Arc<AtomicBool>,
    switch: Arc<std::sync::Mutex<()>>,
    observer: Arc<JobObserver>,
}

impl Flags {
    /// Marks the next job running unless the server is shutting down (then false).
    fn start_job(&self) -> bool {
        let _switch = self.switch.lock().unwrap_or_else(|e| e.into_inner());
        if self.shutting_down.load(Ordering::SeqCst) {
            return false;
        }
        self.observer.clear_cancel();
        self.running.store(true, Ordering::SeqCst);
        true
    }

    fn end_job(&self) {
        let _switch = self.switch.lock().unwrap_or_else(|e| e.into_inner());
        self.running.store(false, Ordering::SeqCst);
        if !self.shutting_down.load(Ordering::SeqCst) {
            self.observer.clear_cancel();
        }
    }
}

fn serve_jobs(
    registry: &'static Registry,
    base_dir: PathBuf,
    rx: Receiver<Work>,
    flags: Flags,
    keep: usize,
    quiet: bool,
) {
    let observer = flags.observer.clone();
    let mut models = Models::observed(registry, observer.as_ref());
    for work in rx {
        flags.waiting.fetch_sub(1, Ordering::SeqCst);
        if work.reply.is_closed() {
            continue; // its client gave up waiting: nobody would get the images
        }
        if !flags.start_job() {
            let _ = work.reply.send(Outcome::ShuttingDown);
            continue;
        }
        observer.set_task(work.task.clone());
        if let Some(started) = work.started {
            let _ = started.send(());
        }
        if let Some(chore) = work.chore {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| chore(&mut models)))
                .unwrap_or_else(|_| Outcome::Failed("the generation thread panicked; the job was dropped and the server goes on".into()));
            observer.end_job();
            observer.set_task(None);
            flags.end_job();
            let _ = work.reply.send(outcome);
            continue;
        }
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            generate_in_memory(work.profile, registry, &base_dir, &mut models, quiet)
        }));
        observer.end_job();
        observer.set_task(None);
        let outcome = match run {
            Ok(Ok(images)) if observer.cancelled() => Outcome::Interrupted(images),
            Ok(Ok(images)) => Outcome::Done(images),
            Ok(Err(e)) if observer.cancelled() => Outcome::Interrupted(e.images),
            Ok(Err(e)) if e.before_sampling && !is_server_side(&e.error) => {
                Outcome::Refused(one_line(&e.error))
            }
            Ok(Err(e)) if is_over_a_limit(&e.error) => Outcome::Refused(one_line(&e.error)),
            Ok(Err(e)) => Outcome::Failed(one_line(&e.error)),
            Err(_) => {
                // A bug in the host: the cache may be half-updated, so it starts afresh.
                models = Models::observed(registry, observer.as_ref());
                Outcome::Failed(
                    "the generation thread panicked; the job was dropped and the server goes on"
                        .into(),
                )
            }
        };
        models.trim(keep);
        flags.end_job();
        let _ = work.reply.send(outcome);
    }
}

/// A failure while running that is the request's: a limit it passed, found only when its
/// prompt was encoded (the limits' messages say "(at most N)"), e.g. 64 chunks of 75 tokens.
fn is_over_a_limit(e: &anyhow::Error) -> bool {
    one_line(e).contains("(at most ") && !is_server_side(e)
}

/// A failure before sampling that is the server's, not the request's: memory, the device,
/// a checkpoint that cannot be read any more.
fn is_server_side(e: &anyhow::Error) -> bool {
    let text = one_line(e).to_lowercase();
    ["out of memory", "cuda", "cannot read", "panicked"]
        .iter()
        .any(|k| text.contains(k))
}
