//! How many messages a broker that pushes them (RabbitMQ) may send ahead of the worker.
//!
//! Pushed messages wait in the worker whether or not a slot is free, so the window is
//! both what keeps short tasks streaming and what a long task can hold hostage. It is
//! kept to the work at hand:
//!
//! - While every running task is young, it covers about [`AHEAD_HORIZON`] of work per
//!   executor, from the average time a guest runs: `math.add` gets the widest
//!   window, tasks of a few milliseconds a few messages each. A larger window drained a
//!   RabbitMQ queue of `math.add` faster, as acks and results batch more (`-c 2`, medians
//!   of alternating drains on one binary: 8.4k tasks/s with 32, 9.4k with 64, 10.4k with
//!   128, 11.2k with 256). It is also kept under about [`AHEAD_BYTES`] of messages.
//! - Once a task is old (see `admission`), the window shrinks to the executors no old
//!   task holds, and messages waiting in the worker go back to the queue for other
//!   workers: fair dispatch on RabbitMQ, where Celery's `-O fair` still lets each worker
//!   hold its whole prefetch.
//!
//! A `--prefetch-multiplier` given by the user fixes the window while tasks are young.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::admission::Gate;
use super::Shared;
use crate::broker::Window;

/// Messages reserved per slot on brokers the worker pulls from until tasks call for more
/// (see [`reservations_fitted`]), and the window on RabbitMQ before the first task has
/// run. Celery's default is 4; measured on a Redis drain of short tasks here, 16 ran
/// 10–12.6k tasks/s against 7.4–7.9k with 4.
pub const DEFAULT_PREFETCH_MULTIPLIER: usize = 16;

/// The widest window per slot, for tasks of a few microseconds. Wider than what the
/// worker admits at once ([`ADMITTED_AHEAD_PER_SLOT`]): the rest waits in the worker as
/// delivered messages, which carries the worker through the pauses RabbitMQ takes in
/// delivering from a queue of tens of thousands of messages.
pub const MAX_AHEAD_PER_SLOT: usize = 512;

/// Messages per slot the worker admits (reserves) at once where the broker sends ahead.
pub const ADMITTED_AHEAD_PER_SLOT: usize = 128;

/// About how much work each executor may have waiting in the worker.
const AHEAD_HORIZON: Duration = Duration::from_millis(50);

/// About how many bytes of messages the worker may hold ahead in all, so that a fitted
/// window of large messages stays small.
const AHEAD_BYTES: u64 = 16 << 20;

/// How often the window is checked against the tasks at hand.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Reservations per slot: the user's multiplier, else [`ADMITTED_AHEAD_PER_SLOT`] where
/// the broker sends ahead (the window bounds what is held there).
pub fn reservations_per_slot(multiplier: Option<usize>, sends_ahead: bool) -> usize {
    match multiplier {
        Some(multiplier) => multiplier.max(1),
        None if sends_ahead => ADMITTED_AHEAD_PER_SLOT,
        None => DEFAULT_PREFETCH_MULTIPLIER,
    }
}

/// The window the broker was last given (for `inspect stats`).
pub struct Current(AtomicUsize);

impl Current {
    pub fn new(size: usize) -> Current {
        Current(AtomicUsize::new(size))
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// A moving average over about the last 8 samples.
#[derive(Default)]
pub struct Average(AtomicU64);

impl Average {
    pub fn record(&self, sample: u64) {
        let sample = sample.max(1);
        let average = self.0.load(Ordering::Relaxed);
        // Two samples recorded at once may lose one: it is an estimate.
        let next = match average {
            0 => sample,
            _ => average.saturating_mul(7).saturating_add(sample) / 8,
        };
        self.0.store(next, Ordering::Relaxed);
    }

    /// `None` before the first sample.
    fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&average| average > 0)
    }
}

/// What the window is fitted to.
#[derive(Default)]
pub struct Load {
    /// How long guests run, in nanoseconds.
    pub task_time: Average,
    /// How large task messages are, in bytes.
    pub message_size: Average,
}

/// The window to start with, before any task has run.
pub fn initial(concurrency: usize, multiplier: Option<usize>) -> usize {
    concurrency * multiplier.unwrap_or(DEFAULT_PREFETCH_MULTIPLIER).max(1)
}

/// Keep the broker's window fitted to the tasks until a warm shutdown starts; then take
/// no more, and hand back the messages waiting, for other workers to run meanwhile.
pub async fn keep(shared: Arc<Shared>) {
    let mut given = Window::Ahead(shared.window.get());
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let stopping = *shared.stopping.borrow();
        let wanted = match stopping {
            true => Window::Fair(0),
            false => wanted(&shared.gate, &shared.load, shared.config.prefetch_multiplier, given),
        };
        if wanted != given {
            match shared.broker.set_window(wanted).await {
                Ok(()) => {
                    tracing::debug!(from = ?given, to = ?wanted, "prefetch window resized");
                    let (Window::Ahead(size) | Window::Fair(size)) = wanted;
                    shared.window.0.store(size, Ordering::Relaxed);
                    given = wanted;
                }
                Err(err) => tracing::warn!(error = %err, window = ?wanted, "cannot resize the prefetch window"),
            }
        }
        if stopping {
            return;
        }
    }
}

/// Keep the reservations per slot fitted to the tasks on a broker the worker pulls from,
/// where the user set no multiplier. A message waits in the worker only while every
/// running task is young, and goes back to the broker if it waits too long (`admission`),
/// so more reservations for short tasks cost no fairness; they let results and acks
/// batch more (Redis drains of `math.add`, `-c 2`, alternating runs of one binary: 18.6k
/// tasks/s with 16 per slot, 23.2k with 64, 24.9k with 128). With short tasks run in place,
/// 256 a slot was no better than 128 (−0.9% a round, 6 rounds of 40,000, 2026-12-07).
pub async fn keep_reservations(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if *shared.stopping.borrow() {
            return;
        }
        let (concurrency, current) = (shared.gate.concurrency(), shared.gate.reservations_per_slot());
        let fitted = reservations_fitted(&shared.load, concurrency, current);
        if fitted != current {
            tracing::debug!(from = current, to = fitted, "reservations per slot resized");
            shared.gate.set_capacity(concurrency * fitted);
        }
    }
}

/// Reservations per slot for the tasks at hand, given the current number: about
/// [`AHEAD_HORIZON`] of work, as the window, but never fewer than the default nor more
/// than a pushing broker gets ([`ADMITTED_AHEAD_PER_SLOT`]).
fn reservations_fitted(load: &Load, concurrency: usize, current: usize) -> usize {
    match fitted_per_slot(load, concurrency) {
        Some(fitted) => settle(
            current,
            fitted.clamp(DEFAULT_PREFETCH_MULTIPLIER, ADMITTED_AHEAD_PER_SLOT),
        ),
        None => current,
    }
}

/// The window the tasks at hand call for, given the current one.
fn wanted(gate: &Gate, load: &Load, multiplier: Option<usize>, given: Window) -> Window {
    let concurrency = gate.concurrency();
    let old = gate.old_tasks();
    if old > 0 {
        return Window::Fair(concurrency.saturating_sub(old));
    }
    let per_slot = match multiplier {
        Some(multiplier) => multiplier.max(1),
        None => fitted_per_slot(load, concurrency).unwrap_or(DEFAULT_PREFETCH_MULTIPLIER),
    };
    let ahead = concurrency * per_slot;
    match given {
        Window::Ahead(size) if multiplier.is_none() => Window::Ahead(settle(size, ahead)),
        _ => Window::Ahead(ahead),
    }
}

/// Messages per slot for about [`AHEAD_HORIZON`] of work within [`AHEAD_BYTES`] in all,
/// from the tasks seen so far; `None` before the first has run.
fn fitted_per_slot(load: &Load, concurrency: usize) -> Option<usize> {
    let nanos = load.task_time.get()?;
    let bytes_per_slot = AHEAD_BYTES / concurrency.max(1) as u64;
    let size = load.message_size.get().unwrap_or(1);
    Some(ahead_per_slot(Duration::from_nanos(nanos), bytes_per_slot / size))
}

/// `fitted`, unless it shrinks `current` by less than fourfold: so an average near a step
/// does not make the size (and RabbitMQ's consumers) flap between two values.
fn settle(current: usize, fitted: usize) -> usize {
    match fitted < current && fitted * 4 > current {
        true => current,
        false => fitted,
    }
}

/// Messages per slot that make about [`AHEAD_HORIZON`] of work for tasks of `task_time`,
/// and no more than `fit_in_memory`, rounded down to a power of two: at least 2 (one
/// running, one next), at most [`MAX_AHEAD_PER_SLOT`].
fn ahead_per_slot(task_time: Duration, fit_in_memory: u64) -> usize {
    let fit = AHEAD_HORIZON.as_nanos() / task_time.as_nanos().max(1);
    let fit = fit.min(fit_in_memory as u128).clamp(1, MAX_AHEAD_PER_SLOT as u128) as usize;
    (1 << fit.ilog2()).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_per_slot_covers_the_horizon_in_powers_of_two() {
        let ample = u64::MAX;
        assert_eq!(ahead_per_slot(Duration::from_micros(30), ample), MAX_AHEAD_PER_SLOT);
        assert_eq!(ahead_per_slot(Duration::from_micros(300), ample), 128); // 166
        assert_eq!(ahead_per_slot(Duration::from_millis(1), ample), 32); // 50
        assert_eq!(ahead_per_slot(Duration::from_millis(5), ample), 8); // 10
        assert_eq!(ahead_per_slot(Duration::from_millis(40), ample), 2); // 1
        assert_eq!(ahead_per_slot(Duration::from_secs(3), ample), 2);
        assert_eq!(
            ahead_per_slot(Duration::from_micros(30), 40),
            32,
            "memory bounds it too"
        );
        assert_eq!(ahead_per_slot(Duration::from_micros(30), 0), 2);
    }

    fn load(task_time: Duration, message_size: u64) -> Load {
        let load = Load::default();
        load.task_time.record(task_time.as_nanos() as u64);
        load.message_size.record(message_size);
        load
    }

    #[test]
    fn the_window_follows_the_tasks_and_shrinks_only_on_a_fourfold_change() {
        let gate = Gate::new(2, 256);
        let ahead = |micros: u64, given| wanted(&gate, &load(Duration::from_micros(micros), 1_000), None, given);
        assert_eq!(ahead(30, Window::Ahead(32)), Window::Ahead(1024));
        assert_eq!(ahead(600, Window::Ahead(256)), Window::Ahead(256)); // 128 is only half
        assert_eq!(ahead(1_000, Window::Ahead(256)), Window::Ahead(64));
        assert_eq!(ahead(1_000, Window::Fair(0)), Window::Ahead(64));
        let large = load(Duration::from_micros(30), 1 << 20);
        assert_eq!(
            wanted(&gate, &large, None, Window::Ahead(256)),
            Window::Ahead(16),
            "16 MiB of 1 MiB messages"
        );
        let fixed = wanted(
            &gate,
            &load(Duration::from_micros(30), 1_000),
            Some(4),
            Window::Ahead(256),
        );
        assert_eq!(fixed, Window::Ahead(8), "a multiplier the user set is kept");
        assert_eq!(
            wanted(&gate, &Load::default(), None, Window::Ahead(8)),
            Window::Ahead(32)
        );
    }

    #[test]
    fn reservations_follow_short_tasks_within_their_bounds() {
        let fitted = |micros: u64, size: u64, current| {
            reservations_fitted(&load(Duration::from_micros(micros), size), 2, current)
        };
        assert_eq!(fitted(30, 1_000, 16), ADMITTED_AHEAD_PER_SLOT);
        assert_eq!(fitted(1_000, 1_000, 16), 32);
        assert_eq!(
            fitted(40_000, 1_000, 16),
            DEFAULT_PREFETCH_MULTIPLIER,
            "never below the default"
        );
        assert_eq!(
            fitted(30, 1 << 20, 128),
            DEFAULT_PREFETCH_MULTIPLIER,
            "8 MiB a slot of 1 MiB messages"
        );
        assert_eq!(fitted(600, 1_000, 128), 128, "64 is only half");
        assert_eq!(fitted(1_000, 1_000, 128), 32);
        assert_eq!(reservations_fitted(&Load::default(), 2, 16), 16, "no task has run yet");
    }

    #[test]
    fn reservations_per_slot_are_the_multiplier_or_what_the_broker_calls_for() {
        assert_eq!(reservations_per_slot(None, true), ADMITTED_AHEAD_PER_SLOT);
        assert_eq!(reservations_per_slot(None, false), DEFAULT_PREFETCH_MULTIPLIER);
        assert_eq!(reservations_per_slot(Some(4), true), 4);
        assert_eq!(reservations_per_slot(Some(0), false), 1);
    }
}
