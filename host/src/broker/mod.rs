//! Message brokers. The worker sees a broker only through [`Broker`].
//!
//! AMQP is native and implements the trait directly. Every other store (SQLite, Redis,
//! SQS, Zookeeper) is a small [`virtual_transport::Store`] under the shared
//! [`virtual_transport::VirtualBroker`], which holds kombu's virtual-transport semantics
//! once: the envelope, delivery tags, the unacked set, leases and their restore.

pub mod amqp;
mod amqp_acks;
pub mod amqp_connect;
mod amqp_control;
mod amqp_parking;
pub mod control;
pub mod redis;
mod redis_control;
mod redis_parking;
mod redis_recording;
pub mod sqlite;
pub mod sqs;
pub mod virtual_transport;
pub mod zookeeper;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::BrokerUrl;
use crate::protocol::Message;

/// A message handed to the worker, with what it takes to acknowledge it.
#[derive(Debug)]
pub struct Delivery {
    pub message: Message,
    /// The queue it was taken from.
    pub queue: String,
    /// Broker-local handle for ack / reject; unique within one broker connection.
    pub tag: u64,
    /// True when the message was delivered before and not acknowledged.
    pub redelivered: bool,
    /// Writes the broker put off about this message, if any (see [`DeferredWrites`]).
    pub deferred_writes: Option<DeferredWrites>,
}

impl Delivery {
    /// Let the broker's deferred writes about this message start (see [`DeferredWrites`]).
    pub fn release_deferred_writes(&self) {
        if let Some(writes) = &self.deferred_writes {
            writes.release();
        }
    }
}

/// Writes a broker puts off about a message it just handed over (on Redis, the `unacked`
/// record of a BRPOP'd message), so that an idle worker can run the task first: on a
/// small machine they would otherwise take the CPU the task waits for. They start when
/// released (by the worker as the task's outcome is reported, by the broker before it
/// settles the message), when this is dropped, or [`DeferredWrites::AT_MOST`] after it
/// was made, whichever comes first.
#[derive(Debug)]
pub struct DeferredWrites(std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>);

impl DeferredWrites {
    /// A task running longer than this does not hold its message's record back further.
    pub const AT_MOST: Duration = Duration::from_millis(1);

    /// The handle, and what the writes wait for before they start.
    pub fn new() -> (DeferredWrites, impl std::future::Future<Output = ()> + Send + 'static) {
        Self::at_most(Self::AT_MOST)
    }

    fn at_most(limit: Duration) -> (DeferredWrites, impl std::future::Future<Output = ()> + Send + 'static) {
        let (handle, released) = tokio::sync::oneshot::channel::<()>();
        // Nothing is ever sent: the wait ends when the sender is dropped.
        (DeferredWrites(std::sync::Mutex::new(Some(handle))), async move {
            let _ = tokio::time::timeout(limit, released).await;
        })
    }

    pub fn release(&self) {
        // The lock guards an Option only; a poisoned one is still usable.
        drop(self.0.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker connection failed: {0}")]
    Connection(String),
    #[error("broker operation failed: {0}")]
    Operation(String),
    #[error("unknown delivery tag {0} (already acknowledged?)")]
    UnknownTag(u64),
    #[error("the broker connection is shutting down")]
    Closed,
}

impl BrokerError {
    /// What each caller of a batched write gets when the batch failed.
    pub fn shared(error: Arc<BrokerError>) -> BrokerError {
        match *error {
            BrokerError::Closed => BrokerError::Closed,
            ref other => BrokerError::Operation(other.to_string()),
        }
    }
}

impl From<crate::batch::Closed> for BrokerError {
    fn from(_: crate::batch::Closed) -> Self {
        BrokerError::Closed
    }
}

/// How many messages a broker that pushes them (AMQP) may send ahead of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// At most this many unacknowledged messages; acks may wait a moment to be batched.
    Ahead(usize),
    /// Tasks have run long: at most this many, one per executor not held by a long task
    /// (0: none). Messages received but not yet taken go back to the queue for other
    /// workers, and acks go at once.
    Fair(usize),
}

/// What the worker needs from any broker.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Make sure the queues exist.
    async fn declare(&self, queues: &[String]) -> Result<(), BrokerError>;
    /// Start consuming `queues` (declaring them), holding at most `prefetch` unacked
    /// messages where the broker pushes them (AMQP). Pull brokers only declare.
    async fn consume(&self, queues: &[String], _prefetch: usize) -> Result<(), BrokerError> {
        self.declare(queues).await
    }
    /// True if the broker sends messages ahead of `receive` (AMQP), so that the worker
    /// sizes that with [`Broker::set_window`]; pull brokers take only what is asked.
    fn sends_ahead(&self) -> bool {
        false
    }
    /// Resize how many messages are sent ahead (brokers that `sends_ahead`).
    async fn set_window(&self, _window: Window) -> Result<(), BrokerError> {
        Ok(())
    }
    /// Start consuming one more queue (remote control `add_consumer`).
    async fn add_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.declare(&[queue.to_owned()]).await
    }
    /// Stop consuming a queue (`cancel_consumer`); messages taken from it still run. Pull
    /// brokers need nothing: the worker stops naming the queue when it receives.
    async fn cancel_queue(&self, _queue: &str) -> Result<(), BrokerError> {
        Ok(())
    }
    /// Wait up to `wait` for messages from `queues`, returning at most `max` (possibly none).
    /// Taken messages stay reserved for this worker until acked or rejected.
    async fn receive(&self, queues: &[String], max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError>;
    /// The task is done: forget the message. The ack may still be on its way when this
    /// returns (a failed write is logged, and the message is delivered again); `close`
    /// waits for it.
    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError>;
    /// Give the message back (`requeue`) or drop it.
    async fn reject(&self, delivery: &Delivery, requeue: bool) -> Result<(), BrokerError>;
    /// Keep a message whose ETA is far off in the broker until then, and ack it here, so
    /// no worker holds it (and no unacked delivery outlives RabbitMQ's
    /// `consumer_timeout` or a visibility timeout). False if this broker cannot; the
    /// worker then holds the message until its ETA.
    async fn park(&self, _delivery: &Delivery, _until: DateTime<Utc>) -> Result<bool, BrokerError> {
        Ok(false)
    }
    /// Publish to a queue through the default exchange, as Celery clients do.
    async fn publish(&self, queue: &str, message: &Message) -> Result<(), BrokerError>;
    /// Publish to a fanout exchange: every subscriber gets a copy, none is stored.
    async fn publish_fanout(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<(), BrokerError>;
    /// Drop every waiting message in a queue; returns how many.
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError>;
    /// Put everything still reserved back on its queue (warm shutdown).
    async fn close(&self) -> Result<(), BrokerError>;
}

/// Open the broker a URL names, and its control bus (remote control and events) where it
/// has one; on RabbitMQ both share one connection.
pub async fn open_with_control(
    url: &BrokerUrl,
    options: &HashMap<String, String>,
) -> Result<(Arc<dyn Broker>, Option<Arc<dyn control::ControlBus>>), BrokerError> {
    if let BrokerUrl::Amqp(url) = url {
        let broker = Arc::new(amqp::AmqpBroker::open(url, options).await?);
        let bus: Arc<dyn control::ControlBus> = Arc::new(amqp_control::AmqpControl::new(broker.clone()));
        return Ok((broker, Some(bus)));
    }
    Ok((open(url, options).await?, control::open(url, options).await?))
}

/// Open the broker a URL names. `options` are Celery's `broker_transport_options`.
pub async fn open(url: &BrokerUrl, options: &HashMap<String, String>) -> Result<Arc<dyn Broker>, BrokerError> {
    match url {
        BrokerUrl::Sqlite(path) => {
            let store = sqlite::SqliteStore::open(path, options).await?;
            Ok(virtual_transport::VirtualBroker::start(store, options)?)
        }
        BrokerUrl::Amqp(url) => Ok(Arc::new(amqp::AmqpBroker::open(url, options).await?)),
        BrokerUrl::Zookeeper(rest) => {
            let store = zookeeper::ZookeeperStore::open(rest, options).await?;
            Ok(virtual_transport::VirtualBroker::start(store, options)?)
        }
        BrokerUrl::Sqs(url) => {
            let store = sqs::SqsStore::open(url, options).await?;
            Ok(virtual_transport::VirtualBroker::start(store, options)?)
        }
        BrokerUrl::Redis(url) => {
            let store = redis::RedisStore::open(url, options).await?;
            Ok(virtual_transport::VirtualBroker::start(store, options)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limit no test reaches: writes that start were started by their handle.
    const NEVER: Duration = Duration::from_secs(3600);

    async fn start_soon(writes: impl std::future::Future<Output = ()>) -> bool {
        tokio::time::timeout(Duration::from_secs(10), writes).await.is_ok()
    }

    #[tokio::test]
    async fn deferred_writes_start_when_released_or_dropped() {
        let (handle, start) = DeferredWrites::at_most(NEVER);
        let started = tokio::spawn(start_soon(start));
        handle.release();
        assert!(started.await.unwrap());
        let (handle, start) = DeferredWrites::at_most(NEVER);
        drop(handle);
        assert!(start_soon(start).await);
    }

    #[tokio::test]
    async fn deferred_writes_held_too_long_start_anyway() {
        let (_held, start) = DeferredWrites::new();
        let began = std::time::Instant::now();
        assert!(start_soon(start).await, "the limit starts them");
        assert!(began.elapsed() >= DeferredWrites::AT_MOST);
    }
}
