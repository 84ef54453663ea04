//! Per-task settings changed at run time by remote control (`celery control rate_limit`,
//! `celery control time_limit`). They replace the manifest's value on this worker until it
//! stops, as in Celery.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// `(hard, soft)` time limits.
pub type TimeLimits = (Option<Duration>, Option<Duration>);

#[derive(Default)]
pub struct Overrides {
    /// Tasks per second; `None` turns the task's limit off.
    rate_limits: Mutex<HashMap<String, Option<f64>>>,
    /// `(hard, soft)` time limits, used when a message carries none.
    time_limits: Mutex<HashMap<String, TimeLimits>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Overrides {
    pub fn set_rate_limit(&self, task: &str, per_second: Option<f64>) {
        lock(&self.rate_limits).insert(task.to_owned(), per_second);
    }

    /// The rate limit in force for `task`: the override, else the manifest's.
    pub fn rate_limit(&self, task: &str, manifest: Option<f64>) -> Option<f64> {
        lock(&self.rate_limits).get(task).copied().unwrap_or(manifest)
    }

    pub fn set_time_limits(&self, task: &str, hard: Option<Duration>, soft: Option<Duration>) {
        lock(&self.time_limits).insert(task.to_owned(), (hard, soft));
    }

    /// The time limits set for `task` by remote control, if any.
    pub fn time_limits(&self, task: &str) -> Option<TimeLimits> {
        lock(&self.time_limits).get(task).copied()
    }
}
