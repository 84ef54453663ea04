//! Per-task rate limits on this worker, as Celery's `rate_limit`: tasks of one name start
//! at most `rate` per second, evenly spaced (a bucket of one token, as kombu's). A task
//! waiting for its turn holds its reservation but not a slot, so other tasks run meanwhile.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::time::seconds;

#[derive(Default)]
pub struct RateLimits {
    /// The earliest start of the next task, by task name.
    next_turn: Mutex<HashMap<String, Instant>>,
}

impl RateLimits {
    /// Take the next turn for `task` at `per_second`; how long to wait until it comes.
    pub fn take_turn(&self, task: &str, per_second: f64) -> Duration {
        let interval = seconds(1.0 / per_second).unwrap_or(Duration::ZERO);
        let now = Instant::now();
        let mut next_turn = self.next_turn.lock().unwrap_or_else(|e| e.into_inner());
        let turn = next_turn.get(task).copied().filter(|t| *t > now).unwrap_or(now);
        next_turn.insert(task.to_owned(), turn + interval);
        turn - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_spaced_by_the_rate_per_task() {
        let limits = RateLimits::default();
        assert_eq!(limits.take_turn("a", 10.0), Duration::ZERO);
        let second = limits.take_turn("a", 10.0);
        assert!(
            second > Duration::from_millis(90) && second <= Duration::from_millis(100),
            "{second:?}"
        );
        let third = limits.take_turn("a", 10.0);
        assert!(third > Duration::from_millis(190), "{third:?}");
        assert_eq!(
            limits.take_turn("b", 10.0),
            Duration::ZERO,
            "another task has its own turns"
        );
    }
}
