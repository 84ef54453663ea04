//! Running one task: a fresh instance in a fresh store (made ahead of the task where the
//! thread could, `standby.rs`; or a kept one, where the plugin asks for reuse), the call,
//! and the classification
//! of whatever happened into an [`Outcome`]. Nothing a guest does can panic the host:
//! traps, time limits, memory exhaustion and exits all become task failures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use wasmtime::Store;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{ResourceTable, WasiCtxBuilder};

use super::bindings::{TaskContext, TaskError};
use super::limits::{Deadline, MemoryLimiter};
use super::plugin::PluginVersion;
use super::reuse;
use super::standby;
use super::state::{ProgressSink, TaskState};
use super::{Runtime, RuntimeError};
use crate::protocol::time::seconds;
use crate::protocol::{ExceptionInfo, TaskRequest};

/// Guest output kept per task (the tail is what matters: a panic message, a traceback).
const OUTPUT_CAP: usize = 64 * 1024;
/// How much of the guest's stderr goes into a failure's traceback.
const STDERR_TAIL: usize = 4 * 1024;

/// What to run.
pub struct Invocation {
    pub context: TaskContext,
    pub args_json: String,
    pub kwargs_json: String,
    /// Hard and soft limits; `None` falls back to the plugin's manifest.
    pub time_limit: Option<Duration>,
    pub soft_time_limit: Option<Duration>,
    /// Set from another thread to stop the task at the next tick (revoke --terminate).
    pub cancel: Arc<AtomicBool>,
    pub progress: Option<ProgressSink>,
}

/// What a task used, for events, metrics and extended results.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Wall-clock time from instantiation to return.
    pub wall: Duration,
    /// CPU time of the executor thread since its previous task: this task's instance
    /// (made ahead where the thread could, `standby.rs`), the guest's own work and the
    /// host calls it made. Filled in by the executor thread, which reads its CPU clock
    /// once a task; for a task run inline, its wall time. (Counting Wasm instructions, with
    /// fuel, would slow every task.)
    pub cpu: Duration,
    /// The most linear memory the instance held at once, over all its memories.
    pub peak_memory: usize,
    /// The guest logged or reported progress (such a task does not run inline).
    pub effects: bool,
}

/// What came of it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The JSON text the task returned.
    Success(String),
    Failure {
        exc: ExceptionInfo,
        traceback: Option<String>,
    },
    Retry {
        countdown: Option<f64>,
        max_retries: Option<u32>,
        reason: Option<String>,
    },
    Reject {
        requeue: bool,
    },
    /// Stopped on request (revoke with terminate).
    Terminated,
}

impl Invocation {
    /// The call for a decoded task message, received by `hostname` from `delivery_queue`:
    /// the message's own time limits (none: the manifest's), no cancel, no progress sink.
    pub fn for_task(request: &TaskRequest, hostname: &str, delivery_queue: &str) -> Invocation {
        let limit = |value: Option<f64>| value.filter(|v| *v > 0.0).and_then(seconds);
        Invocation {
            context: TaskContext {
                id: request.id.clone(),
                name: request.name.clone(),
                retries: request.retries,
                root_id: request.root_id.clone(),
                parent_id: request.parent_id.clone(),
                group_id: request.group.clone(),
                hostname: hostname.to_owned(),
                delivery_queue: delivery_queue.to_owned(),
            },
            args_json: serde_json::to_string(&request.args).unwrap_or_else(|_| "[]".into()),
            kwargs_json: serde_json::to_string(&request.kwargs).unwrap_or_else(|_| "{}".into()),
            time_limit: limit(request.time_limit.0),
            soft_time_limit: limit(request.time_limit.1),
            cancel: Arc::new(AtomicBool::new(false)),
            progress: None,
        }
    }
}

impl Outcome {
    fn failure(exc_type: &str, exc_module: &str, message: impl Into<String>, traceback: Option<String>) -> Outcome {
        Outcome::Failure {
            exc: ExceptionInfo::new(exc_type, exc_module, message),
            traceback,
        }
    }
}

impl Runtime {
    /// A store for one call into `plugin`, with its grants, limits and deadline.
    pub(crate) fn new_store(
        &self,
        plugin: &PluginVersion,
        task_id: &str,
        task_name: &str,
        deadline: Deadline,
        progress: Option<ProgressSink>,
    ) -> Result<(Store<TaskState>, MemoryOutputPipe, MemoryOutputPipe), RuntimeError> {
        let stdout = MemoryOutputPipe::new(OUTPUT_CAP);
        let stderr = MemoryOutputPipe::new(OUTPUT_CAP);
        let mut wasi = WasiCtxBuilder::new();
        plugin.manifest.apply_grants(&mut wasi)?;
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        let state = TaskState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(plugin.manifest.memory_bytes()),
            deadline: deadline.clone(),
            task_id: task_id.to_owned(),
            task_name: task_name.to_owned(),
            plugin: plugin.name.clone(),
            progress,
            log_budget: super::state::LOG_BUDGET,
            max_meta: plugin.manifest.max_result_bytes(),
            effects: false,
            budget: None,
            abandoned: false,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(1);
        // Read from the store: a kept instance gets each task's own deadline.
        store.epoch_deadline_callback(|mut store| Ok(store.data_mut().on_tick()));
        Ok((store, stdout, stderr))
    }

    /// Run one task on the calling thread and classify the result.
    pub fn execute(&self, plugin: &PluginVersion, invocation: Invocation) -> Outcome {
        self.execute_measured(plugin, invocation).0
    }

    /// [`Runtime::execute`], and what the task used, but for its CPU time (left zero:
    /// the caller knows what else its thread does).
    pub fn execute_measured(&self, plugin: &PluginVersion, invocation: Invocation) -> (Outcome, Usage) {
        let started = std::time::Instant::now();
        let ran = self.run_guest(plugin, &invocation, None);
        let Ok(GuestRun {
            outcome,
            peak_memory,
            effects,
        }) = ran
        else {
            // Only a run with a budget is ever abandoned.
            let message = "a task run without a budget was abandoned; this is a Celeriac bug";
            return (
                Outcome::failure("WorkerError", "celeriac.exceptions", message, None),
                Usage::default(),
            );
        };
        let usage = Usage {
            wall: started.elapsed(),
            cpu: Duration::ZERO,
            peak_memory,
            effects,
        };
        plugin
            .short_tasks
            .record(&invocation.context.name, &usage, self.inline_below);
        (outcome, usage)
    }

    /// A speculative run on the calling thread (`inline.rs`): `None` if abandoned. Its CPU
    /// time is its wall time: the guest held this thread from start to end.
    pub(crate) fn run_speculative(&self, plugin: &PluginVersion, invocation: &Invocation) -> Option<(Outcome, Usage)> {
        let started = std::time::Instant::now();
        let ran = self.run_guest(plugin, invocation, Some(super::inline::BUDGET));
        let wall = started.elapsed();
        let (ran, usage) = match ran {
            Ok(ran) => {
                let usage = Usage {
                    wall,
                    cpu: wall,
                    peak_memory: ran.peak_memory,
                    effects: ran.effects,
                };
                (Some(ran.outcome), usage)
            }
            Err(Abandoned) => {
                // Not short, whether it ran long or made itself heard.
                let usage = Usage {
                    wall,
                    effects: true,
                    ..Usage::default()
                };
                (None, usage)
            }
        };
        plugin
            .short_tasks
            .record(&invocation.context.name, &usage, self.inline_below);
        ran.map(|outcome| (outcome, usage))
    }

    /// Instantiate `plugin` for this thread's next task of it, unless the plugin keeps its
    /// instances or one is ready already. Called by an executor thread after a task, once
    /// its outcome is on its way. An instance that cannot be made now is left to the task.
    pub fn prepare_standby(&self, plugin: &PluginVersion) {
        if plugin.manifest.reuse_instance || standby::holds(plugin) {
            return;
        }
        // The manifest's hard limit bounds a guest that would never finish instantiating;
        // each task gets its own deadline when it takes the instance.
        let (hard, soft) = plugin.manifest.time_limits();
        let deadline = Deadline::new(hard, soft, Arc::new(AtomicBool::new(false)));
        let Ok((mut store, stdout, stderr)) = self.new_store(plugin, "", "", deadline, None) else {
            return;
        };
        if let Ok(instance) = plugin.pre.instantiate(&mut store) {
            standby::put(
                plugin.load_id,
                reuse::Kept {
                    store,
                    instance,
                    stdout,
                    stderr,
                },
            );
        }
    }

    /// The call itself; with a `budget`, speculative (`inline.rs`).
    fn run_guest(
        &self,
        plugin: &PluginVersion,
        invocation: &Invocation,
        budget: Option<Duration>,
    ) -> Result<GuestRun, Abandoned> {
        let (manifest_hard, manifest_soft) = plugin.manifest.time_limits();
        let hard = invocation.time_limit.or(manifest_hard);
        let soft = invocation.soft_time_limit.or(manifest_soft);
        let deadline = Deadline::new(hard, soft, invocation.cancel.clone());
        let ctx = &invocation.context;
        let reuse = plugin.manifest.reuse_instance;
        // Taken whatever the plugin asks, so a ready instance never outlives its use.
        let ready = standby::take(plugin);
        let kept = if reuse {
            reuse::take(plugin.load_id).or(ready)
        } else {
            ready
        };
        let (mut store, stdout, stderr, instance) = match kept {
            Some(kept) => {
                let mut store = kept.store;
                store
                    .data_mut()
                    .begin_task(&ctx.id, &ctx.name, deadline.clone(), invocation.progress.clone());
                store.data_mut().budget = budget;
                store.set_epoch_deadline(1);
                (store, kept.stdout, kept.stderr, Ok(kept.instance))
            }
            None => match self.new_store(
                plugin,
                &ctx.id,
                &ctx.name,
                deadline.clone(),
                invocation.progress.clone(),
            ) {
                Ok((mut store, stdout, stderr)) => {
                    // From the start: instantiating runs guest code too.
                    store.data_mut().budget = budget;
                    let instance = plugin.pre.instantiate(&mut store);
                    (store, stdout, stderr, instance)
                }
                Err(err) => {
                    let outcome = Outcome::failure("PluginError", "celeriac.exceptions", err.to_string(), None);
                    return Ok(GuestRun {
                        outcome,
                        peak_memory: 0,
                        effects: false,
                    });
                }
            },
        };
        // A kept instance's pipes hold earlier tasks' output too: only this task's counts.
        let (out_from, err_from) = (stdout.contents().len(), stderr.contents().len());
        let (instance, result) = match instance {
            Ok(instance) => {
                let result = instance.celeriac_task_handler().call_run(
                    &mut store,
                    ctx,
                    &invocation.args_json,
                    &invocation.kwargs_json,
                );
                (Some(instance), result)
            }
            Err(err) => (None, Err(err)),
        };
        if store.data().abandoned {
            return Err(Abandoned);
        }
        let out = stdout.contents().slice(out_from..);
        if !out.is_empty() {
            tracing::debug!(task_id = %ctx.id, task = %ctx.name, plugin = %plugin.name,
                stdout = %String::from_utf8_lossy(&out), "guest output");
        }
        if deadline.soft_exceeded.load(Ordering::Relaxed) {
            tracing::warn!(task_id = %ctx.id, task = %ctx.name, plugin = %plugin.name,
                soft_limit = ?soft, "task ran past its soft time limit");
        }
        let max_result = plugin.manifest.max_result_bytes();
        let returned = result.is_ok();
        let outcome = match result {
            Ok(Ok(json)) if json.len() > max_result => Outcome::failure(
                "ResultTooLarge",
                "celeriac.exceptions",
                format!(
                    "the task returned {} bytes of JSON; limits.max_result_mb allows {max_result}",
                    json.len()
                ),
                None,
            ),
            Ok(Ok(json)) => Outcome::Success(json),
            Ok(Err(error)) => from_task_error(error),
            Err(err) => classify_trap(err, &store, &deadline, hard, &stderr.contents()[err_from..]),
        };
        // Output counts as an effect: it is logged, and WASI's streams cannot be written
        // from the I/O thread (`inline.rs`).
        let wrote = stdout.contents().len() > out_from || stderr.contents().len() > err_from;
        let (peak_memory, effects) = (store.data().limiter.peak_bytes(), store.data().effects || wrote);
        // Kept only after a call that returned: a trap may leave the instance broken.
        if let (true, true, Some(instance)) = (reuse, returned, instance) {
            reuse::keep(
                plugin.load_id,
                reuse::Kept {
                    store,
                    instance,
                    stdout,
                    stderr,
                },
            );
        }
        Ok(GuestRun {
            outcome,
            peak_memory,
            effects,
        })
    }
}

struct GuestRun {
    outcome: Outcome,
    peak_memory: usize,
    effects: bool,
}

/// A speculative run given up; the task is to run again.
struct Abandoned;

fn from_task_error(error: TaskError) -> Outcome {
    match error {
        TaskError::Failure(f) => Outcome::Failure {
            exc: ExceptionInfo::new(&f.exc_type, &f.exc_module, f.message),
            traceback: f.traceback,
        },
        TaskError::Retry(r) => Outcome::Retry {
            countdown: r.countdown,
            max_retries: r.max_retries,
            reason: r.reason,
        },
        TaskError::Reject(requeue) => Outcome::Reject { requeue },
    }
}

fn classify_trap(
    err: wasmtime::Error,
    store: &Store<TaskState>,
    deadline: &Deadline,
    hard: Option<Duration>,
    stderr: &[u8],
) -> Outcome {
    let stderr_tail = tail(stderr);
    // `{:#}`: the error chain with the guest's wasm backtrace. Not `{:?}`, which also
    // resolves the host's own backtrace when RUST_BACKTRACE is set: reading this
    // binary's debug info cost ~320 MB of RSS that never came back, and time.
    let traceback = Some(format!("{stderr_tail}\n{err:#}").trim().to_owned());
    if deadline.cancel.load(Ordering::Relaxed) {
        return Outcome::Terminated;
    }
    if deadline.hard_exceeded.load(Ordering::Relaxed) {
        let seconds = hard.map(|h| h.as_secs_f64()).unwrap_or_default();
        return Outcome::Failure {
            exc: ExceptionInfo {
                exc_type: "TimeLimitExceeded".into(),
                exc_module: "billiard.exceptions".into(),
                exc_message: vec![json!(seconds)],
            },
            traceback,
        };
    }
    if store.data().limiter.hit {
        let cap_mb = store.data().limiter.cap_bytes() >> 20;
        return Outcome::failure(
            "MemoryError",
            "builtins",
            format!("task exceeded its memory limit of {cap_mb} MiB"),
            traceback,
        );
    }
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Outcome::failure(
            "SystemExit",
            "builtins",
            format!("guest exited with status {}", exit.0),
            traceback,
        );
    }
    let what = match err.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{err:#}"),
    };
    // The guest's own words (a Rust panic message, a Python traceback) are on stderr.
    let last_line = stderr_tail
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("note:"))
        .unwrap_or("");
    let message = if last_line.is_empty() {
        what
    } else {
        format!("{what}: {last_line}")
    };
    Outcome::failure("WasmTrap", "celeriac.exceptions", message, traceback)
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}
