//! The worker's Lamport clock, as Celery keeps one: stamped on every event and control
//! reply, and moved past any clock seen in a request, so monitors can order what they
//! receive from several workers.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct LamportClock(AtomicU64);

impl LamportClock {
    /// Advance for an event of our own; returns the new time.
    pub fn forward(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Move past a time seen in another process's message.
    pub fn adjust(&self, other: u64) -> u64 {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let next = current.max(other) + 1;
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => current = seen,
            }
        }
    }

    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjusting_moves_past_the_larger_time() {
        let clock = LamportClock::default();
        assert_eq!(clock.forward(), 1);
        assert_eq!(clock.adjust(10), 11);
        assert_eq!(clock.adjust(3), 12);
        assert_eq!(clock.now(), 12);
    }
}
