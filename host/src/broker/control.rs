//! kombu's broadcast side of a broker: remote control (the "pidbox") and events
//! (`celeryev`), on the brokers that can fan out: RabbitMQ and Redis. It runs on its own
//! connection, so a control or event failure never disturbs the task channel.
//!
//! A request to every worker goes to the fanout exchange `celery.pidbox`; each worker
//! answers on the direct exchange `reply.celery.pidbox`, routed by the client's id.
//! Events go to `celeryev` with the event type as routing key (`worker.heartbeat`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::amqp::AmqpBroker;
use super::{amqp_control, redis_control, BrokerError};
use crate::config::BrokerUrl;
use crate::protocol::Message;

/// Remote-control requests, to every worker.
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";
/// Replies to remote-control requests, routed by the client's id.
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";
/// Monitoring events.
pub const EVENT_EXCHANGE: &str = "celeryev";
/// How long a control message or reply may wait in a queue (kombu's 300 s).
pub const CONTROL_MESSAGE_TTL_MS: u32 = 300_000;
/// How long an unused control queue lives (kombu's 10 s).
pub const CONTROL_QUEUE_EXPIRES_MS: u32 = 10_000;
/// Requests waiting for the worker to take them; beyond this they are dropped.
pub const REQUEST_BACKLOG: usize = 256;
/// Longest pause between attempts to re-open a lost control connection.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// The queue a worker's remote-control requests arrive on.
pub fn node_queue(node: &str) -> String {
    format!("{node}.{PIDBOX_EXCHANGE}")
}

/// The queue a control client's replies arrive on.
pub fn reply_queue(client_id: &str) -> String {
    format!("{client_id}.{REPLY_EXCHANGE}")
}

#[async_trait]
pub trait ControlBus: Send + Sync {
    /// Receive the remote-control requests sent to every worker, as node `node`. The
    /// stream outlives lost connections: it reconnects and subscribes again.
    async fn listen(&self, node: &str) -> Result<mpsc::Receiver<Message>, BrokerError>;
    /// Send a reply to the client whose id is `routing_key`.
    async fn reply(&self, routing_key: &str, message: &Message) -> Result<(), BrokerError>;
    /// Publish an event with `routing_key` (`worker.heartbeat`, `task.multi`).
    async fn event(&self, routing_key: &str, message: &Message) -> Result<(), BrokerError>;
    /// Client side: send `request` to every worker, then collect the replies routed to
    /// `client_id` for up to `timeout`, or until `limit` have arrived.
    async fn broadcast(
        &self,
        request: &Message,
        client_id: &str,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Message>, BrokerError>;
}

/// The control bus of a broker, for a control client; `None` for brokers without fanout
/// (SQLite, SQS, Zookeeper), which have no remote control and no broker events, as with
/// Celery. A worker uses [`super::open_with_control`], which shares the AMQP connection.
pub async fn open(
    url: &BrokerUrl,
    options: &HashMap<String, String>,
) -> Result<Option<Arc<dyn ControlBus>>, BrokerError> {
    Ok(match url {
        BrokerUrl::Amqp(url) => {
            let broker = Arc::new(AmqpBroker::open(url, options).await?);
            Some(Arc::new(amqp_control::AmqpControl::new(broker)))
        }
        BrokerUrl::Redis(url) => Some(Arc::new(redis_control::RedisControl::open(url, options).await?)),
        BrokerUrl::Sqlite(_) | BrokerUrl::Sqs(_) | BrokerUrl::Zookeeper(_) => None,
    })
}

/// Wait before the next reconnection attempt, doubling the delay up to a cap.
pub async fn back_off(delay: &mut Duration) {
    tokio::time::sleep(*delay).await;
    *delay = (*delay * 2).min(MAX_RECONNECT_DELAY);
}
