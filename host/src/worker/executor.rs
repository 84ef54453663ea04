//! A fixed set of executor threads, one per task slot, that run guests. Guest code blocks
//! its thread until it returns or is interrupted, so it never shares a thread with the
//! broker and backend I/O of the async runtime.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::protocol::ExceptionInfo;
use crate::runtime::{Invocation, Outcome, PluginVersion, Runtime};

struct Job {
    plugin: Arc<PluginVersion>,
    invocation: Invocation,
    reply: oneshot::Sender<Outcome>,
}

pub struct ExecutorPool {
    jobs: crossbeam_channel::Sender<Job>,
}

impl ExecutorPool {
    /// Start `slots` threads running tasks on `runtime`.
    pub fn start(runtime: Arc<Runtime>, slots: usize) -> std::io::Result<ExecutorPool> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        for index in 0..slots {
            let queue = queue.clone();
            let runtime = runtime.clone();
            std::thread::Builder::new()
                .name(format!("celeriac-exec-{index}"))
                .spawn(move || {
                    for job in queue.iter() {
                        let outcome =
                            std::panic::catch_unwind(AssertUnwindSafe(|| runtime.execute(&job.plugin, job.invocation)))
                                .unwrap_or_else(|panic| host_bug(panic.as_ref()));
                        // The waiting side may have gone away (hard shutdown); nothing to do.
                        let _ = job.reply.send(outcome);
                    }
                })?;
        }
        Ok(ExecutorPool { jobs })
    }

    /// Run one task on a free executor thread.
    pub async fn run(&self, plugin: Arc<PluginVersion>, invocation: Invocation) -> Outcome {
        let (reply, outcome) = oneshot::channel();
        if self
            .jobs
            .send(Job {
                plugin,
                invocation,
                reply,
            })
            .is_err()
        {
            return host_failure("the executor threads are gone");
        }
        outcome
            .await
            .unwrap_or_else(|_| host_failure("the executor thread dropped the task"))
    }
}

fn host_bug(panic: &(dyn std::any::Any + Send)) -> Outcome {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    tracing::error!(panic = %text, "host panicked while running a task; this is a Celeriac bug");
    host_failure(&format!("host panicked: {text}"))
}

fn host_failure(message: &str) -> Outcome {
    Outcome::Failure {
        exc: ExceptionInfo::new("WorkerError", "celeriac.exceptions", message),
        traceback: None,
    }
}
