//! What one task's `Store` holds: its WASI context (only what the manifest grants), the
//! memory limiter, the deadline, and the host functions of `celeriac:task/host`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::celeriac::task::{host, types};
use super::limits::{Deadline, MemoryLimiter};

/// Receives `update-state` calls: (state, meta as JSON).
pub type ProgressSink = Arc<dyn Fn(&str, serde_json::Value) + Send + Sync>;

pub struct TaskState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub deadline: Deadline,
    pub task_id: String,
    pub task_name: String,
    pub plugin: String,
    pub progress: Option<ProgressSink>,
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
        let (id, name, plugin) = (&self.task_id, &self.task_name, &self.plugin);
        match level {
            types::LogLevel::Trace => tracing::trace!(task_id = %id, task = %name, plugin = %plugin, "{message}"),
            types::LogLevel::Debug => tracing::debug!(task_id = %id, task = %name, plugin = %plugin, "{message}"),
            types::LogLevel::Info => tracing::info!(task_id = %id, task = %name, plugin = %plugin, "{message}"),
            types::LogLevel::Warn => tracing::warn!(task_id = %id, task = %name, plugin = %plugin, "{message}"),
            types::LogLevel::Error => tracing::error!(task_id = %id, task = %name, plugin = %plugin, "{message}"),
        }
    }

    fn update_state(&mut self, state: String, meta_json: String) {
        let meta = serde_json::from_str(&meta_json).unwrap_or(serde_json::Value::String(meta_json));
        if let Some(sink) = &self.progress {
            sink(&state, meta);
        }
    }

    fn soft_time_limit_exceeded(&mut self) -> bool {
        self.deadline.soft_exceeded.load(Ordering::Relaxed)
    }
}
