//! Result backends. The worker sees a backend only through [`ResultBackend`].

pub mod chord;
pub mod redis;
mod redis_chord;
pub mod rpc;
mod rpc_chord;
pub mod sql;
mod sql_dialect;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{BackendUrl, BrokerUrl};
use crate::protocol::TaskResult;
use chord::{ChordCounting, ChordJoin, ChordPart};
use sql_dialect::Flavor;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("result backend connection failed: {0}")]
    Connection(String),
    #[error("result backend operation failed: {0}")]
    Operation(String),
    #[error("stored result for {task_id} cannot be read: {reason}")]
    Corrupt { task_id: String, reason: String },
    #[error("the result backend connection is shutting down")]
    Closed,
}

impl From<crate::batch::Closed> for BackendError {
    fn from(_: crate::batch::Closed) -> Self {
        BackendError::Closed
    }
}

/// Where task states and results go, in Celery's layout for that store.
#[async_trait]
pub trait ResultBackend: Send + Sync {
    /// Store a state. A stored SUCCESS is never overwritten (a redelivered duplicate
    /// must not replace the first result).
    async fn store(&self, result: &TaskResult) -> Result<(), BackendError>;

    /// Store several states; backends that can do it in one round trip override this.
    async fn store_many(&self, results: &[TaskResult]) -> Result<(), BackendError> {
        for result in results {
            self.store(result).await?;
        }
        Ok(())
    }

    /// For backends that answer by message (`rpc://`): the queue a client must name as
    /// `reply_to` when it sends a task, declared and consumed from the first call on.
    async fn reply_to(&self) -> Result<Option<String>, BackendError> {
        Ok(None)
    }

    /// How chords complete on this backend.
    fn chord_counting(&self) -> ChordCounting {
        ChordCounting::Unlock
    }

    /// Register a chord of `size` header tasks before they are sent (native counting).
    async fn start_chord(&self, _group_id: &str, _size: usize) -> Result<(), BackendError> {
        Ok(())
    }

    /// Count a header task's stored outcome (native counting).
    async fn chord_part_return(&self, _part: &ChordPart<'_>) -> Result<ChordJoin, BackendError> {
        Ok(ChordJoin::Pending)
    }

    /// Give up the claim a `ChordJoin::Complete` handed out: the chord is over if its body
    /// was sent, else the claim is freed for the header task's next delivery.
    async fn release_chord(&self, _group_id: &str, _claim: &str, _body_sent: bool) -> Result<(), BackendError> {
        Ok(())
    }

    /// Whether [`get`](Self::get) reads back what any worker stored; not on `rpc://`,
    /// whose results are messages to the client that sent the task.
    fn keeps_state(&self) -> bool {
        true
    }

    /// The latest stored state of a task, if any.
    async fn get(&self, task_id: &str) -> Result<Option<TaskResult>, BackendError>;

    /// Wait until the task is ready (SUCCESS, FAILURE, REVOKED) or `timeout` passes,
    /// returning the last state seen. Backends with push notification override this.
    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<Option<TaskResult>, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let current = self.get(task_id).await?;
            let ready = current.as_ref().is_some_and(|r| r.state.is_ready());
            if ready || tokio::time::Instant::now() >= deadline {
                return Ok(current);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Celery's default `result_expires`: one day.
pub const DEFAULT_RESULT_EXPIRES: u64 = 86_400;

/// Open the backend a URL names. `result_expires` (seconds, 0 = never) applies where the
/// store supports expiry; `broker` is where `rpc://` sends results.
pub async fn open(
    url: &BackendUrl,
    result_expires: u64,
    broker: &BrokerUrl,
) -> Result<Arc<dyn ResultBackend>, BackendError> {
    match url {
        BackendUrl::Rpc => match broker {
            BrokerUrl::Amqp(amqp) => Ok(Arc::new(rpc::RpcBackend::open(amqp, result_expires).await?)),
            _ => Err(BackendError::Connection(
                "rpc:// sends results through the broker: it needs an amqp:// broker".into(),
            )),
        },
        BackendUrl::Sqlite(path) => Ok(Arc::new(sql::SqlBackend::open_sqlite(path).await?)),
        BackendUrl::Postgres(url) => Ok(Arc::new(sql::SqlBackend::open_server(url, Flavor::Postgres).await?)),
        BackendUrl::MySql(url) => Ok(Arc::new(sql::SqlBackend::open_server(url, Flavor::MySql).await?)),
        BackendUrl::Redis(url) => Ok(Arc::new(redis::RedisBackend::open(url, result_expires).await?)),
    }
}
