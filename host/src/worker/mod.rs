//! The worker loop: consume → dispatch → execute → report.
//!
//! `concurrency` slots run guests; at most `concurrency × prefetch_multiplier` messages
//! are reserved at once, counting those waiting for their ETA (which give their slot
//! back while they wait). `admission` decides when to take more: fair dispatch with a
//! bounded look-ahead; on a broker that pushes messages, `window` sizes how many it
//! sends ahead. Acknowledgement is late:
//! a message is acked only after its outcome is stored, so a worker that dies loses
//! nothing. On shutdown it stops consuming, lets running tasks finish, and hands
//! reserved-but-unstarted messages back to the broker.

mod admission;
mod canvas;
mod chord;
mod clock;
mod control;
mod events;
mod executor;
mod fault;
mod lone_task;
mod memory;
mod overrides;
mod placement;
mod rate_limit;
mod redelivery;
mod report;
mod revoked;
mod shared_rate_limit;
mod task;
mod tracker;
mod window;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::{broadcast, watch};

use crate::backend::{BackendError, ResultBackend};
use crate::batch::{Batcher, Linger};
use crate::broker::control::ControlBus;
use crate::broker::{Broker, BrokerError};
use crate::http::Status;
use crate::protocol::TaskResult;
use crate::runtime::Runtime;
use crate::telemetry::Telemetry;

pub use executor::ExecutorPool;
pub use shared_rate_limit::SharedRateLimits;

/// Most results written in one round trip.
const RESULT_BATCH: usize = 256;

/// How long one receive call waits for messages before the loop looks around again.
const RECEIVE_WAIT: Duration = Duration::from_millis(500);
/// Longest pause between attempts to reach a broker that is down: short, so service
/// resumes within a couple of seconds of the broker's return.
const MAX_RECEIVE_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Node name, e.g. `celeriac@host`.
    pub hostname: String,
    pub queues: Vec<String>,
    /// Task slots (executor threads).
    pub concurrency: usize,
    /// Reserved messages per slot; `None`: sized by the worker (see `window`).
    pub prefetch_multiplier: Option<usize>,
    /// Store name, args, kwargs, worker, retries and queue with each result.
    pub result_extended: bool,
    /// Send task events to the broker from the start (`-E`).
    pub task_events: bool,
    /// For `inspect stats`, `conf` and `report` (shown without passwords).
    pub broker_url: String,
    pub backend_url: String,
    /// Where revoked task ids are kept across restarts (Celery's `--statedb`).
    pub state_db: Option<std::path::PathBuf>,
    /// Park a task in the broker when its ETA is further off than this.
    pub park_eta_after: Option<Duration>,
    /// How long a warm shutdown waits for running tasks before it stops them and hands
    /// their messages back (`None`: as long as they take, as Celery does).
    pub shutdown_timeout: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("cannot start executor threads: {0}")]
    Executors(std::io::Error),
}

/// What every task handler shares.
struct Shared {
    config: WorkerConfig,
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    /// Results from concurrent tasks, written together.
    results: Batcher<TaskResult, BackendError>,
    /// Where guests' `update-state` calls go.
    progress: crate::runtime::ProgressSink,
    runtime: Arc<Runtime>,
    executors: ExecutorPool,
    /// Reservations, slots and look-ahead.
    gate: admission::Gate,
    /// How many messages the broker sends ahead, where it pushes them.
    window: window::Current,
    /// How long guests run and how large messages are, which size that window.
    load: window::Load,
    /// Which CPUs the threads run on (one while the load is light).
    placement: placement::Placement,
    /// What a lone task's bookkeeping waits for.
    lead: lone_task::Lead,
    /// Per-task rate limits from the plugins' manifests.
    rate_limits: rate_limit::RateLimits,
    /// Rate limits across all workers, where a Redis is at hand.
    shared_rate_limits: Option<Arc<SharedRateLimits>>,
    /// Readiness and metrics, served on the status port.
    status: Arc<Status>,
    /// Flips to true when a warm shutdown starts.
    stopping: watch::Receiver<bool>,
    /// Starts a warm shutdown (remote control `shutdown`).
    stop: Arc<watch::Sender<bool>>,
    started: Instant,
    /// Queues consumed now (`add_consumer` / `cancel_consumer` change them).
    queues: RwLock<Vec<String>>,
    clock: Arc<clock::LamportClock>,
    events: Arc<events::Events>,
    tracker: tracker::Tracker,
    revoked: revoked::Revoked,
    overrides: overrides::Overrides,
    telemetry: Option<Arc<Telemetry>>,
    /// Set when the shutdown grace period ran out: tasks stopped then go back to their
    /// queue instead of being stored as REVOKED.
    abandoning: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn queues(&self) -> Vec<String> {
        self.queues.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn concurrency(&self) -> usize {
        self.gate.concurrency()
    }

    /// `pool_grow`: more slots and executor threads.
    fn grow(&self, n: usize) {
        match self.executors.grow(n) {
            Ok(()) => self.gate.grow(n, self.gate.reservations_per_slot()),
            Err(err) => tracing::error!(error = %err, "cannot start more executor threads"),
        }
    }

    /// `pool_shrink`: fewer slots and executor threads, never fewer than one.
    fn shrink(&self, n: usize) {
        let n = self.gate.shrink(n, self.gate.reservations_per_slot());
        self.executors.shrink(n);
    }

    /// `add_consumer`: false if the queue is consumed already.
    async fn add_queue(&self, queue: &str) -> Result<bool, BrokerError> {
        if self.queues().iter().any(|q| q == queue) {
            return Ok(false);
        }
        self.broker.add_queue(queue).await?;
        self.queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(queue.to_owned());
        tracing::info!(queue, "started consuming from {queue}");
        Ok(true)
    }

    /// `cancel_consumer`.
    async fn cancel_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|q| q != queue);
        self.broker.cancel_queue(queue).await?;
        tracing::info!(queue, "stopped consuming from {queue}");
        Ok(())
    }
}

/// Remote control for the status port: the same commands as over the broker.
#[derive(Clone)]
pub struct Inspector(Arc<Shared>);

impl Inspector {
    pub async fn call(&self, method: &str, arguments: &Map<String, Value>) -> Option<Value> {
        control::dispatch(&self.0, method, arguments).await
    }

    pub fn hostname(&self) -> &str {
        &self.0.config.hostname
    }

    /// Every event from now on, as JSON text.
    pub fn events(&self) -> broadcast::Receiver<Arc<str>> {
        self.0.events.subscribe()
    }
}

pub struct Worker {
    pub config: WorkerConfig,
    pub broker: Arc<dyn Broker>,
    pub backend: Arc<dyn ResultBackend>,
    /// Remote control and broker events; `None` on brokers that cannot fan out.
    pub control: Option<Arc<dyn ControlBus>>,
    pub runtime: Arc<Runtime>,
    pub status: Arc<Status>,
    /// OpenTelemetry spans, when an OTLP endpoint is configured.
    pub telemetry: Option<Arc<Telemetry>>,
    /// Fleet-wide rate limits, on the broker's or the result backend's Redis.
    pub shared_rate_limits: Option<Arc<SharedRateLimits>>,
}

impl Worker {
    /// Consume until `stop` is set (by a signal or remote control), then shut down warmly.
    pub async fn run(self, stop: Arc<watch::Sender<bool>>) -> Result<(), WorkerError> {
        let stopping = stop.subscribe();
        let concurrency = self.config.concurrency.max(1);
        let multiplier = self.config.prefetch_multiplier;
        let reservations_per_slot = window::reservations_per_slot(multiplier, self.broker.sends_ahead());
        let prefetch = concurrency * reservations_per_slot;
        let first_window = window::initial(concurrency, multiplier);
        self.broker.consume(&self.config.queues, first_window).await?;
        let executors = ExecutorPool::start(self.runtime.clone(), concurrency).map_err(WorkerError::Executors)?;
        let clock = Arc::new(clock::LamportClock::default());
        let gate = admission::Gate::new(concurrency, prefetch);
        // Under load, a batch of results waits for half the messages held: the other half
        // runs while this one is stored and acked, and frees its reservations for the
        // broker to refill meanwhile. A lone task's result is written at once.
        let held = gate.held_count();
        let linger = Linger::until(move || held().div_ceil(2));
        let shared = Arc::new(Shared {
            config: self.config.clone(),
            broker: self.broker.clone(),
            backend: self.backend.clone(),
            results: {
                let backend = self.backend.clone();
                Batcher::start_lingering(RESULT_BATCH, Some(linger), move |results: Vec<TaskResult>| {
                    let backend = backend.clone();
                    async move { backend.store_many(&results).await }
                })
            },
            progress: report::progress_sink(self.backend.clone()),
            runtime: self.runtime.clone(),
            executors,
            gate,
            window: window::Current::new(first_window),
            load: window::Load::default(),
            placement: placement::Placement::default(),
            lead: lone_task::Lead::default(),
            rate_limits: rate_limit::RateLimits::default(),
            shared_rate_limits: self.shared_rate_limits.clone(),
            status: self.status.clone(),
            stopping: stopping.clone(),
            stop,
            started: Instant::now(),
            queues: RwLock::new(self.config.queues.clone()),
            events: events::Events::start(
                self.control.clone(),
                &self.config.hostname,
                clock.clone(),
                self.config.task_events,
            ),
            clock,
            tracker: tracker::Tracker::default(),
            revoked: match &self.config.state_db {
                Some(path) => revoked::Revoked::with_state_file(path),
                None => revoked::Revoked::default(),
            },
            overrides: overrides::Overrides::default(),
            telemetry: self.telemetry.clone(),
            abandoning: std::sync::atomic::AtomicBool::new(false),
        });
        let _ = self.status.inspector.set(Inspector(shared.clone()));
        if let Some(bus) = &self.control {
            tokio::spawn(control::serve(shared.clone(), bus.clone()));
        }
        tokio::spawn(events::keep_beating(shared.clone()));
        tokio::spawn(memory::return_when_idle(shared.clone()));
        tokio::spawn(placement::keep(shared.clone()));
        if self.broker.sends_ahead() {
            tokio::spawn(window::keep(shared.clone()));
        } else if multiplier.is_none() {
            tokio::spawn(window::keep_reservations(shared.clone()));
        }
        tracing::info!(
            hostname = %self.config.hostname,
            queues = ?self.config.queues,
            concurrency,
            prefetch,
            tasks = ?self.runtime.registry.task_names(),
            "celeriac worker ready"
        );

        self.status.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut stop_signal = stopping.clone();
        let mut backoff = Duration::from_millis(100);
        while !*stopping.borrow() {
            let first = tokio::select! {
                admission = shared.gate.admit() => match admission {
                    Some(admission) => admission,
                    None => break,
                },
                _ = stop_signal.changed() => break,
            };
            let room = shared.gate.room();
            let asked = shared.queues();
            let deliveries = match self.broker.receive(&asked, room, RECEIVE_WAIT).await {
                Ok(deliveries) => {
                    backoff = Duration::from_millis(100);
                    deliveries
                }
                Err(err) => {
                    tracing::error!(error = %err, retry_in = ?backoff, "cannot receive from the broker");
                    self.status.metrics.broker_error();
                    drop(first);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_RECEIVE_BACKOFF);
                    continue;
                }
            };
            // A queue cancelled while the receive waited (a Redis BRPOP blocks on every
            // queue it was given) may still have yielded a message: it goes back, as
            // kombu hands back a message for a queue without consumers.
            let current = shared.queues();
            let cancelled: Vec<&String> = asked.iter().filter(|q| !current.contains(q)).collect();
            // Only `first` is held: the message's task runs before its bookkeeping.
            let lone = deliveries.len() == 1 && shared.gate.held() == 1;
            let seen = shared.lead.count();
            let mut first = Some(first);
            for delivery in deliveries {
                if cancelled.contains(&&delivery.queue) {
                    tracing::debug!(queue = %delivery.queue, "handing back a message from a cancelled queue");
                    self.broker.reject(&delivery, true).await?;
                    continue;
                }
                // Only this loop admits messages, and `room` counted them.
                let Some(admission::Admission { reservation, slot }) = first.take().or_else(|| shared.gate.try_admit())
                else {
                    self.broker.reject(&delivery, true).await?;
                    continue;
                };
                if !lone {
                    delivery.release_deferred_writes();
                }
                // Received, and queued for a slot, here in the broker's order (priorities).
                let received = task::receive(&shared, &delivery);
                let slot = match slot {
                    Some(slot) => Some(admission::Slot::Free(slot)),
                    None if received.as_ref().is_some_and(task::wants_slot_at_once) => {
                        Some(shared.gate.queue_for_slot())
                    }
                    None => None,
                };
                let shared = shared.clone();
                // Boxed: the handler's state machine is ~5.6 KB, and tokio moves an unboxed
                // future by value several times on spawn and when it finishes.
                tokio::spawn(Box::pin(async move {
                    task::handle(&shared, delivery, received, slot).await;
                    // Before the reservation goes, so that a lone task's hold never ends
                    // on an earlier task's let-go.
                    shared.lead.let_go();
                    drop(reservation);
                }));
            }
            if lone {
                shared.lead.hold(seen, lone_task::LEAD_AT_MOST).await;
            }
        }
        self.status.ready.store(false, std::sync::atomic::Ordering::Relaxed);
        tracing::info!("warm shutdown: no new tasks; waiting for running tasks to finish");
        // Every handler holds a reservation until it has acked or handed its message back.
        match self.config.shutdown_timeout {
            Some(grace) if tokio::time::timeout(grace, shared.gate.drain()).await.is_err() => {
                shared.abandoning.store(true, std::sync::atomic::Ordering::Relaxed);
                let stopped = shared.tracker.terminate_all();
                tracing::warn!(grace = ?grace, stopped,
                    "running tasks outlived the shutdown grace period: stopping them and returning their messages to the queue");
                shared.gate.drain().await;
            }
            Some(_) => {}
            None => shared.gate.drain().await,
        }
        events::heartbeat(&shared, "worker-offline", events::HEARTBEAT_EVERY.as_secs_f64()).await;
        self.broker.close().await?;
        if let Some(telemetry) = self.telemetry.clone() {
            // Flushing blocks on the exporter's HTTP client.
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}
