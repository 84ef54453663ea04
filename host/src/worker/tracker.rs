//! What the worker holds right now and has done since it started, for `inspect`
//! (`active`, `reserved`, `scheduled`, `query_task`, `stats`), heartbeats and
//! `revoke --terminate`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use crate::broker::Delivery;
use crate::protocol::repr::{repr, repr_args};
use crate::protocol::time::to_iso;
use crate::protocol::TaskRequest;

/// Where a held message is in its way through the worker.
#[derive(Clone)]
enum Phase {
    /// Waiting for a slot or a rate-limit turn.
    Reserved,
    /// Waiting for its ETA.
    Scheduled { eta: String },
    /// Running since `time_start` (unix seconds); `cancel` stops it.
    Active { time_start: f64, cancel: Arc<AtomicBool> },
}

/// What `inspect` shows of a held message; JSON and reprs are made only when asked for.
struct Held {
    id: String,
    name: String,
    priority: u8,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    exchange: String,
    routing_key: String,
    redelivered: bool,
    phase: Phase,
}

#[derive(Default)]
pub struct Tracker {
    held: Mutex<HashMap<u64, Held>>,
    /// Tasks started, by name (`inspect stats` → `total`).
    totals: Mutex<BTreeMap<String, u64>>,
    /// Tasks started in all (heartbeats' `processed`).
    processed: AtomicU64,
}

/// Removes its message from the tracker when the message leaves the worker.
pub struct Tracked<'a> {
    tracker: &'a Tracker,
    tag: u64,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.tracker.held().remove(&self.tag);
    }
}

impl<'a> Tracked<'a> {
    pub fn scheduled(&self, eta: chrono::DateTime<chrono::Utc>) {
        self.tracker.set_phase(self.tag, Phase::Scheduled { eta: to_iso(eta) });
    }

    pub fn reserved(&self) {
        self.tracker.set_phase(self.tag, Phase::Reserved);
    }

    /// The task starts running; `cancel` is what `revoke --terminate` sets.
    pub fn started(&self, cancel: Arc<AtomicBool>) {
        let time_start = crate::protocol::time::unix_now();
        let mut held = self.tracker.held();
        if let Some(held) = held.get_mut(&self.tag) {
            held.phase = Phase::Active { time_start, cancel };
            let mut totals = self.tracker.totals();
            match totals.get_mut(&held.name) {
                Some(count) => *count += 1,
                None => {
                    totals.insert(held.name.clone(), 1);
                }
            }
        }
        self.tracker.processed.fetch_add(1, Ordering::Relaxed);
    }
}

impl Tracker {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn totals(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_phase(&self, tag: u64, phase: Phase) {
        if let Some(held) = self.held().get_mut(&tag) {
            held.phase = phase;
        }
    }

    /// Track a decoded message until the returned guard is dropped.
    pub fn hold(&self, delivery: &Delivery, request: &TaskRequest) -> Tracked<'_> {
        let info = &delivery.message.properties.delivery_info;
        let routing_key = if info.routing_key.is_empty() {
            &delivery.queue
        } else {
            &info.routing_key
        };
        let held = Held {
            id: request.id.clone(),
            name: request.name.clone(),
            priority: request.priority,
            args: request.args.clone(),
            kwargs: request.kwargs.clone(),
            exchange: info.exchange.clone(),
            routing_key: routing_key.clone(),
            redelivered: delivery.redelivered,
            phase: Phase::Reserved,
        };
        self.held().insert(delivery.tag, held);
        Tracked {
            tracker: self,
            tag: delivery.tag,
        }
    }

    /// Celery's `Request.info`: args and kwargs as values, or as repr strings (`safe`).
    fn info(held: &Held, hostname: &str, safe: bool) -> Value {
        let kwargs = Value::Object(held.kwargs.clone());
        let (args, kwargs) = if safe {
            (Value::from(repr_args(&held.args)), Value::from(repr(&kwargs)))
        } else {
            (Value::Array(held.args.clone()), kwargs)
        };
        let time_start = match &held.phase {
            Phase::Active { time_start, .. } => json!(time_start),
            _ => Value::Null,
        };
        json!({
            "id": held.id,
            "name": held.name,
            "args": args,
            "kwargs": kwargs,
            "type": held.name,
            "hostname": hostname,
            "time_start": time_start,
            "acknowledged": false,
            "delivery_info": {
                "exchange": held.exchange,
                "routing_key": held.routing_key,
                "priority": held.priority,
                "redelivered": held.redelivered,
            },
            "worker_pid": std::process::id(),
        })
    }

    /// `inspect active`.
    pub fn active(&self, hostname: &str, safe: bool) -> Vec<Value> {
        let held = self.held();
        held.values()
            .filter(|h| matches!(h.phase, Phase::Active { .. }))
            .map(|h| Tracker::info(h, hostname, safe))
            .collect()
    }

    /// `inspect reserved`: held, not started, not waiting for an ETA.
    pub fn reserved(&self, hostname: &str) -> Vec<Value> {
        let held = self.held();
        held.values()
            .filter(|h| matches!(h.phase, Phase::Reserved))
            .map(|h| Tracker::info(h, hostname, false))
            .collect()
    }

    /// `inspect scheduled`: waiting for their ETA.
    pub fn scheduled(&self, hostname: &str) -> Vec<Value> {
        let held = self.held();
        held.values()
            .filter_map(|h| match &h.phase {
                Phase::Scheduled { eta } => Some(json!({
                    "eta": eta,
                    "priority": h.priority,
                    "request": Tracker::info(h, hostname, false),
                })),
                _ => None,
            })
            .collect()
    }

    /// `inspect query_task`: `{id: [state, info]}` for the ids held here.
    pub fn query(&self, ids: &[String], hostname: &str) -> Map<String, Value> {
        let held = self.held();
        held.values()
            .filter(|h| ids.contains(&h.id))
            .map(|h| {
                let state = match h.phase {
                    Phase::Reserved => "reserved",
                    Phase::Scheduled { .. } => "scheduled",
                    Phase::Active { .. } => "active",
                };
                (h.id.clone(), json!([state, Tracker::info(h, hostname, false)]))
            })
            .collect()
    }

    /// Stop the running task `id` at its next tick; false if it is not running here.
    pub fn terminate(&self, id: &str) -> bool {
        let held = self.held();
        let mut found = false;
        for h in held.values().filter(|h| h.id == id) {
            if let Phase::Active { cancel, .. } = &h.phase {
                cancel.store(true, Ordering::Relaxed);
                found = true;
            }
        }
        found
    }

    /// Stop every running task at its next tick; how many.
    pub fn terminate_all(&self) -> usize {
        let held = self.held();
        let mut stopped = 0;
        for h in held.values() {
            if let Phase::Active { cancel, .. } = &h.phase {
                cancel.store(true, Ordering::Relaxed);
                stopped += 1;
            }
        }
        stopped
    }

    /// Tasks running now.
    pub fn active_count(&self) -> usize {
        let held = self.held();
        held.values()
            .filter(|h| matches!(h.phase, Phase::Active { .. }))
            .count()
    }

    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Tasks started since boot, by name.
    pub fn totals_json(&self) -> Value {
        Value::Object(
            self.totals()
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(*v)))
                .collect(),
        )
    }
}
