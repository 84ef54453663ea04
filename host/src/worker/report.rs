//! Turning an outcome into published follow-ups, stored state and a broker
//! acknowledgement, in that order: a message is acked only once its result is stored, and
//! the result is stored only once everything the task set off is published.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::canvas::{self, FollowUp, Step, Steps};
use super::Shared;
use super::{chord, events, fault, redelivery};
use crate::backend::ResultBackend;
use crate::broker::Delivery;
use crate::protocol::result::{Extended, ReplyTo};
use crate::protocol::time::from_now;
use crate::protocol::{ExceptionInfo, State, TaskRequest, TaskResult};
use crate::runtime::{Outcome, PluginVersion, ProgressSink, Usage};
use crate::telemetry::TaskSpan;

/// Celery's `default_retry_delay`.
const DEFAULT_RETRY_DELAY: f64 = 180.0;
/// Celery's default `max_retries`.
const DEFAULT_MAX_RETRIES: u32 = 3;
/// Attempts to store a result before the message is handed back to the broker.
const STORE_ATTEMPTS: u32 = 4;

pub(super) enum Settle {
    Ack,
    Reject { requeue: bool },
}

/// Ack or reject; a failure here is logged (the broker will redeliver an unacked message).
pub(super) async fn settle(shared: &Shared, delivery: &Delivery, settle: Settle) {
    let result = match settle {
        Settle::Ack => shared.broker.ack(delivery).await,
        Settle::Reject { requeue } => shared.broker.reject(delivery, requeue).await,
    };
    if let Err(err) = result {
        tracing::error!(queue = %delivery.queue, error = %err, "cannot acknowledge message; it will be delivered again");
    }
}

/// Add the fields Celery adds around a stored state.
pub(super) fn annotate(shared: &Shared, request: &TaskRequest, result: &mut TaskResult) {
    result.parent_id = request.parent_id.clone();
    result.group_id = request.group.clone();
    result.reply_to = request.reply_to.clone().filter(|q| !q.is_empty()).map(|queue| ReplyTo {
        queue,
        correlation_id: request.correlation_id.clone(),
    });
    if shared.config.result_extended {
        result.extended = Some(Box::new(Extended {
            name: request.name.clone(),
            args: request.args.clone(),
            kwargs: request.kwargs.clone(),
            worker: shared.config.hostname.clone(),
            retries: request.retries,
            queue: request.queue().to_owned(),
            usage: None,
        }));
    }
}

/// Store `result` (with bounded retries), then settle the message. If the backend stays
/// unreachable the message is requeued, not acked: the task will run again rather than
/// lose its result.
pub(super) async fn store_then_settle(
    shared: &Shared,
    delivery: &Delivery,
    request: &TaskRequest,
    result: TaskResult,
    after: Settle,
) {
    store_publish_then_settle(
        shared,
        delivery,
        request,
        result,
        Vec::new(),
        Some(after),
        Usage::default(),
    )
    .await;
}

/// Count the task in its chord, publish what it sets off (chain, callbacks, a chord's
/// body), store its result, then settle. A failure at any step requeues the message: the
/// task runs again (its chord counts it once) rather than lose its result or the rest of
/// its workflow.
async fn store_publish_then_settle(
    shared: &Shared,
    delivery: &Delivery,
    request: &TaskRequest,
    result: TaskResult,
    follow_ups: Steps,
    after: Option<Settle>,
    usage: Usage,
) {
    shared.status.metrics.finished(&request.name, result.state.as_str());
    events::task_outcome(&shared.events, &result, usage);
    // The message's deferred record (Redis) goes out before the follow-ups and chord
    // counts that would need a rerun if this worker died before storing the result, and
    // on the connection that then publishes the follow-ups; a lone result goes first.
    if !follow_ups.is_empty() || request.embed.chord.is_some() {
        delivery.release_deferred_writes();
    }
    let done = publish_then_store(shared, request, result, follow_ups).await;
    delivery.release_deferred_writes();
    shared.lead.let_go();
    match (done, after) {
        (true, Some(after)) => {
            fault::check(fault::Point::BeforeAck, &request.name);
            settle(shared, delivery, after).await
        }
        (false, Some(_)) => settle(shared, delivery, Settle::Reject { requeue: true }).await,
        (true, None) => {}
        (false, None) => tracing::error!(task_id = %request.id, task = %request.name,
            "the task was acked as it started (acks_late = false): its result or follow-ups are lost"),
    }
}

/// The result is stored last, so that a stored ready state means the task is finished:
/// a redelivered copy that finds it is acked without running or publishing again
/// (`redelivery.rs`).
async fn publish_then_store(shared: &Shared, request: &TaskRequest, result: TaskResult, follow_ups: Steps) -> bool {
    let completion = match request.embed.chord {
        Some(_) => match Box::pin(chord::part_returned(
            shared,
            request,
            result.state.clone(),
            &result.result,
        ))
        .await
        {
            Ok(completion) => completion,
            Err(err) => {
                tracing::error!(task_id = %request.id, group_id = ?request.group, error = %err,
                    "cannot count the task in its chord; returning the message to the queue");
                return false;
            }
        },
        None => None,
    };
    if !follow_ups.is_empty() && !Box::pin(publish(shared, request, follow_ups)).await {
        if let Some((completion, _)) = &completion {
            Box::pin(chord::release(shared, completion, false)).await;
        }
        return false;
    }
    if let Some((completion, body)) = completion {
        let sent = Box::pin(publish(shared, request, body)).await;
        Box::pin(chord::release(shared, &completion, sent)).await;
        if !sent {
            return false;
        }
    }
    fault::check(fault::Point::BeforeStore, &request.name);
    store(shared, request, result).await
}

/// Store with bounded retries; false if the backend stayed unreachable.
async fn store(shared: &Shared, request: &TaskRequest, result: TaskResult) -> bool {
    if request.ignore_result && result.state == State::Success {
        return true;
    }
    let mut delay = Duration::from_millis(250);
    for attempt in 1..=STORE_ATTEMPTS {
        let Err(err) = shared.results.submit(result.clone()).await else {
            return true;
        };
        shared.status.metrics.store_error();
        if attempt == STORE_ATTEMPTS {
            tracing::error!(task_id = %request.id, error = %err,
                "cannot store result; returning the message to the queue");
            break;
        }
        tracing::warn!(task_id = %request.id, error = %err, attempt, "cannot store result; retrying");
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    false
}

/// Publish a task's follow-ups; false if the broker refused one (the message is then
/// requeued). A signature that cannot be sent is logged and skipped: running the task
/// again would not mend it.
pub(super) async fn publish(shared: &Shared, request: &TaskRequest, follow_ups: Steps) -> bool {
    for follow_up in follow_ups {
        match follow_up {
            Ok(Step::Publish(mut follow_up)) => {
                redelivery::inherit(request, &mut follow_up.request);
                let next = follow_up.request.name.clone();
                if let Err(err) = send(shared, follow_up).await {
                    tracing::error!(task_id = %request.id, next = %next, error = %err,
                        "cannot publish the next step; returning the message to the queue");
                    return false;
                }
            }
            Ok(Step::StartChord(start)) => {
                if let Err(err) = chord::start(shared, &start).await {
                    tracing::error!(task_id = %request.id, group_id = %start.group_id, error = %err,
                        "cannot start a chord; returning the message to the queue");
                    return false;
                }
            }
            Err(err) => {
                tracing::error!(task_id = %request.id, task = %request.name, error = %err, "cannot send a follow-up task");
            }
        }
    }
    true
}

/// Publish a task this worker sends, to the queue its signature names, else to the
/// queue its plugin's manifest gives the task, else to Celery's default queue.
pub(super) async fn send(shared: &Shared, follow_up: FollowUp) -> Result<(), crate::broker::BrokerError> {
    let FollowUp { queue, mut request } = follow_up;
    let queue = queue
        .or_else(|| {
            let plugin = shared.runtime.registry.lookup(&request.name)?;
            plugin.manifest.tasks.get(&request.name)?.queue.clone()
        })
        .unwrap_or_else(|| canvas::DEFAULT_QUEUE.to_owned());
    request.origin = Some(shared.config.hostname.clone());
    request.delivery_info = crate::protocol::DeliveryInfo {
        exchange: String::new(),
        routing_key: queue.clone(),
    };
    shared.broker.publish(&queue, &request.encode()).await
}

/// Report what came of running a task, then settle its message as `settle` says (`None`:
/// it was acked as it started).
pub(super) async fn outcome(
    shared: &Shared,
    delivery: &Delivery,
    request: &TaskRequest,
    plugin: &PluginVersion,
    outcome: Outcome,
    usage: Usage,
    settle_with: Option<Settle>,
) {
    let (id, name) = (request.id.as_str(), request.name.as_str());
    let options = plugin.manifest.tasks.get(name);
    let failed = |exc: &ExceptionInfo, traceback: Option<String>| failed(request, &plugin.name, exc, traceback);
    let secs = usage.wall.as_secs_f64();
    let (mut result, after) = match outcome {
        Outcome::Success(json) => match serde_json::from_str::<Value>(&json) {
            Ok(value) => {
                tracing::info!(task_id = %id, task = %name, plugin = %plugin.name, runtime = secs,
                    "Task {name}[{id}] succeeded in {secs:.6}s: {}", crate::protocol::repr::repr(&value));
                (TaskResult::new(id, State::Success, value), Settle::Ack)
            }
            Err(err) => failed(
                &ExceptionInfo::new(
                    "EncodeError",
                    "kombu.exceptions",
                    format!("task returned invalid JSON: {err}"),
                ),
                None,
            ),
        },
        Outcome::Failure { exc, traceback } => match options.filter(|o| o.autoretries(&exc.exc_type)) {
            // Celery's autoretry_for: a retry while retries remain, then the failure itself.
            Some(options) if request.retries < options.max_retries.unwrap_or(DEFAULT_MAX_RETRIES) => {
                let countdown = options.retry_countdown(request.retries, jitter());
                let reason = Some(format!("Retry in {countdown}s: {}", exc.repr()));
                match Box::pin(retry(
                    shared,
                    request,
                    &plugin.name,
                    Some(countdown),
                    options.max_retries,
                    reason,
                ))
                .await
                {
                    Ok(result) => (result, Settle::Ack),
                    Err(failure) => failure,
                }
            }
            _ => failed(&exc, traceback),
        },
        Outcome::Retry {
            countdown,
            max_retries,
            reason,
        } => match Box::pin(retry(shared, request, &plugin.name, countdown, max_retries, reason)).await {
            Ok(result) => (result, Settle::Ack),
            Err(failure) => failure,
        },
        Outcome::Reject { requeue } => {
            tracing::warn!(task_id = %id, task = %name, plugin = %plugin.name, requeue,
                "Task {name}[{id}] rejected by the task");
            shared.status.metrics.finished(name, "REJECTED");
            shared.events.task("task-rejected", id, || {
                let mut fields = serde_json::Map::new();
                fields.insert("requeue".into(), Value::Bool(requeue));
                fields
            });
            if settle_with.is_some() {
                settle(shared, delivery, Settle::Reject { requeue }).await;
            }
            return;
        }
        Outcome::Terminated if shared.abandoning.load(std::sync::atomic::Ordering::Relaxed) => {
            tracing::warn!(task_id = %id, task = %name, plugin = %plugin.name,
                "Task {name}[{id}] stopped by the shutdown; returning it to the queue");
            if settle_with.is_some() {
                settle(shared, delivery, Settle::Reject { requeue: true }).await;
            }
            return;
        }
        Outcome::Terminated => {
            tracing::warn!(task_id = %id, task = %name, plugin = %plugin.name, "Task {name}[{id}] terminated");
            let exc = ExceptionInfo::new("TaskRevokedError", "celery.exceptions", "terminated");
            (TaskResult::new(id, State::Revoked, exc.to_value()), Settle::Ack)
        }
    };
    annotate(shared, request, &mut result);
    let follow_ups = match result.state {
        State::Success => canvas::after_success(request, &result.result),
        State::Failure => canvas::after_failure(request),
        _ => Vec::new(),
    };
    if let Some(extended) = result.extended.as_mut() {
        extended.usage = Some(serde_json::json!({
            "runtime": usage.wall.as_secs_f64(),
            "cpu_time": usage.cpu.as_secs_f64(),
            "peak_memory": usage.peak_memory,
        }));
    }
    if let Some(telemetry) = &shared.telemetry {
        telemetry.task(&TaskSpan {
            task_id: id,
            root_id: &request.root_id,
            parent_id: request.parent_id.as_deref(),
            name,
            plugin: &plugin.name,
            hostname: &shared.config.hostname,
            queue: &delivery.queue,
            retries: request.retries,
            state: result.state.as_str(),
            error: result
                .exception()
                .filter(|_| result.state == State::Failure)
                .map(|e| e.repr()),
            wall: usage.wall,
            cpu: usage.cpu,
            peak_memory: usage.peak_memory,
        });
    }
    let after = settle_with.map(|_| after);
    store_publish_then_settle(shared, delivery, request, result, follow_ups, after, usage).await;
}

/// A number in [0, 1) for retry jitter (a random UUID is random enough for spacing retries).
fn jitter() -> f64 {
    // The low 53 bits of a v4 UUID are all random (its version and variant bits sit higher).
    (uuid::Uuid::new_v4().as_u128() & ((1 << 53) - 1)) as f64 / (1u64 << 53) as f64
}

fn failed(request: &TaskRequest, plugin: &str, exc: &ExceptionInfo, traceback: Option<String>) -> (TaskResult, Settle) {
    let (id, name) = (request.id.as_str(), request.name.as_str());
    tracing::error!(task_id = %id, task = %name, plugin, "Task {name}[{id}] raised unexpected: {}", exc.repr());
    // Celery acks failed tasks too (task_acks_on_failure_or_timeout).
    (TaskResult::failure(id, exc, traceback), Settle::Ack)
}

/// Republish the task with `retries + 1` and an ETA, as Celery's `Task.retry` does; past
/// `max_retries`, fail with `MaxRetriesExceededError`.
async fn retry(
    shared: &Shared,
    request: &TaskRequest,
    plugin: &str,
    countdown: Option<f64>,
    max_retries: Option<u32>,
    reason: Option<String>,
) -> Result<TaskResult, (TaskResult, Settle)> {
    let (id, name) = (request.id.as_str(), request.name.as_str());
    let max_retries = max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
    if request.retries >= max_retries {
        let exc = ExceptionInfo::new(
            "MaxRetriesExceededError",
            "celery.exceptions",
            format!(
                "Can't retry {name}[{id}] args:{:?} kwargs:{:?}",
                request.args, request.kwargs
            ),
        );
        return Err(failed(request, plugin, &exc, None));
    }
    let countdown = countdown
        .filter(|c| c.is_finite() && *c >= 0.0)
        .unwrap_or(DEFAULT_RETRY_DELAY);
    let mut next = request.clone();
    next.retries += 1;
    next.eta = from_now(countdown);
    if next.parent_id.is_none() {
        next.parent_id = Some(request.id.clone());
    }
    next.origin = Some(shared.config.hostname.clone());
    if let Err(err) = shared.broker.publish(request.queue(), &next.encode()).await {
        let exc = ExceptionInfo::new(
            "RetryError",
            "celeriac.exceptions",
            format!("cannot republish for retry: {err}"),
        );
        return Err(failed(request, plugin, &exc, None));
    }
    let message = reason.unwrap_or_else(|| format!("Retry in {countdown}s"));
    tracing::info!(task_id = %id, task = %name, plugin, "Task {name}[{id}] retry: {message}");
    let exc = ExceptionInfo::new("Retry", "celery.exceptions", message);
    let mut result = TaskResult::new(id, State::Retry, exc.to_value());
    result.children = vec![serde_json::json!([[id, null], null])];
    Ok(result)
}

/// `update-state` from a guest: stored at once, like Celery's `self.update_state`. It
/// runs on an executor thread, so it may block on the async backend. One for all tasks:
/// made per task, it cost two allocations a task that hardly any task uses.
pub(super) fn progress_sink(backend: Arc<dyn ResultBackend>) -> ProgressSink {
    let handle = tokio::runtime::Handle::current();
    Arc::new(move |task_id: &str, state: &str, meta: Value| {
        let result = TaskResult::new(task_id, State::parse(state), meta);
        if let Err(err) = handle.block_on(backend.store(&result)) {
            tracing::warn!(task_id = %task_id, error = %err, "cannot store task progress");
        }
    })
}
