//! An idle worker runs a lone task before its bookkeeping.
//!
//! When a message arrives at a worker holding no other, the work it sets off besides the
//! task itself waits:
//!
//! - the next fetch from the broker, until the task's result is stored (or its handler
//!   ends), [`LEAD_AT_MOST`] at most;
//! - on Redis, the `unacked` record of a message BRPOP handed over
//!   ([`crate::broker::DeferredWrites`]), until the result is stored, or until just
//!   before the task's follow-ups are published (they would need a rerun if the worker
//!   died before storing), or until the message is settled, 1 ms at most.
//!
//! On a small machine the threads of an idle worker share one CPU (`placement.rs`), so
//! that bookkeeping otherwise runs first and the task waits for it. Timed inside the
//! worker on Redis (1,000 sequential round trips, medians): the executor thread got the
//! task 45 µs after it was handed over, and the result went out 148 µs after BRPOP
//! answered; with the task first, 95 µs. The result is then mostly stored before the
//! Celery client first looks for it, which skips the client's polling loop.
//!
//! The cost: a second message arriving while a lone task runs is fetched once that task
//! is stored (or 1 ms has passed); and a worker dying while a lone task runs, in its
//! first millisecond, loses the message, as kombu's worker does if it dies between its
//! BRPOP and its HSET (a few hundred µs there).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The longest a lone task holds back the bookkeeping; a long task lets it go by then,
/// as the broker's deferred writes start by then anyway.
pub const LEAD_AT_MOST: Duration = crate::broker::DeferredWrites::AT_MOST;

/// How many times tasks let go of the lead, and a wait for the next.
#[derive(Default)]
pub struct Lead {
    let_go: AtomicU64,
    changed: Notify,
}

impl Lead {
    /// The task at hand needs the lead no more (extra calls do no harm).
    pub fn let_go(&self) {
        self.let_go.fetch_add(1, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// How many times tasks let go so far, to wait for the next with [`Lead::hold`].
    pub fn count(&self) -> u64 {
        self.let_go.load(Ordering::Acquire)
    }

    /// Wait until a task lets go after `seen` was counted, or `at_most`.
    pub async fn hold(&self, seen: u64, at_most: Duration) {
        let next = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                // Registered before the check, so a let-go in between is not missed.
                changed.as_mut().enable();
                if self.count() != seen {
                    return;
                }
                changed.await;
            }
        };
        let _ = tokio::time::timeout(at_most, next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    /// A limit no test reaches: a hold that ends is ended by a let-go.
    const NEVER: Duration = Duration::from_secs(3600);

    async fn ends_by_a_let_go(lead: &Lead, seen: u64) {
        tokio::time::timeout(Duration::from_secs(10), lead.hold(seen, NEVER))
            .await
            .expect("the let-go ends the hold");
    }

    #[tokio::test]
    async fn a_hold_ends_when_the_task_lets_go() {
        let lead = Arc::new(Lead::default());
        let seen = lead.count();
        let task = lead.clone();
        tokio::spawn(async move { task.let_go() });
        ends_by_a_let_go(&lead, seen).await;
        assert_ne!(lead.count(), seen);
    }

    #[tokio::test]
    async fn a_let_go_before_the_hold_counts() {
        let lead = Lead::default();
        let seen = lead.count();
        lead.let_go();
        ends_by_a_let_go(&lead, seen).await;
    }

    #[tokio::test]
    async fn a_hold_nobody_ends_lasts_the_limit() {
        let lead = Lead::default();
        let began = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), lead.hold(lead.count(), LEAD_AT_MOST))
            .await
            .expect("the limit ends the hold");
        assert!(began.elapsed() >= LEAD_AT_MOST);
    }
}
