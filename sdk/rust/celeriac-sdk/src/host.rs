//! What the host offers a running task: its context, logging, progress and the soft limit.

use std::cell::RefCell;

use crate::bindings::celeriac::task::{host, types};

pub use types::LogLevel;

/// The running task's context: id, name, retries, workflow ids, worker and queue.
pub type Context = types::TaskContext;

thread_local! {
    static CURRENT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

pub(crate) fn set_context(ctx: Context) {
    CURRENT.with(|c| *c.borrow_mut() = Some(ctx));
}

/// The context of the task being run (`None` outside a task).
pub fn context() -> Option<Context> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Write a line to the worker's log, tagged with this task's id and name.
pub fn log(level: LogLevel, message: &str) {
    host::log(level, message);
}

/// Report progress, like Celery's `self.update_state(state="PROGRESS", meta={...})`.
pub fn update_state<T: serde::Serialize>(state: &str, meta: &T) {
    let meta = serde_json::to_string(meta).unwrap_or_else(|_| "null".to_owned());
    host::update_state(state, &meta);
}

/// True once this task has run past its soft time limit; poll it in long loops to stop
/// cleanly before the hard limit.
pub fn soft_time_limit_exceeded() -> bool {
    host::soft_time_limit_exceeded()
}
