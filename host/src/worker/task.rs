//! One delivery's way through the worker: decode, check, wait for its ETA and a free slot,
//! execute, report.
//!
//! Rare paths are awaited boxed (`Box::pin`), here and in `report.rs`: an `async fn` holds
//! the largest future it awaits inline, and every task allocates and copies its handler
//! whole, so one rare path (a revoked task's store, a retry, a chord's body) made every
//! task pay for it. The handler went from 10.6 KB to 5.6 KB.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Map;

use super::Shared;
use super::{admission, chord, events, redelivery, report};
use crate::broker::Delivery;
use crate::protocol::{ExceptionInfo, State, TaskRequest, TaskResult};
use crate::runtime::{Invocation, PluginVersion};

/// How long a redelivered message waits before going back to the queue when the result
/// backend cannot be reached (so an outage does not spin the worker).
const BACKEND_DOWN_PAUSE: Duration = Duration::from_secs(1);

/// A delivery decoded and announced ("received"), on its way to its handler.
pub(super) struct Received {
    /// Shared with the tracker, which shows it to `inspect` while the task is held.
    request: Arc<TaskRequest>,
    /// It may have run before (see `redelivery`).
    may_repeat: bool,
    plugin: Option<Arc<PluginVersion>>,
    arrived: Instant,
}

/// Decode a delivery and announce it; `None` if it is malformed (logged here, rejected by
/// its handler). The worker loop calls this before it spawns the handler, so that tasks
/// are received in the order the broker gave them: a multi-thread runtime (`--io-threads`)
/// does not start spawned handlers in order.
pub(super) fn receive(shared: &Shared, delivery: &Delivery) -> Option<Received> {
    shared.load.message_size.record(delivery.message.body.len() as u64);
    let mut request = match TaskRequest::decode(&delivery.message) {
        Ok(request) => request,
        Err(err) => {
            let id = delivery
                .message
                .headers
                .get("id")
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            tracing::error!(queue = %delivery.queue, task_id = %id, error = %err, "rejecting malformed message");
            return None;
        }
    };
    let may_repeat = redelivery::may_repeat(delivery, &mut request);
    let (id, name) = (request.id.as_str(), request.name.as_str());
    let plugin = shared.runtime.registry.lookup(name);
    let plugin_name = plugin.as_ref().map_or("", |p| p.name.as_str());
    tracing::info!(task_id = %id, task = %name, plugin = plugin_name, "Task {name}[{id}] received");
    shared
        .events
        .task("task-received", id, || events::received_fields(&request));
    Some(Received {
        request: Arc::new(request),
        may_repeat,
        plugin,
        arrived: Instant::now(),
    })
}

/// Whether a received task goes straight for a slot: it has a plugin to run (the built-in
/// chord unlock only does I/O), no ETA to wait for and no earlier run to look up first, so
/// a place in the queue for slots may be taken for it now.
pub(super) fn wants_slot_at_once(received: &Received) -> bool {
    received.plugin.is_some() && !received.may_repeat && received.request.eta.is_none()
}

/// `slot` is the free slot the message was admitted with, or its place in the queue for
/// one, if it has either.
pub(super) async fn handle(
    shared: &Arc<Shared>,
    delivery: Delivery,
    received: Option<Received>,
    mut slot: Option<admission::Slot>,
) {
    let Some(Received {
        request,
        may_repeat,
        plugin,
        arrived,
    }) = received
    else {
        report::settle(shared, &delivery, report::Settle::Reject { requeue: false }).await;
        return;
    };
    let tracked = shared.tracker.hold(&delivery, &request);
    let (id, name) = (request.id.as_str(), request.name.as_str());
    let plugin_name = plugin.as_ref().map_or("", |p| p.name.as_str());

    if may_repeat && Box::pin(skip_if_finished(shared, &delivery, &request, plugin_name)).await {
        return;
    }
    if discard_if_revoked(shared, &delivery, &request, plugin_name).await
        || discard_if_expired(shared, &delivery, &request, plugin_name).await
    {
        return;
    }

    // Celery's own chord-polling task needs no plugin.
    let builtin = name == chord::CHORD_UNLOCK;
    if plugin.is_none() && !builtin {
        tracing::error!(task_id = %id, task = %name,
            "Received unregistered task of type {name:?}. The message has been ignored and discarded.");
        let exc = ExceptionInfo::new("NotRegistered", "celery.exceptions", name);
        let mut result = TaskResult::failure(id, &exc, None);
        report::annotate(shared, &request, &mut result);
        Box::pin(report::store_then_settle(
            shared,
            &delivery,
            &request,
            result,
            report::Settle::Reject { requeue: false },
        ))
        .await;
        return;
    }

    if let Some(eta) = request.eta {
        let wait = (eta - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        if shared.config.park_eta_after.is_some_and(|after| wait > after)
            && Box::pin(park(shared, &delivery, &request, eta)).await
        {
            return;
        }
        if !wait.is_zero() {
            // Waiting for the ETA does not occupy a slot.
            slot = None;
            tracked.scheduled(eta);
            if !wait_or_stop(shared, wait).await {
                report::settle(shared, &delivery, report::Settle::Reject { requeue: true }).await;
                return;
            }
            tracked.reserved();
        }
        // Checked again once the ETA is reached, as Celery does before running a task.
        if discard_if_expired(shared, &delivery, &request, plugin_name).await {
            return;
        }
    }

    let Some(plugin) = plugin.as_ref() else {
        // No plugin past the check above: the built-in task, which only does I/O.
        Box::pin(chord::unlock(shared, &delivery, &request)).await;
        return;
    };

    if let Some(rate) = shared.overrides.rate_limit(name, plugin.manifest.rate_limit(name)) {
        let wait = Box::pin(take_turn(
            shared,
            name,
            rate,
            plugin.manifest.rate_limit_across_workers(name),
        ))
        .await;
        if !wait.is_zero() {
            // Waiting for its turn does not occupy a slot either.
            slot = None;
            if !wait_or_stop(shared, wait).await {
                report::settle(shared, &delivery, report::Settle::Reject { requeue: true }).await;
                return;
            }
        }
    }

    // A slot, unless none frees up in time (the message goes back to the broker for an
    // idle worker) or the worker is stopping (it goes back unstarted).
    let slot = match slot {
        Some(admission::Slot::Free(slot)) => slot,
        waiting => tokio::select! {
            slot = shared.gate.slot(waiting) => match slot {
                Some(slot) => slot,
                None => {
                    tracing::debug!(task_id = %request.id, "no free slot in time; handing the message back");
                    report::settle(shared, &delivery, report::Settle::Reject { requeue: true }).await;
                    return;
                }
            },
            _ = stopped(shared.stopping.clone()) => {
                report::settle(shared, &delivery, report::Settle::Reject { requeue: true }).await;
                return;
            }
        },
    };

    // Revoked while it waited for its ETA, its turn or a slot.
    if discard_if_revoked(shared, &delivery, &request, plugin_name).await {
        return;
    }
    let mut invocation = Invocation {
        progress: Some(shared.progress.clone()),
        ..Invocation::for_task(&request, &shared.config.hostname, &delivery.queue)
    };
    if let Some((hard, soft)) = shared.overrides.time_limits(name) {
        // Remote control replaces the manifest's limits; the message's own still win.
        invocation.time_limit = invocation.time_limit.or(hard);
        invocation.soft_time_limit = invocation.soft_time_limit.or(soft);
    }
    // `acks_late = false` in the manifest: acked as it starts, as Celery's default is.
    let acked_early = !plugin.manifest.acks_late(name);
    if acked_early {
        report::settle(shared, &delivery, report::Settle::Ack).await;
    }
    tracked.started(invocation.cancel.clone());
    shared.events.task("task-started", id, Map::new);
    let in_hand = shared.gate.started(delivery.tag);
    shared.placement.task_started(in_hand);
    shared.status.metrics.started(name, arrived.elapsed());
    let ran = shared
        .executors
        .run(plugin.clone(), invocation, Instant::now() + admission::LOOKAHEAD_WAIT)
        .await;
    shared.gate.finished(delivery.tag);
    if let Some(ran) = &ran {
        shared.load.task_time.record(ran.usage.wall.as_nanos() as u64);
    }
    shared
        .status
        .metrics
        .left_executor(name, &plugin.name, ran.as_ref().map(|r| r.usage));
    // The slot is for running guests; storing the result and acking are I/O and must
    // not keep the next task from starting.
    drop(slot);
    let Some(ran) = ran else {
        tracing::debug!(task_id = %request.id, "no executor free in time; handing the message back");
        if !acked_early {
            report::settle(shared, &delivery, report::Settle::Reject { requeue: true }).await;
        } else if let Err(err) = shared.broker.publish(&delivery.queue, &delivery.message).await {
            tracing::error!(task_id = %request.id, error = %err, "cannot hand back an early-acked message; the task is lost");
        }
        return;
    };
    let after = (!acked_early).then_some(report::Settle::Ack);
    report::outcome(shared, &delivery, &request, plugin, ran.outcome, ran.usage, after).await;
}

/// Wait for a turn under the task's rate limit: fleet-wide if asked and Redis is at hand,
/// else on this worker (also when Redis fails, rather than hold the task).
async fn take_turn(shared: &Shared, name: &str, rate: f64, across_workers: bool) -> Duration {
    match (&shared.shared_rate_limits, across_workers) {
        (Some(shared_limits), true) => match shared_limits.take_turn(name, rate).await {
            Ok(wait) => return wait,
            Err(err) => {
                tracing::warn!(task = %name, error = %err, "cannot take a fleet-wide turn; limiting on this worker")
            }
        },
        (None, true) => tracing::debug!(task = %name, "rate_limit_across_workers needs Redis; limiting on this worker"),
        _ => {}
    }
    shared.rate_limits.take_turn(name, rate)
}

/// Hand a task with a far-off ETA to the broker to keep until then; false if it stays here.
async fn park(shared: &Shared, delivery: &Delivery, request: &TaskRequest, eta: chrono::DateTime<Utc>) -> bool {
    let (id, name) = (request.id.as_str(), request.name.as_str());
    match shared.broker.park(delivery, eta).await {
        Ok(parked) => {
            if parked {
                tracing::info!(task_id = %id, task = %name, eta = %eta, "Task {name}[{id}] parked in the broker until its ETA");
            }
            parked
        }
        Err(err) => {
            tracing::warn!(task_id = %id, task = %name, error = %err, "cannot park the task in the broker; holding it until its ETA");
            false
        }
    }
}

/// A task that may have run before is not run again if its result is stored (its
/// follow-ups went out before it). If the backend cannot say, the message goes back to
/// the queue after a pause: a result could not be stored now either.
async fn skip_if_finished(shared: &Shared, delivery: &Delivery, request: &TaskRequest, plugin: &str) -> bool {
    let (id, name) = (request.id.as_str(), request.name.as_str());
    match redelivery::finished_state(shared, request).await {
        Ok(None) => false,
        Ok(Some(state)) => {
            tracing::info!(task_id = %id, task = %name, plugin, state = %state.as_str(),
                "Task {name}[{id}] already finished before this delivery; acking it without running it again");
            shared.status.metrics.redelivery_skipped();
            report::settle(shared, delivery, report::Settle::Ack).await;
            true
        }
        Err(err) => {
            tracing::warn!(task_id = %id, task = %name, plugin, error = %err,
                "cannot ask the result backend whether this redelivered task already ran; returning it to the queue");
            wait_or_stop(shared, BACKEND_DOWN_PAUSE).await;
            report::settle(shared, delivery, report::Settle::Reject { requeue: true }).await;
            true
        }
    }
}

/// A revoked task is not run: REVOKED is stored and the message acked, as Celery does.
async fn discard_if_revoked(shared: &Shared, delivery: &Delivery, request: &TaskRequest, plugin: &str) -> bool {
    if !shared.revoked.contains(&request.id) {
        return false;
    }
    let (id, name) = (request.id.as_str(), request.name.as_str());
    tracing::info!(task_id = %id, task = %name, plugin, "Discarding revoked task: {name}[{id}]");
    store_revoked(shared, delivery, request, "revoked").await;
    true
}

/// A task past its `expires` is not run: REVOKED is stored and the message acked.
async fn discard_if_expired(shared: &Shared, delivery: &Delivery, request: &TaskRequest, plugin: &str) -> bool {
    if request.expires.is_none_or(|expires| expires > Utc::now()) {
        return false;
    }
    let (id, name) = (request.id.as_str(), request.name.as_str());
    tracing::info!(task_id = %id, task = %name, plugin, "Task {name}[{id}] expired; not running it");
    shared.revoked.add(id);
    store_revoked(shared, delivery, request, "expired").await;
    true
}

/// Store REVOKED (`TaskRevokedError(reason)`) for a task that will not run, then ack it.
/// Boxed: a rare path, kept out of every task's handler (see the module doc).
async fn store_revoked(shared: &Shared, delivery: &Delivery, request: &TaskRequest, reason: &str) {
    let exc = ExceptionInfo::new("TaskRevokedError", "celery.exceptions", reason);
    let mut result = TaskResult::new(&request.id, State::Revoked, exc.to_value());
    report::annotate(shared, request, &mut result);
    Box::pin(report::store_then_settle(
        shared,
        delivery,
        request,
        result,
        report::Settle::Ack,
    ))
    .await;
}

/// Sleep until `wait` has passed (true) or the worker starts stopping (false).
async fn wait_or_stop(shared: &Shared, wait: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = stopped(shared.stopping.clone()) => false,
    }
}

/// Resolves once a warm shutdown has started.
pub(super) async fn stopped(mut stopping: tokio::sync::watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens when the worker is ending.
    let _ = stopping.wait_for(|stop| *stop).await;
}
