//! What one task's `Store` holds: its WASI context (only what the manifest grants), the
//! memory limiter, the deadline, and the host functions of `celeriac:task/host`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::UpdateDeadline;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::celeriac::task::{host, types};
use super::limits::{Deadline, MemoryLimiter};

/// Receives `update-state` calls: (task id, state, meta as JSON). One serves every task.
pub type ProgressSink = Arc<dyn Fn(&str, &str, serde_json::Value) + Send + Sync>;

pub struct TaskState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub deadline: Deadline,
    pub task_id: String,
    pub task_name: String,
    pub plugin: String,
    pub progress: Option<ProgressSink>,
    /// Log bytes this task may still write; the rest is dropped (said once).
    pub log_budget: usize,
    /// Largest `update-state` meta accepted, in bytes (the result cap).
    pub max_meta: usize,
    /// The guest logged or reported progress.
    pub effects: bool,
    /// A speculative run's time budget (`inline.rs`): past it, or at the guest's first
    /// effect, the run is abandoned.
    pub budget: Option<Duration>,
    pub abandoned: bool,
}

impl TaskState {
    /// Ready a kept instance's state for the next task.
    pub fn begin_task(&mut self, task_id: &str, task_name: &str, deadline: Deadline, progress: Option<ProgressSink>) {
        self.task_id = task_id.to_owned();
        self.task_name = task_name.to_owned();
        self.deadline = deadline;
        self.progress = progress;
        self.log_budget = LOG_BUDGET;
        self.limiter.hit = false;
        self.effects = false;
        self.budget = None;
        self.abandoned = false;
    }

    /// Called by wasmtime on every epoch tick while the guest runs.
    pub fn on_tick(&mut self) -> UpdateDeadline {
        let update = self.deadline.on_tick();
        // A limit or a cancel reached stands as it is; only then the budget.
        if matches!(update, UpdateDeadline::Continue(_))
            && self
                .budget
                .is_some_and(|budget| self.abandoned || self.deadline.elapsed() >= budget)
        {
            self.abandoned = true;
            return UpdateDeadline::Interrupt;
        }
        update
    }

    /// Whether the guest may do what others would see: not in a speculative run, which
    /// is abandoned instead (and stopped at the next tick).
    fn may_be_heard(&mut self) -> bool {
        self.effects = true;
        self.abandoned = self.budget.is_some();
        !self.abandoned
    }
}

/// Log bytes one task may write in all.
pub const LOG_BUDGET: usize = 1 << 20;
/// Longest log line kept; a longer one is cut.
const MAX_LOG_LINE: usize = 16 << 10;
/// Longest custom state name.
const MAX_STATE_NAME: usize = 64;

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for TaskState {}

impl host::Host for TaskState {
    fn log(&mut self, level: types::LogLevel, message: String) {
        if !self.may_be_heard() {
            return;
        }
        let (id, name, plugin) = (&self.task_id, &self.task_name, &self.plugin);
        if self.log_budget == 0 {
            return;
        }
        let message = truncate(&message, MAX_LOG_LINE.min(self.log_budget));
        self.log_budget -= message.len();
        match level {
            types::LogLevel::Trace => tracing::trace!(task_id = %id, task = %name, plugin = %plugin, "{message}"),
            types::LogLevel::Debug => tracing::debug!(task_id = %id, task = %name, plugin = %plugin, "{message}"),
            types::LogLevel::Info => tracing::info!(task_id = %id, task = %name, plugin = %plugin, "{message}"),
            types::LogLevel::Warn => tracing::warn!(task_id = %id, task = %name, plugin = %plugin, "{message}"),
            types::LogLevel::Error => tracing::error!(task_id = %id, task = %name, plugin = %plugin, "{message}"),
        }
        if self.log_budget == 0 {
            tracing::warn!(task_id = %id, task = %name, plugin = %plugin,
                "the task wrote {LOG_BUDGET} bytes of log: further lines are dropped");
        }
    }

    fn update_state(&mut self, state: String, meta_json: String) {
        if !self.may_be_heard() {
            return;
        }
        if state.is_empty() || state.len() > MAX_STATE_NAME || meta_json.len() > self.max_meta {
            tracing::warn!(task_id = %self.task_id, task = %self.task_name, plugin = %self.plugin,
                state = truncate(&state, MAX_STATE_NAME), meta_bytes = meta_json.len(),
                "ignoring update-state: the state name must be 1 to {MAX_STATE_NAME} bytes and the meta at most {} bytes", self.max_meta);
            return;
        }
        let meta = serde_json::from_str(&meta_json).unwrap_or(serde_json::Value::String(meta_json));
        if let Some(sink) = &self.progress {
            sink(&self.task_id, &state, meta);
        }
    }

    fn soft_time_limit_exceeded(&mut self) -> bool {
        self.deadline.soft_exceeded.load(Ordering::Relaxed)
    }
}
