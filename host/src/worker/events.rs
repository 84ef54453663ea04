//! Celery's monitoring events, with every field Celery's own worker sends, so that
//! `celery events`, Flower and `app.events.Receiver` show a Celeriac worker as they show
//! a Celery one (../shared/research/celery-wire.md §7).
//!
//! Worker events (`worker-online`, `worker-heartbeat`, `worker-offline`) always go to
//! the broker's `celeryev` exchange; task events only with `-E` (or `enable_events`),
//! batched as Celery batches them: a JSON array under the routing key `task.multi`.
//! Every event also goes to the status port's `/events` stream, whatever the broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, mpsc};

use super::clock::LamportClock;
use super::Shared;
use crate::broker::control::{ControlBus, EVENT_EXCHANGE};
use crate::protocol::repr::{repr, repr_args};
use crate::protocol::time::to_iso;
use crate::protocol::time::unix_now;
use crate::protocol::{ExceptionInfo, Headers, Message, State, TaskRequest, TaskResult};
use crate::runtime::Usage;

/// Seconds between heartbeats (Celery's default `freq`).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// Most task events in one `task.multi` message.
const BATCH: usize = 100;
/// Events kept for a slow `/events` reader before it misses some.
const LOCAL_BACKLOG: usize = 1024;

pub struct Events {
    bus: Option<Arc<dyn ControlBus>>,
    hostname: String,
    clock: Arc<LamportClock>,
    /// Task events go to the broker (`-E`, `enable_events`).
    task_events: AtomicBool,
    /// Every event as JSON text, for `/events`.
    local: broadcast::Sender<Arc<str>>,
    /// Task events waiting to go out together.
    batch: mpsc::UnboundedSender<Value>,
}

/// Hours *west* of UTC, as Python's `time.timezone / 3600`.
fn utcoffset() -> f64 {
    -f64::from(chrono::Local::now().offset().local_minus_utc()) / 3600.0
}

/// An event message as Celery's dispatcher publishes it.
fn event_message(hostname: &str, routing_key: &str, body: &Value) -> Message {
    let mut headers = Headers::new();
    headers.insert("hostname", Value::from(hostname));
    Message::json(body, headers, EVENT_EXCHANGE, routing_key, 1)
}

impl Events {
    /// Start the dispatcher; `bus` is `None` on brokers without fanout.
    pub fn start(
        bus: Option<Arc<dyn ControlBus>>,
        hostname: &str,
        clock: Arc<LamportClock>,
        task_events: bool,
    ) -> Arc<Events> {
        let (batch, queued) = mpsc::unbounded_channel();
        let events = Arc::new(Events {
            bus: bus.clone(),
            hostname: hostname.to_owned(),
            clock,
            task_events: AtomicBool::new(task_events),
            local: broadcast::channel(LOCAL_BACKLOG).0,
            batch,
        });
        if let Some(bus) = bus {
            tokio::spawn(send_batches(bus, hostname.to_owned(), queued));
        }
        events
    }

    /// Turn task events on or off; false if they already were.
    pub fn set_task_events(&self, on: bool) -> bool {
        self.task_events.swap(on, Ordering::Relaxed) != on
    }

    pub fn task_events_enabled(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }

    /// Every event from now on, as JSON text.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.local.subscribe()
    }

    /// The fields of every event, then `fields`.
    fn build(&self, kind: &str, fields: Map<String, Value>) -> Value {
        let mut event = Map::new();
        event.insert("hostname".into(), Value::from(self.hostname.as_str()));
        event.insert("utcoffset".into(), Value::from(utcoffset()));
        event.insert("pid".into(), Value::from(std::process::id()));
        event.insert("clock".into(), Value::from(self.clock.forward()));
        event.extend(fields);
        event.insert("timestamp".into(), Value::from(unix_now()));
        event.insert("type".into(), Value::from(kind));
        Value::Object(event)
    }

    /// A `task-*` event for task `uuid`. `fields` is only built if someone listens.
    pub fn task(&self, kind: &str, uuid: &str, fields: impl FnOnce() -> Map<String, Value>) {
        let to_broker = self.bus.is_some() && self.task_events.load(Ordering::Relaxed);
        if !to_broker && self.local.receiver_count() == 0 {
            return;
        }
        let mut all = Map::new();
        all.insert("uuid".into(), Value::from(uuid));
        all.extend(fields());
        let event = self.build(kind, all);
        let _ = self.local.send(event.to_string().into());
        if to_broker {
            // The sender lives as long as the batching task; nothing to do if it ended.
            let _ = self.batch.send(event);
        }
    }

    /// A `worker-*` event, sent at once.
    pub async fn worker(&self, kind: &str, fields: Map<String, Value>) {
        let event = self.build(kind, fields);
        let _ = self.local.send(event.to_string().into());
        if let Some(bus) = &self.bus {
            let routing_key = kind.replace('-', ".");
            if let Err(err) = bus
                .event(&routing_key, &event_message(&self.hostname, &routing_key, &event))
                .await
            {
                tracing::warn!(event = kind, error = %err, "cannot send event");
            }
        }
    }
}

/// Publish queued task events, as many as are waiting in one `task.multi` message.
async fn send_batches(bus: Arc<dyn ControlBus>, hostname: String, mut queued: mpsc::UnboundedReceiver<Value>) {
    while let Some(first) = queued.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match queued.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let message = event_message(&hostname, "task.multi", &Value::Array(batch));
        if let Err(err) = bus.event("task.multi", &message).await {
            tracing::warn!(error = %err, "cannot send task events");
        }
    }
}

/// A worker event with the figures Celery's heartbeats carry; `freq` is the promised
/// interval (monitors count a worker offline after twice that without news).
pub(super) async fn heartbeat(shared: &Shared, kind: &str, freq: f64) {
    let fields = json!({
        "freq": freq,
        "active": shared.tracker.active_count(),
        "processed": shared.tracker.processed(),
        "loadavg": loadavg(),
        "sw_ident": "celeriac",
        "sw_ver": env!("CARGO_PKG_VERSION"),
        "sw_sys": "Linux",
    });
    if let Value::Object(fields) = fields {
        shared.events.worker(kind, fields).await;
    }
}

/// `worker-online`, then a heartbeat every [`HEARTBEAT_EVERY`] until the worker stops.
pub(super) async fn keep_beating(shared: Arc<Shared>) {
    let freq = HEARTBEAT_EVERY.as_secs_f64();
    heartbeat(&shared, "worker-online", freq).await;
    let mut ticks = tokio::time::interval(HEARTBEAT_EVERY);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => heartbeat(&shared, "worker-heartbeat", freq).await,
            _ = super::task::stopped(shared.stopping.clone()) => return,
        }
    }
}

/// The 1, 5 and 15 minute load averages, rounded up to 2 decimals as Celery does.
fn loadavg() -> Vec<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut figures: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| (v * 100.0).ceil() / 100.0)
        .collect();
    figures.resize(3, 0.0);
    figures
}

/// `task-received`: what Celery's worker tells of a task it has just taken.
pub(super) fn received_fields(request: &TaskRequest) -> Map<String, Value> {
    let fields = json!({
        "name": request.name,
        "args": repr_args(&request.args),
        "kwargs": repr(&Value::Object(request.kwargs.clone())),
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "retries": request.retries,
        "eta": request.eta.map(to_iso),
        "expires": request.expires.map(to_iso),
    });
    match fields {
        Value::Object(fields) => fields,
        _ => Map::new(),
    }
}

/// The event for a stored outcome: succeeded, failed, retried or revoked. Succeeded and
/// failed carry what the task used, beyond Celery's fields: `cpu_time` (seconds) and
/// `peak_memory` (bytes of linear memory).
pub(super) fn task_outcome(events: &Events, result: &TaskResult, usage: Usage) {
    let kind = match result.state {
        State::Success => "task-succeeded",
        State::Failure => "task-failed",
        State::Retry => "task-retried",
        State::Revoked => "task-revoked",
        _ => return,
    };
    // Built only if someone listens: most workers run without events.
    events.task(kind, &result.task_id, || match outcome_fields(result, usage) {
        Value::Object(fields) => fields,
        _ => Map::new(),
    });
}

fn outcome_fields(result: &TaskResult, usage: Usage) -> Value {
    let runtime = usage.wall.as_secs_f64();
    let (cpu_time, peak_memory) = (usage.cpu.as_secs_f64(), usage.peak_memory);
    let exception = || {
        result
            .exception()
            .unwrap_or_else(|| ExceptionInfo::new("Exception", "builtins", ""))
    };
    match result.state {
        State::Success => json!({"result": repr(&result.result), "runtime": runtime,
                                 "cpu_time": cpu_time, "peak_memory": peak_memory}),
        State::Failure => {
            json!({"exception": exception().repr(), "traceback": result.traceback.clone().unwrap_or_default(),
                                 "runtime": runtime, "cpu_time": cpu_time, "peak_memory": peak_memory})
        }
        State::Retry => {
            json!({"exception": exception().repr(), "traceback": result.traceback.clone().unwrap_or_default()})
        }
        // Revoked, the one state left that `task_outcome` passes on.
        _ => {
            let exc = exception();
            let reason = exc.exc_message.first().and_then(Value::as_str).unwrap_or("");
            let terminated = reason == "terminated";
            json!({"terminated": terminated, "signum": terminated.then_some(15), "expired": reason == "expired"})
        }
    }
}
