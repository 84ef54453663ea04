//! A fixed set of executor threads, one per task slot, that run guests. Guest code blocks
//! its thread until it returns or is interrupted, so it does not share a thread with the
//! broker and backend I/O of the async runtime, except a short task's, which runs in place
//! if it stays short (`runtime/inline.rs`).
//!
//! Jobs wait in one shared queue, so a thread that finishes a task starts the next queued
//! one at once, without a round trip through the async runtime. A job has a latest moment
//! to start: if no thread has taken it up by then (it waits behind long tasks), the caller
//! withdraws it and can return its message to the broker for an idle worker.
//!
//! Outcomes come back through one relay task on the async runtime, not straight to each
//! waiting task. Waking the runtime from another thread writes its eventfd every time;
//! the relay is woken only when it has run out of outcomes, so under load one wake
//! carries many, and the relay hands each on with a same-thread wake, which costs no
//! system call.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::protocol::ExceptionInfo;
use crate::runtime::{Invocation, Outcome, PluginVersion, Runtime, Usage};

/// What came of a task, and what it used.
pub struct Ran {
    pub outcome: Outcome,
    pub usage: Usage,
}

struct Job {
    plugin: Arc<PluginVersion>,
    invocation: Invocation,
    /// Set by whichever comes first: a thread starting the job, or the caller withdrawing it.
    claimed: Arc<AtomicBool>,
    reply: oneshot::Sender<Ran>,
}

/// An outcome on its way to the task that waits for it.
type Finished = (oneshot::Sender<Ran>, Ran);

/// Outcomes the relay takes off its channel at a time.
const RELAY_BATCH: usize = 64;

pub struct ExecutorPool {
    jobs: crossbeam_channel::Sender<Job>,
    queue: crossbeam_channel::Receiver<Job>,
    finished: mpsc::UnboundedSender<Finished>,
    runtime: Arc<Runtime>,
    threads: AtomicUsize,
    /// Threads asked to stop (`pool_shrink`); each leaves before its next job.
    retiring: Arc<AtomicUsize>,
}

impl ExecutorPool {
    /// Start `slots` threads running tasks on `runtime`, and the relay of their outcomes
    /// on the calling async runtime.
    pub fn start(runtime: Arc<Runtime>, slots: usize) -> std::io::Result<ExecutorPool> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let (finished, outcomes) = mpsc::unbounded_channel();
        tokio::spawn(relay(outcomes));
        let pool = ExecutorPool {
            jobs,
            queue,
            finished,
            runtime,
            threads: AtomicUsize::new(0),
            retiring: Arc::new(AtomicUsize::new(0)),
        };
        pool.grow(slots)?;
        Ok(pool)
    }

    /// Start `n` more threads.
    pub fn grow(&self, n: usize) -> std::io::Result<()> {
        for _ in 0..n {
            let index = self.threads.fetch_add(1, Ordering::Relaxed);
            let (queue, jobs, finished) = (self.queue.clone(), self.jobs.clone(), self.finished.clone());
            let (runtime, retiring) = (self.runtime.clone(), self.retiring.clone());
            std::thread::Builder::new()
                .name(format!("celeriac-exec-{index}"))
                .spawn(move || {
                    let mut cpu = crate::cpu_time::Laps::start();
                    for job in queue.iter() {
                        let retire = retiring
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                            .is_ok();
                        if retire {
                            // Another thread runs it; this one leaves.
                            let _ = jobs.send(job);
                            return;
                        }
                        if job.claimed.swap(true, Ordering::AcqRel) {
                            continue; // withdrawn
                        }
                        let run = || runtime.execute_measured(&job.plugin, job.invocation);
                        let (outcome, mut usage) = std::panic::catch_unwind(AssertUnwindSafe(run))
                            .unwrap_or_else(|panic| (host_bug(panic.as_ref()), Usage::default()));
                        // Since the previous task: this one's instance, made ahead below.
                        usage.cpu = cpu.lap();
                        let ran = Ran { outcome, usage };
                        // The relay may be gone (the runtime shut down hard): so is the
                        // waiting side, and there is nothing to do.
                        let _ = finished.send((job.reply, ran));
                        // With nothing queued, the next task of this plugin then finds its
                        // instance ready; a queued job goes first.
                        if queue.is_empty() {
                            let prepare = || runtime.prepare_standby(&job.plugin);
                            if std::panic::catch_unwind(AssertUnwindSafe(prepare)).is_err() {
                                tracing::error!("host panicked while preparing an instance; this is a Celeriac bug");
                            }
                        }
                    }
                })?;
        }
        Ok(())
    }

    /// Stop `n` threads, each after the task it is running.
    pub fn shrink(&self, n: usize) {
        self.retiring.fetch_add(n, Ordering::AcqRel);
    }

    /// Run one task in place if it is short (`runtime/inline.rs`), else on the next free
    /// executor thread; `None` if no thread took it up by `start_by` (the task did not run
    /// and will not).
    pub async fn run(&self, plugin: Arc<PluginVersion>, invocation: Invocation, start_by: Instant) -> Option<Ran> {
        if let Some((outcome, usage)) = self.runtime.run_inline(&plugin, &invocation) {
            return Some(Ran { outcome, usage });
        }
        let (reply, mut outcome) = oneshot::channel();
        let claimed = Arc::new(AtomicBool::new(false));
        let job = Job {
            plugin,
            invocation,
            claimed: claimed.clone(),
            reply,
        };
        if self.jobs.send(job).is_err() {
            return Some(host_failure("the executor threads are gone"));
        }
        let lost = |_| host_failure("the executor thread dropped the task");
        tokio::select! {
            ran = &mut outcome => return Some(ran.unwrap_or_else(lost)),
            _ = tokio::time::sleep_until(start_by.into()) => {}
        }
        if claimed.swap(true, Ordering::AcqRel) {
            Some(outcome.await.unwrap_or_else(lost)) // started just in time
        } else {
            None
        }
    }
}

/// Hand each outcome to the task waiting for it, on this runtime's thread.
async fn relay(mut outcomes: mpsc::UnboundedReceiver<Finished>) {
    let mut batch = Vec::with_capacity(RELAY_BATCH);
    while outcomes.recv_many(&mut batch, RELAY_BATCH).await > 0 {
        for (reply, ran) in batch.drain(..) {
            // The waiting side may have gone away (hard shutdown); nothing to do.
            let _ = reply.send(ran);
        }
    }
}

fn host_bug(panic: &(dyn std::any::Any + Send)) -> Outcome {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    tracing::error!(panic = %text, "host panicked while running a task; this is a Celeriac bug");
    host_failure(&format!("host panicked: {text}")).outcome
}

fn host_failure(message: &str) -> Ran {
    Ran {
        outcome: Outcome::Failure {
            exc: ExceptionInfo::new("WorkerError", "celeriac.exceptions", message),
            traceback: None,
        },
        usage: Usage::default(),
    }
}
