//! The worker's Prometheus metrics: tasks by name and final state, how long they waited
//! and ran, the CPU and memory they used, how many run now, and broker trouble. Served as OpenMetrics text on the HTTP port's `/metrics`.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::runtime::Usage;

type TaskState = Vec<(&'static str, String)>;
type TaskName = Vec<(&'static str, String)>;

type PluginName = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    finished: Family<TaskState, Counter>,
    runtime: Family<TaskName, Histogram>,
    cpu: Family<TaskName, Counter<f64>>,
    peak_memory: Family<PluginName, Histogram>,
    waited: Family<TaskName, Histogram>,
    broker_errors: Counter,
    store_errors: Counter,
    redeliveries_skipped: Counter,
    running: Gauge,
    /// Each task name's own metrics, found once: a family lookup allocates and hashes a
    /// label set, and five of them ran for every task.
    by_task: FoundOnce<TaskMetrics>,
    /// Each plugin's memory histogram, found once likewise.
    by_plugin: FoundOnce<Histogram>,
}

/// Values made once for each name and kept: a task takes a read lock, only a name seen
/// for the first time takes the write lock.
struct FoundOnce<V>(RwLock<HashMap<String, V>>);

impl<V: Clone> FoundOnce<V> {
    fn new() -> FoundOnce<V> {
        FoundOnce(RwLock::new(HashMap::new()))
    }

    fn get_or_make(&self, name: &str, make: impl FnOnce() -> V) -> V {
        if let Some(value) = self.0.read().unwrap_or_else(PoisonError::into_inner).get(name) {
            return value.clone();
        }
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_insert_with(make)
            .clone()
    }
}

/// The metrics labelled with one task name (clones share the same values).
#[derive(Clone)]
struct TaskMetrics {
    waited: Histogram,
    runtime: Histogram,
    cpu: Counter<f64>,
    /// Finished in SUCCESS, the state nearly every task ends in.
    succeeded: Counter,
}

fn memory_histogram() -> Histogram {
    // 64 KiB (one Wasm page) to 4 GiB (all a 32-bit memory can hold).
    Histogram::new(exponential_buckets(65536.0, 4.0, 9))
}

fn runtime_histogram() -> Histogram {
    // 10 µs to ~80 s: a Wasm task's whole range, from a fresh instance to a long job.
    Histogram::new(exponential_buckets(1e-5, 4.0, 12))
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("celeriac");
        let finished = Family::<TaskState, Counter>::default();
        let runtime = Family::<TaskName, Histogram>::new_with_constructor(runtime_histogram as fn() -> Histogram);
        let running = Gauge::default();
        let waited = Family::<TaskName, Histogram>::new_with_constructor(runtime_histogram as fn() -> Histogram);
        let broker_errors = Counter::default();
        registry.register(
            "task_wait_seconds",
            "Time from a task's arrival at the worker to its start (ETA, rate limit and slot waits)",
            waited.clone(),
        );
        registry.register(
            "broker_receive_errors",
            "Failed attempts to receive from the broker (each is retried with backoff)",
            broker_errors.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "result_store_errors",
            "Failed attempts to store a task's result (retried with backoff, then the message is requeued)",
            store_errors.clone(),
        );
        let redeliveries_skipped = Counter::default();
        registry.register(
            "redeliveries_skipped",
            "Redelivered tasks acked without running again, their result being stored already",
            redeliveries_skipped.clone(),
        );
        let cpu = Family::<TaskName, Counter<f64>>::default();
        let peak_memory = Family::<PluginName, Histogram>::new_with_constructor(memory_histogram as fn() -> Histogram);
        registry.register(
            "task_cpu_seconds",
            "CPU time tasks used: their Wasm instance, guest code and host calls",
            cpu.clone(),
        );
        registry.register(
            "task_peak_memory_bytes",
            "Most linear memory a task's instance held, by plugin",
            peak_memory.clone(),
        );
        registry.register(
            "tasks",
            "Tasks finished, by task name and final state",
            finished.clone(),
        );
        registry.register(
            "task_runtime_seconds",
            "Time tasks spent running in their Wasm instance",
            runtime.clone(),
        );
        registry.register("tasks_running", "Tasks running now", running.clone());
        Metrics {
            registry,
            finished,
            runtime,
            cpu,
            peak_memory,
            waited,
            broker_errors,
            store_errors,
            redeliveries_skipped,
            running,
            by_task: FoundOnce::new(),
            by_plugin: FoundOnce::new(),
        }
    }
}

impl Metrics {
    /// A task starts, `waited` after it arrived.
    pub fn started(&self, task: &str, waited: Duration) {
        self.running.inc();
        self.of_task(task).waited.observe(waited.as_secs_f64());
    }

    fn of_task(&self, task: &str) -> TaskMetrics {
        self.by_task.get_or_make(task, || {
            let labels = vec![("task", task.to_owned())];
            TaskMetrics {
                waited: self.waited.get_or_create(&labels).clone(),
                runtime: self.runtime.get_or_create(&labels).clone(),
                cpu: self.cpu.get_or_create(&labels).clone(),
                succeeded: self
                    .finished
                    .get_or_create(&vec![("task", task.to_owned()), ("state", "SUCCESS".to_owned())])
                    .clone(),
            }
        })
    }

    pub fn broker_error(&self) {
        self.broker_errors.inc();
    }

    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    pub fn redelivery_skipped(&self) {
        self.redeliveries_skipped.inc();
    }

    /// A task of `plugin` left its executor, having used `usage`, or (`None`) withdrawn
    /// unstarted.
    pub fn left_executor(&self, task: &str, plugin: &str, usage: Option<Usage>) {
        self.running.dec();
        if let Some(usage) = usage {
            let task = self.of_task(task);
            task.runtime.observe(usage.wall.as_secs_f64());
            task.cpu.inc_by(usage.cpu.as_secs_f64());
            self.of_plugin(plugin).observe(usage.peak_memory as f64);
        }
    }

    fn of_plugin(&self, plugin: &str) -> Histogram {
        self.by_plugin.get_or_make(plugin, || {
            self.peak_memory
                .get_or_create(&vec![("plugin", plugin.to_owned())])
                .clone()
        })
    }

    /// A task's outcome was stored (SUCCESS, FAILURE, RETRY, REVOKED, REJECTED…).
    pub fn finished(&self, task: &str, state: &str) {
        match state {
            "SUCCESS" => self.of_task(task).succeeded.inc(),
            _ => self
                .finished
                .get_or_create(&vec![("task", task.to_owned()), ("state", state.to_owned())])
                .inc(),
        };
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_runtimes_are_encoded_by_task() {
        let metrics = Metrics::default();
        metrics.started("math.add", Duration::from_millis(3));
        let usage = Usage {
            wall: Duration::from_micros(20),
            cpu: Duration::from_micros(15),
            peak_memory: 1 << 20,
            effects: false,
        };
        metrics.left_executor("math.add", "math", Some(usage));
        // Again: the second time through the cached handles, which count into the same series.
        metrics.started("math.add", Duration::from_millis(3));
        metrics.left_executor("math.add", "math", Some(usage));
        metrics.finished("math.add", "SUCCESS");
        metrics.finished("math.add", "SUCCESS");
        metrics.finished("math.add", "FAILURE");
        let text = metrics.encode();
        assert!(
            text.contains(r#"celeriac_tasks_total{task="math.add",state="SUCCESS"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"celeriac_tasks_total{task="math.add",state="FAILURE"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"celeriac_task_runtime_seconds_count{task="math.add"} 2"#),
            "{text}"
        );
        assert!(text.contains("celeriac_tasks_running 0"), "{text}");
        assert!(
            text.contains(r#"celeriac_task_peak_memory_bytes_count{plugin="math"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"celeriac_task_cpu_seconds_total{task="math.add"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"celeriac_task_wait_seconds_count{task="math.add"} 2"#),
            "{text}"
        );
    }
}
