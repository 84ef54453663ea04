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
/// The request is shared with the task's handler, not copied for a view rarely asked for.
struct Held {
    request: Arc<TaskRequest>,
    /// The queue the message came from, kept only where it names no routing key.
    queue: Option<String>,
    redelivered: bool,
    phase: Phase,
}

impl Held {
    fn routing_key(&self) -> &str {
        self.queue.as_deref().unwrap_or(&self.request.delivery_info.routing_key)
    }
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
            match totals.get_mut(&held.request.name) {
                Some(count) => *count += 1,
                None => {
                    totals.insert(held.request.name.clone(), 1);
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
    pub fn hold(&self, delivery: &Delivery, request: &Arc<TaskRequest>) -> Tracked<'_> {
        let held = Held {
            request: request.clone(),
            queue: request
                .delivery_info
                .routing_key
                .is_empty()
                .then(|| delivery.queue.clone()),
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
        let request = &held.request;
        let kwargs = Value::Object(request.kwargs.clone());
        let (args, kwargs) = if safe {
            (Value::from(repr_args(&request.args)), Value::from(repr(&kwargs)))
        } else {
            (Value::Array(request.args.clone()), kwargs)
        };
        let time_start = match &held.phase {
            Phase::Active { time_start, .. } => json!(time_start),
            _ => Value::Null,
        };
        json!({
            "id": request.id,
            "name": request.name,
            "args": args,
            "kwargs": kwargs,
            "type": request.name,
            "hostname": hostname,
            "time_start": time_start,
            "acknowledged": false,
            "delivery_info": {
                "exchange": request.delivery_info.exchange,
                "routing_key": held.routing_key(),
                "priority": request.priority,
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
                    "priority": h.request.priority,
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
            .filter(|h| ids.contains(&h.request.id))
            .map(|h| {
                let state = match h.phase {
                    Phase::Reserved => "reserved",
                    Phase::Scheduled { .. } => "scheduled",
                    Phase::Active { .. } => "active",
                };
                (h.request.id.clone(), json!([state, Tracker::info(h, hostname, false)]))
            })
            .collect()
    }

    /// Stop the running task `id` at its next tick; false if it is not running here.
    pub fn terminate(&self, id: &str) -> bool {
        let held = self.held();
        let mut found = false;
        for h in held.values().filter(|h| h.request.id == id) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DeliveryInfo;

    fn delivery(request: &TaskRequest, queue: &str, tag: u64) -> Delivery {
        Delivery {
            message: request.encode(),
            queue: queue.into(),
            tag,
            redelivered: tag == 2,
            deferred_writes: None,
        }
    }

    #[test]
    fn inspect_shows_what_a_held_message_carries() {
        let tracker = Tracker::default();
        let mut routed = TaskRequest::new("math.add", vec![json!(2), json!(3)], Map::new());
        routed.delivery_info = DeliveryInfo {
            exchange: "tasks".into(),
            routing_key: "math".into(),
        };
        let routed = Arc::new(routed);
        let mut kwargs = Map::new();
        kwargs.insert("text".into(), json!("hi"));
        let unrouted = Arc::new(TaskRequest::new("textkit.words", Vec::new(), kwargs));
        let _first = tracker.hold(&delivery(&routed, "math-queue", 1), &routed);
        let second = tracker.hold(&delivery(&unrouted, "text-queue", 2), &unrouted);
        second.started(Arc::new(AtomicBool::new(false)));

        let reserved = tracker.reserved("host");
        assert_eq!(reserved.len(), 1);
        assert_eq!(reserved[0]["id"], json!(routed.id));
        assert_eq!(reserved[0]["args"], json!([2, 3]));
        assert_eq!(
            reserved[0]["delivery_info"],
            json!({"exchange": "tasks", "routing_key": "math", "priority": 0, "redelivered": false})
        );

        // No routing key in the message: the queue it was taken from stands in.
        let active = tracker.active("host", false);
        assert_eq!(active.len(), 1);
        assert_eq!(active[0]["name"], json!("textkit.words"));
        assert_eq!(active[0]["kwargs"], json!({"text": "hi"}));
        assert_eq!(active[0]["delivery_info"]["routing_key"], json!("text-queue"));
        assert_eq!(active[0]["delivery_info"]["redelivered"], json!(true));
        assert_eq!(tracker.totals_json(), json!({"textkit.words": 1}));

        drop(second);
        assert!(tracker.active("host", false).is_empty());
    }
}
