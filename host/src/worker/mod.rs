//! The worker loop: consume → dispatch → execute → report.
//!
//! `concurrency` slots run guests; at most `concurrency × prefetch_multiplier` messages
//! are reserved at once, counting those waiting for their ETA (which give their slot
//! back while they wait). `admission` decides when to take more: fair dispatch with a
//! bounded look-ahead. Acknowledgement is late:
//! a message is acked only after its outcome is stored, so a worker that dies loses
//! nothing. On shutdown it stops consuming, lets running tasks finish, and hands
//! reserved-but-unstarted messages back to the broker.

mod admission;
mod canvas;
mod executor;
mod rate_limit;
mod report;
mod task;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::backend::{BackendError, ResultBackend};
use crate::batch::Batcher;
use crate::broker::{Broker, BrokerError};
use crate::http::Status;
use crate::protocol::TaskResult;
use crate::runtime::Runtime;

pub use executor::ExecutorPool;

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
    /// Reserved messages per slot.
    pub prefetch_multiplier: usize,
    /// Store name, args, kwargs, worker, retries and queue with each result.
    pub result_extended: bool,
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
    runtime: Arc<Runtime>,
    executors: ExecutorPool,
    /// Reservations, slots and look-ahead.
    gate: admission::Gate,
    /// Per-task rate limits from the plugins' manifests.
    rate_limits: rate_limit::RateLimits,
    /// Readiness and metrics, served on the status port.
    status: Arc<Status>,
    /// Flips to true when a warm shutdown starts.
    stopping: watch::Receiver<bool>,
}

pub struct Worker {
    config: WorkerConfig,
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    runtime: Arc<Runtime>,
    status: Arc<Status>,
}

impl Worker {
    pub fn new(
        config: WorkerConfig,
        broker: Arc<dyn Broker>,
        backend: Arc<dyn ResultBackend>,
        runtime: Arc<Runtime>,
        status: Arc<Status>,
    ) -> Worker {
        Worker {
            config,
            broker,
            backend,
            runtime,
            status,
        }
    }

    /// Consume until `stop` flips to true, then shut down warmly.
    pub async fn run(self, stop: watch::Receiver<bool>) -> Result<(), WorkerError> {
        let concurrency = self.config.concurrency.max(1);
        let prefetch = concurrency * self.config.prefetch_multiplier.max(1);
        self.broker.consume(&self.config.queues, prefetch).await?;
        let executors = ExecutorPool::start(self.runtime.clone(), concurrency).map_err(WorkerError::Executors)?;
        let shared = Arc::new(Shared {
            config: self.config.clone(),
            broker: self.broker.clone(),
            backend: self.backend.clone(),
            results: {
                let backend = self.backend.clone();
                Batcher::start(RESULT_BATCH, move |results: Vec<TaskResult>| {
                    let backend = backend.clone();
                    async move { backend.store_many(&results).await }
                })
            },
            runtime: self.runtime.clone(),
            executors,
            gate: admission::Gate::new(concurrency, prefetch),
            rate_limits: rate_limit::RateLimits::default(),
            status: self.status.clone(),
            stopping: stop.clone(),
        });
        tracing::info!(
            hostname = %self.config.hostname,
            queues = ?self.config.queues,
            concurrency,
            prefetch,
            tasks = ?self.runtime.registry.task_names(),
            "celeriac worker ready"
        );

        self.status.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut stop_signal = stop.clone();
        let mut backoff = Duration::from_millis(100);
        while !*stop.borrow() {
            let first = tokio::select! {
                admission = shared.gate.admit() => match admission {
                    Some(admission) => admission,
                    None => break,
                },
                _ = stop_signal.changed() => break,
            };
            let room = shared.gate.room();
            let deliveries = match self.broker.receive(&self.config.queues, room, RECEIVE_WAIT).await {
                Ok(deliveries) => {
                    backoff = Duration::from_millis(100);
                    deliveries
                }
                Err(err) => {
                    tracing::error!(error = %err, retry_in = ?backoff, "cannot receive from the broker");
                    drop(first);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_RECEIVE_BACKOFF);
                    continue;
                }
            };
            let mut first = Some(first);
            for delivery in deliveries {
                // Only this loop admits messages, and `room` counted them.
                let Some(admission) = first.take().or_else(|| shared.gate.try_admit()) else {
                    self.broker.reject(&delivery, true).await?;
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    task::handle(&shared, delivery, admission.slot).await;
                    drop(admission.reservation);
                });
            }
        }
        self.status.ready.store(false, std::sync::atomic::Ordering::Relaxed);
        tracing::info!("warm shutdown: no new tasks; waiting for running tasks to finish");
        // Every handler holds a reservation until it has acked or handed its message back.
        shared.gate.drain(prefetch).await;
        self.broker.close().await?;
        tracing::info!("worker stopped");
        Ok(())
    }
}
