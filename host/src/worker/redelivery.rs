//! A message that may have been handled before: redelivered because its worker died or
//! lost its connection before acking it, or a follow-up published again by such a rerun.
//! Its task may be finished already, so the backend is asked before it runs: a finished
//! task is acked without running again, so its result is written once and nothing it set
//! off is sent twice.
//!
//! This holds because a task's result is stored only after its follow-ups are published
//! (`report.rs`): a stored ready state means the task did everything it had to. A worker
//! dying between publishing and storing leaves follow-ups that a rerun publishes again;
//! those carry [`REPUBLISHED`], so their receiver checks the backend in turn.

use serde_json::Value;

use super::Shared;
use crate::backend::BackendError;
use crate::broker::Delivery;
use crate::protocol::{State, TaskRequest};

/// Header on a message that may be a second copy: a redelivered task, or anything a
/// possibly-repeated run published. Celery ignores headers it does not know.
pub(super) const REPUBLISHED: &str = "celeriac_republished";

/// True if this run may repeat one that already happened; marks `request` so that what it
/// publishes (chain steps, callbacks, retries, chord bodies) is checked by its receiver.
pub(super) fn may_repeat(delivery: &Delivery, request: &mut TaskRequest) -> bool {
    let marked = is_marked(request);
    if delivery.redelivered && !marked {
        request.extra_headers.insert(REPUBLISHED.into(), Value::Bool(true));
    }
    delivery.redelivered || marked
}

/// Give `follow_up` the mark if the run that publishes it may be a repeat.
pub(super) fn inherit(parent: &TaskRequest, follow_up: &mut TaskRequest) {
    if is_marked(parent) {
        follow_up.extra_headers.insert(REPUBLISHED.into(), Value::Bool(true));
    }
}

fn is_marked(request: &TaskRequest) -> bool {
    request.extra_headers.get(REPUBLISHED).and_then(Value::as_bool) == Some(true)
}

/// The ready state (SUCCESS, FAILURE, REVOKED) stored for the task, if any; always none
/// on a backend that keeps no state to ask. An error means the backend cannot be asked,
/// and could not store a result either.
pub(super) async fn finished_state(shared: &Shared, request: &TaskRequest) -> Result<Option<State>, BackendError> {
    if !shared.backend.keeps_state() {
        return Ok(None);
    }
    let stored = shared.backend.get(&request.id).await?;
    Ok(stored.map(|r| r.state).filter(State::is_ready))
}
