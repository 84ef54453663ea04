//! Chords on the worker side: counting a header task's outcome, running the body once
//! the header is complete, and Celery's `celery.chord_unlock` task for backends that do
//! not count (the database backends), which this worker runs itself without a plugin.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::canvas::{self, ChordStart, FollowUp, Steps};
use super::report::{self, Settle};
use super::{redelivery, Shared};
use crate::backend::chord::{ChordCounting, ChordEntry, ChordJoin, ChordPart};
use crate::backend::BackendError;
use crate::broker::Delivery;
use crate::protocol::result::ReplyTo;
use crate::protocol::time::from_now;
use crate::protocol::{ExceptionInfo, State, TaskRequest, TaskResult};

/// The built-in task that polls a chord's header results.
pub const CHORD_UNLOCK: &str = "celery.chord_unlock";
/// Celery's `result_chord_retry_interval`: seconds between two polls.
const UNLOCK_INTERVAL: f64 = 1.0;

/// A completed chord whose body this worker sends, then releases.
pub(super) struct Completion {
    pub group_id: String,
    pub claim: String,
}

/// After a chord header task's outcome is stored: count it. If it completed the chord,
/// the body's steps (or, when a header task failed, the body's failure is stored and its
/// error callbacks are returned).
pub(super) async fn part_returned(
    shared: &Shared,
    request: &TaskRequest,
    state: State,
    result: &Value,
) -> Result<Option<(Completion, Steps)>, BackendError> {
    let (Some(group_id), Some(body)) = (&request.group, &request.embed.chord) else {
        return Ok(None);
    };
    if shared.backend.chord_counting() != ChordCounting::Native || !state.is_ready() {
        return Ok(None);
    }
    let part = ChordPart {
        group_id,
        task_id: &request.id,
        group_index: request.group_index,
        size: body["options"]["chord_size"].as_u64().map(|n| n as usize),
        state,
        result,
    };
    let ChordJoin::Complete { entries, claim } = shared.backend.chord_part_return(&part).await? else {
        return Ok(None);
    };
    let steps = match run_body(shared, request, body, entries).await {
        Ok(steps) => steps,
        Err(err) => {
            // Free the claim so the header task's redelivery can complete the chord.
            let _ = shared.backend.release_chord(group_id, &claim, false).await;
            return Err(err);
        }
    };
    let completion = Completion {
        group_id: group_id.clone(),
        claim,
    };
    Ok(Some((completion, steps)))
}

/// The body with the header's results, or, if a header task failed, the body's failure
/// stored (as Celery's `ChordError`) and its error callbacks.
async fn run_body(
    shared: &Shared,
    last: &TaskRequest,
    body: &Value,
    entries: Vec<ChordEntry>,
) -> Result<Steps, BackendError> {
    let Some(failed) = entries.iter().find(|e| e.fails_the_chord()) else {
        let results = entries.into_iter().map(|e| e.result).collect();
        return Ok(canvas::chord_body(last, body, results));
    };
    let cause = ExceptionInfo::from_value(&failed.result)
        .map_or_else(|| crate::protocol::repr::repr(&failed.result), |e| e.repr());
    let exc = ExceptionInfo::new(
        "ChordError",
        "celery.exceptions",
        format!("Dependency {} raised {cause}", failed.task_id),
    );
    tracing::error!(task_id = %last.id, group_id = ?last.group,
        "Chord {:?} failed: {}", last.group.as_deref().unwrap_or(""), exc.repr());
    fail_body(shared, last, body, &exc).await
}

/// Store the body's failure (where its caller waits for it) and return its error callbacks.
async fn fail_body(
    shared: &Shared,
    last: &TaskRequest,
    body: &Value,
    exc: &ExceptionInfo,
) -> Result<Steps, BackendError> {
    let (body_id, errbacks) = canvas::failed_body(last, body);
    if let Some(body_id) = body_id {
        let mut result = TaskResult::failure(&body_id, exc, None);
        result.parent_id = Some(last.id.clone());
        result.reply_to = body["options"]["reply_to"].as_str().map(|queue| ReplyTo {
            queue: queue.to_owned(),
            correlation_id: body_id.clone(),
        });
        shared.backend.store(&result).await?;
    }
    Ok(errbacks)
}

/// Once the body is sent (or could not be): end the chord, or free it for another try.
pub(super) async fn release(shared: &Shared, completion: &Completion, body_sent: bool) {
    if let Err(err) = shared
        .backend
        .release_chord(&completion.group_id, &completion.claim, body_sent)
        .await
    {
        // The claim expires by itself; the chord's keys expire with `result_expires`.
        tracing::warn!(group_id = %completion.group_id, error = %err, "cannot release the chord's claim");
    }
}

/// Before a chord's header tasks are sent: register it with the backend, or send the
/// `celery.chord_unlock` task that will poll its results.
pub(super) async fn start(shared: &Shared, start: &ChordStart) -> Result<(), String> {
    match shared.backend.chord_counting() {
        ChordCounting::Native => shared
            .backend
            .start_chord(&start.group_id, start.header.len())
            .await
            .map_err(|e| e.to_string()),
        ChordCounting::Unlock => report::send(shared, unlock_request(start))
            .await
            .map_err(|e| e.to_string()),
    }
}

/// Celery's `celery.chord_unlock` message for a chord: `[group_id, body]` and the header
/// results as `[[id, null], null]` tuples, first run a second from now, in the body's queue.
fn unlock_request(start: &ChordStart) -> FollowUp {
    let results: Vec<Value> = start.header.iter().map(|id| json!([[id, null], null])).collect();
    let mut kwargs = Map::new();
    kwargs.insert("interval".into(), json!(UNLOCK_INTERVAL));
    kwargs.insert("max_retries".into(), Value::Null);
    kwargs.insert("result".into(), Value::Array(results));
    let mut request = TaskRequest::new(CHORD_UNLOCK, vec![json!(start.group_id), start.body.clone()], kwargs);
    request.root_id = start.parent.root_id.clone();
    request.parent_id = Some(start.parent.id.clone());
    request.ignore_result = true;
    request.eta = from_now(UNLOCK_INTERVAL);
    redelivery::inherit(&start.parent, &mut request);
    let queue = start.body["options"]["queue"].as_str().map(str::to_owned);
    FollowUp { queue, request }
}

/// Run `celery.chord_unlock`: if every header task is ready, send the body (or store
/// its failure); if not, publish this task again to look once more after `interval`.
pub(super) async fn unlock(shared: &Arc<Shared>, delivery: &Delivery, request: &TaskRequest) {
    let settle = match unlock_step(shared, request).await {
        Ok(()) => Settle::Ack,
        Err(UnlockError::Malformed(reason)) => {
            tracing::error!(task_id = %request.id, "rejecting malformed {CHORD_UNLOCK}: {reason}");
            Settle::Reject { requeue: false }
        }
        Err(UnlockError::Unavailable(reason)) => {
            tracing::warn!(task_id = %request.id, "{CHORD_UNLOCK} cannot proceed now; returning it to the queue: {reason}");
            Settle::Reject { requeue: true }
        }
    };
    report::settle(shared, delivery, settle).await;
}

enum UnlockError {
    Malformed(String),
    Unavailable(String),
}

async fn unlock_step(shared: &Shared, request: &TaskRequest) -> Result<(), UnlockError> {
    let (group_id, body) = match request.args.as_slice() {
        [Value::String(group_id), body @ Value::Object(_), ..] => (group_id, body),
        _ => return Err(UnlockError::Malformed("args must be [group_id, body signature]".into())),
    };
    let header = header_ids(request.kwargs.get("result"))
        .ok_or_else(|| UnlockError::Malformed("kwargs.result must be a list of result tuples".into()))?;
    let unavailable = |e: BackendError| UnlockError::Unavailable(e.to_string());
    let mut entries = Vec::with_capacity(header.len());
    for task_id in header {
        match shared.backend.get(&task_id).await.map_err(unavailable)? {
            Some(result) if result.state.is_ready() => entries.push(ChordEntry {
                task_id,
                state: result.state,
                result: result.result,
            }),
            _ => return poll_again(shared, request, group_id, body).await,
        }
    }
    tracing::info!(task_id = %request.id, group_id = %group_id, "Chord {group_id} is complete; sending its body");
    let steps = run_body(shared, request, body, entries).await.map_err(unavailable)?;
    if report::publish(shared, request, steps).await {
        Ok(())
    } else {
        Err(UnlockError::Unavailable("cannot publish the chord's body".into()))
    }
}

/// The header results' task ids from `[[id, parent], children]` tuples.
fn header_ids(results: Option<&Value>) -> Option<Vec<String>> {
    results?
        .as_array()?
        .iter()
        .map(|tuple| tuple.get(0)?.get(0)?.as_str().map(str::to_owned))
        .collect()
}

/// Not complete yet: the same task again in `interval` seconds, unless its `max_retries`
/// are spent, which fails the chord.
async fn poll_again(shared: &Shared, request: &TaskRequest, group_id: &str, body: &Value) -> Result<(), UnlockError> {
    let max_retries = request.kwargs.get("max_retries").and_then(Value::as_u64);
    if max_retries.is_some_and(|max| u64::from(request.retries) >= max) {
        let exc = ExceptionInfo::new(
            "ChordError",
            "celery.exceptions",
            format!("GroupResult {group_id} is not ready after {} polls", request.retries),
        );
        let errbacks = fail_body(shared, request, body, &exc)
            .await
            .map_err(|e| UnlockError::Unavailable(e.to_string()))?;
        report::publish(shared, request, errbacks).await;
        return Ok(());
    }
    let interval = request
        .kwargs
        .get("interval")
        .and_then(Value::as_f64)
        .filter(|i| i.is_finite() && *i >= 0.0)
        .unwrap_or(UNLOCK_INTERVAL);
    let mut again = request.clone();
    again.retries += 1;
    again.eta = from_now(interval);
    again.origin = Some(shared.config.hostname.clone());
    shared
        .broker
        .publish(request.queue(), &again.encode())
        .await
        .map_err(|e| UnlockError::Unavailable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_ids_come_from_celery_result_tuples() {
        let tuples = json!([[["a", null], null], [["b", null], null]]);
        assert_eq!(header_ids(Some(&tuples)), Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(header_ids(Some(&json!([["a"]]))), None);
        assert_eq!(header_ids(None), None);
    }

    #[test]
    fn the_unlock_message_is_celerys() {
        let start = ChordStart {
            group_id: "g".into(),
            header: vec!["h0".into(), "h1".into()],
            body: json!({"task": "math.tsum", "options": {"task_id": "b", "queue": "sums"}}),
            parent: TaskRequest::new("math.add", vec![], Map::new()),
        };
        let unlock = unlock_request(&start);
        assert_eq!(unlock.queue.as_deref(), Some("sums"));
        assert_eq!(unlock.request.name, CHORD_UNLOCK);
        assert_eq!(unlock.request.args, vec![json!("g"), start.body.clone()]);
        assert_eq!(
            unlock.request.kwargs["result"],
            json!([[["h0", null], null], [["h1", null], null]])
        );
        assert!(unlock.request.eta.is_some());
    }
}
