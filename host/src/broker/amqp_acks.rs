//! Which acks to send on one AMQP channel, so that a batch of finished tasks costs one
//! `basic.ack multiple=true` frame instead of one frame each.
//!
//! Delivery tags on a channel are consecutive from 1. The ledger keeps a watermark below
//! which every delivery is settled (acked or rejected). When finished tasks extend that
//! contiguous run, one multiple ack covers the run; a finished task beyond a gap (a
//! lower tag still running) is acked on its own, so a long task never holds back the
//! acks, and so the prefetch window, of the short ones after it.
//!
//! A multiple ack only ever names a tag the server still counts as unacked: RabbitMQ
//! refuses a tag it does not know.

use std::collections::BTreeMap;

/// The acks for one batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AckPlan {
    /// `basic.ack(tag, multiple = true)`: everything up to and including this tag.
    pub up_to: Option<u64>,
    /// Single acks for finished deliveries beyond the first unsettled tag.
    pub singles: Vec<u64>,
}

#[derive(Debug, Default)]
pub struct AckLedger {
    /// Every tag up to here is settled.
    watermark: u64,
    /// Settled tags above the watermark, and whether the server already knows.
    settled: BTreeMap<u64, bool>,
}

impl AckLedger {
    /// Plan the acks for these finished deliveries.
    pub fn plan(&mut self, finished: impl IntoIterator<Item = u64>) -> AckPlan {
        for tag in finished {
            if tag > self.watermark {
                self.settled.entry(tag).or_insert(false);
            }
        }
        let mut plan = AckPlan::default();
        while let Some(told) = self.settled.remove(&(self.watermark + 1)) {
            self.watermark += 1;
            if !told {
                plan.up_to = Some(self.watermark);
            }
        }
        for (tag, told) in self.settled.iter_mut().filter(|(_, told)| !**told) {
            *told = true;
            plan.singles.push(*tag);
        }
        plan
    }

    /// A delivery was rejected: the server knows, and it no longer holds the watermark back.
    pub fn rejected(&mut self, tag: u64) {
        if tag > self.watermark {
            self.settled.insert(tag, true);
            while self.settled.get(&(self.watermark + 1)) == Some(&true) {
                self.settled.remove(&(self.watermark + 1));
                self.watermark += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(up_to: Option<u64>, singles: &[u64]) -> AckPlan {
        AckPlan {
            up_to,
            singles: singles.to_vec(),
        }
    }

    #[test]
    fn a_contiguous_batch_is_one_multiple_ack() {
        let mut ledger = AckLedger::default();
        assert_eq!(ledger.plan([3, 1, 2]), plan(Some(3), &[]));
        assert_eq!(ledger.plan([4, 5]), plan(Some(5), &[]));
    }

    #[test]
    fn a_running_task_does_not_hold_back_later_acks() {
        let mut ledger = AckLedger::default();
        // 2 is still running: 1 goes as a run, 3 and 4 alone.
        assert_eq!(ledger.plan([1, 3, 4]), plan(Some(1), &[3, 4]));
        // 2 finishes: the run reaches 4, but 3 and 4 were acked already, so the
        // multiple ack names 2, which the server still holds.
        assert_eq!(ledger.plan([2]), plan(Some(2), &[]));
        assert_eq!(ledger.plan([5]), plan(Some(5), &[]));
    }

    #[test]
    fn rejected_tags_are_never_named_but_let_the_run_pass() {
        let mut ledger = AckLedger::default();
        ledger.rejected(1);
        assert_eq!(ledger.plan([2, 3]), plan(Some(3), &[]));
        ledger.rejected(5);
        assert_eq!(ledger.plan([6]), plan(None, &[6]));
        assert_eq!(ledger.plan([4]), plan(Some(4), &[]));
        assert_eq!(ledger.plan([7]), plan(Some(7), &[]));
    }

    #[test]
    fn a_repeated_tag_is_acked_once() {
        let mut ledger = AckLedger::default();
        assert_eq!(ledger.plan([1]), plan(Some(1), &[]));
        assert_eq!(ledger.plan([1]), plan(None, &[]));
        assert_eq!(ledger.plan([3]), plan(None, &[3]));
        assert_eq!(ledger.plan([3]), plan(None, &[]));
    }
}
