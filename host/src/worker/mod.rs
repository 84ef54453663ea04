//! The worker loop: consume → dispatch → execute → report.
//!
//! At most `concurrency × prefetch_multiplier` messages are reserved from the broker at
//! once; each runs when one of `concurrency` slots is free. Acknowledgement is late:
//! a message is acked only after its outcome is stored, so a worker that dies loses
//! nothing. On shutdown it stops consuming, lets running tasks finish, and hands
//! reserved-but-unstarted messages back to the broker.

mod executor;
mod report;
mod task;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::backend::ResultBackend;
use crate::broker::{Broker, BrokerError};
use crate::runtime::Runtime;

pub use executor::ExecutorPool;

/// How long one receive call waits for messages before the loop looks around again.
const RECEIVE_WAIT: Duration = Duration::from_millis(500);

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
    runtime: Arc<Runtime>,
    executors: ExecutorPool,
    /// Free task slots.
    slots: Semaphore,
    /// Flips to true when a warm shutdown starts.
    stopping: watch::Receiver<bool>,
}

pub struct Worker {
    config: WorkerConfig,
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    runtime: Arc<Runtime>,
}

impl Worker {
    pub fn new(
        config: WorkerConfig,
        broker: Arc<dyn Broker>,
        backend: Arc<dyn ResultBackend>,
        runtime: Arc<Runtime>,
    ) -> Worker {
        Worker {
            config,
            broker,
            backend,
            runtime,
        }
    }

    /// Consume until `stop` flips to true, then shut down warmly.
    pub async fn run(self, stop: watch::Receiver<bool>) -> Result<(), WorkerError> {
        let concurrency = self.config.concurrency.max(1);
        let prefetch = concurrency * self.config.prefetch_multiplier.max(1);
        self.broker.declare(&self.config.queues).await?;
        let executors = ExecutorPool::start(self.runtime.clone(), concurrency).map_err(WorkerError::Executors)?;
        let shared = Arc::new(Shared {
            config: self.config.clone(),
            broker: self.broker.clone(),
            backend: self.backend.clone(),
            runtime: self.runtime.clone(),
            executors,
            slots: Semaphore::new(concurrency),
            stopping: stop.clone(),
        });
        let reserved = Arc::new(Semaphore::new(prefetch));
        tracing::info!(
            hostname = %self.config.hostname,
            queues = ?self.config.queues,
            concurrency,
            prefetch,
            tasks = ?self.runtime.registry.task_names(),
            "celeriac worker ready"
        );

        let mut stop_signal = stop.clone();
        let mut backoff = Duration::from_millis(100);
        while !*stop.borrow() {
            let first = tokio::select! {
                permit = reserved.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = stop_signal.changed() => break,
            };
            let room = 1 + reserved.available_permits();
            let deliveries = match self.broker.receive(&self.config.queues, room, RECEIVE_WAIT).await {
                Ok(deliveries) => {
                    backoff = Duration::from_millis(100);
                    deliveries
                }
                Err(err) => {
                    tracing::error!(error = %err, retry_in = ?backoff, "cannot receive from the broker");
                    drop(first);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let mut first = Some(first);
            for delivery in deliveries {
                let permit = match first.take() {
                    Some(permit) => permit,
                    // Only this loop takes permits, and `room` counted them.
                    None => match reserved.clone().try_acquire_owned() {
                        Ok(permit) => permit,
                        Err(_) => {
                            self.broker.reject(&delivery, true).await?;
                            continue;
                        }
                    },
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    task::handle(&shared, delivery).await;
                    drop(permit);
                });
            }
        }

        tracing::info!("warm shutdown: no new tasks; waiting for running tasks to finish");
        // Every handler holds a reservation until it has acked or handed its message back.
        let _all = reserved.acquire_many(prefetch as u32).await;
        self.broker.close().await?;
        tracing::info!("worker stopped");
        Ok(())
    }
}
