//! Per-task limits: a memory cap summed over all of a component's memories, and the
//! epoch deadline that enforces the hard time limit, notes the soft one, and stops a
//! terminated task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;

/// Caps the total linear memory of one task's instance and remembers if it was hit, so
/// the failure is reported as `MemoryError` however the guest reacts to a failed grow.
pub struct MemoryLimiter {
    cap: usize,
    used: usize,
    /// The most the instance held at once.
    peak: usize,
    pub hit: bool,
}

impl MemoryLimiter {
    pub fn new(cap_bytes: usize) -> MemoryLimiter {
        MemoryLimiter {
            cap: cap_bytes,
            used: 0,
            peak: 0,
            hit: false,
        }
    }

    pub fn cap_bytes(&self) -> usize {
        self.cap
    }

    pub fn peak_bytes(&self) -> usize {
        self.peak
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let next = self.used.saturating_sub(current).saturating_add(desired);
        if next > self.cap {
            self.hit = true;
            return Ok(false);
        }
        self.used = next;
        self.peak = self.peak.max(next);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        // Interpreted guests (Python, JS) link a dozen core instances; cap bytes, not counts.
        256
    }

    fn memories(&self) -> usize {
        256
    }

    fn tables(&self) -> usize {
        256
    }
}

/// Time limits and cancellation for one task, checked on every epoch tick.
#[derive(Clone)]
pub struct Deadline {
    started: Instant,
    hard: Option<Duration>,
    soft: Option<Duration>,
    pub soft_exceeded: Arc<AtomicBool>,
    pub hard_exceeded: Arc<AtomicBool>,
    pub cancel: Arc<AtomicBool>,
}

impl Deadline {
    pub fn new(hard: Option<Duration>, soft: Option<Duration>, cancel: Arc<AtomicBool>) -> Deadline {
        Deadline {
            started: Instant::now(),
            hard,
            soft,
            soft_exceeded: Arc::new(AtomicBool::new(false)),
            hard_exceeded: Arc::new(AtomicBool::new(false)),
            cancel,
        }
    }

    /// Time since the task started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// What the task's limits and cancel say at an epoch tick.
    pub fn on_tick(&self) -> UpdateDeadline {
        if self.cancel.load(Ordering::Relaxed) {
            return UpdateDeadline::Interrupt;
        }
        let elapsed = self.started.elapsed();
        if self.hard.is_some_and(|hard| elapsed >= hard) {
            self.hard_exceeded.store(true, Ordering::Relaxed);
            return UpdateDeadline::Interrupt;
        }
        if self.soft.is_some_and(|soft| elapsed >= soft) {
            self.soft_exceeded.store(true, Ordering::Relaxed);
        }
        UpdateDeadline::Continue(1)
    }
}
