//! How a result backend keeps count of a chord's header, as Celery does for that store.
//!
//! Redis counts natively: each header task adds its outcome to
//! `celery-taskset-meta-<group>.j` and the one that makes the count reach the size in
//! `.s` runs the body. The other stores rely on Celery's `celery.chord_unlock` task,
//! which polls the header results until all are ready. `rpc://` counts in RabbitMQ
//! (`rpc_chord`), which Celery cannot do at all.

use serde_json::Value;

use crate::protocol::State;

/// How a backend learns that a chord's header is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChordCounting {
    /// The backend counts header outcomes itself (`chord_part_return`).
    Native,
    /// A `celery.chord_unlock` task polls the header results.
    Unlock,
}

/// One header task's outcome.
pub struct ChordPart<'a> {
    pub group_id: &'a str,
    pub task_id: &'a str,
    pub group_index: Option<u64>,
    /// The number of header tasks, when the message carries it (`chord_size` in the
    /// body's options, set on chords Celeriac starts); Redis keeps its own.
    pub size: Option<usize>,
    pub state: State,
    /// The result, or the exception dict of a failure.
    pub result: &'a Value,
}

/// What a header task's outcome did to its chord.
pub enum ChordJoin {
    /// Header tasks are still outstanding (or the body has been run already).
    Pending,
    /// This outcome completed the header, and this worker holds the claim to run the
    /// body; the entries are in header order. Release the claim with `chord_done`.
    Complete { entries: Vec<ChordEntry>, claim: String },
}

/// One header task's stored outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct ChordEntry {
    pub task_id: String,
    pub state: State,
    pub result: Value,
}

impl ChordEntry {
    /// Failures and revocations fail the whole chord, as in Celery (`PROPAGATE_STATES`).
    pub fn fails_the_chord(&self) -> bool {
        matches!(self.state, State::Failure | State::Revoked)
    }
}
