//! kombu's "virtual transport", once for every store that has no AMQP of its own.
//!
//! A [`Store`] only puts, takes, deletes and counts payloads in named queues. This layer
//! adds what a worker needs on top: the kombu JSON envelope, delivery tags, the set of
//! reserved (unacked) messages, fair round-robin over queues, lease renewal while a task
//! runs, and the restore of messages whose holder died (their lease expired).
//!
//! (The file is not called `virtual.rs` because `virtual` is a reserved word in Rust.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Broker, BrokerError, DeferredWrites, Delivery};
use crate::batch::Batcher;
use crate::protocol::time::seconds;
use crate::protocol::Message;

/// A store's own handle for a taken message (a row id, a delivery tag, a receipt handle…).
pub type StoreTag = String;

/// A message a store handed out.
pub struct Taken {
    pub queue: String,
    pub tag: StoreTag,
    pub payload: String,
    /// The store knows it handed this message out before (SQS's receive count, SQLite's
    /// row version). Redis says so in the message: kombu's restore adds a `redelivered` header.
    pub redelivered: bool,
    /// Writes about it the store put off (see [`DeferredWrites`]).
    pub deferred_writes: Option<DeferredWrites>,
}

/// Largest message accepted; a bigger one is rejected unread (a 50 MB body is far more
/// likely an accident or an attack than a task). Transport option `max_message_size`.
const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// How often parked messages are checked for being due: the precision of a parked ETA.
const UNPARK_EVERY: Duration = Duration::from_millis(250);

/// Most acks written in one round trip.
const ACK_BATCH: usize = 512;

/// How long closing waits for the acks still being written.
const ACK_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// The few operations a store provides.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn declare(&self, queue: &str) -> Result<(), BrokerError>;
    async fn put(&self, queue: &str, payload: &str, priority: u8) -> Result<(), BrokerError>;
    /// Take up to `max` visible messages, trying `queues` in order, leasing them to this
    /// worker; if there are none, wait up to `block` for one to arrive (zero: do not wait).
    async fn take(&self, queues: &[String], max: usize, block: Duration) -> Result<Vec<Taken>, BrokerError>;
    /// Acknowledge: remove for good.
    async fn delete(&self, tag: &StoreTag) -> Result<(), BrokerError>;
    /// Acknowledge several at once; stores that can do it in one round trip override this.
    async fn delete_many(&self, tags: &[StoreTag]) -> Result<(), BrokerError> {
        for tag in tags {
            self.delete(tag).await?;
        }
        Ok(())
    }
    /// Make a taken message visible again.
    async fn restore(&self, tag: &StoreTag) -> Result<(), BrokerError>;
    /// Keep the leases of these messages fresh.
    async fn renew(&self, tags: &[StoreTag]) -> Result<(), BrokerError>;
    /// Make visible again every message whose lease is older than `timeout`.
    async fn restore_expired(&self, timeout: Duration) -> Result<u64, BrokerError>;
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError>;

    /// Keep a message until `until` (Unix seconds), then put it back on `queue`; false if
    /// this store cannot (the worker then holds the message itself).
    async fn park(&self, _queue: &str, _payload: &str, _priority: u8, _until: f64) -> Result<bool, BrokerError> {
        Ok(false)
    }

    /// Put back the parked messages that are due; how many.
    async fn unpark_due(&self) -> Result<u64, BrokerError> {
        Ok(0)
    }

    /// Publish to every subscriber of a fanout exchange (events, remote control).
    async fn fanout(&self, exchange: &str, _routing_key: &str, _payload: &str) -> Result<(), BrokerError> {
        Err(BrokerError::Operation(format!(
            "this broker has no fanout; cannot publish to {exchange}"
        )))
    }

    /// How long a taken message may go without a lease renewal before another worker
    /// gets it, unless the `visibility_timeout` transport option says otherwise.
    fn default_visibility_timeout(&self) -> Duration {
        Duration::from_secs(3600)
    }
}

struct Reserved {
    store_tag: StoreTag,
    queue: String,
}

/// The shared broker behaviour over any [`Store`].
pub struct VirtualBroker<S: Store> {
    store: Arc<S>,
    /// Acks from concurrent tasks, written together in the background.
    acks: Batcher<StoreTag, BrokerError>,
    reserved: Mutex<HashMap<u64, Reserved>>,
    next_tag: AtomicU64,
    rotation: AtomicUsize,
    max_message_size: usize,
    /// When parked messages were last checked for being due.
    last_unpark: Mutex<Instant>,
}

/// A transport option in seconds (`visibility_timeout=30`, `polling_interval=0.1`).
pub fn seconds_option(
    options: &HashMap<String, String>,
    key: &str,
    default: Duration,
) -> Result<Duration, BrokerError> {
    match options.get(key) {
        None => Ok(default),
        Some(text) => text
            .parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0)
            .and_then(seconds)
            .ok_or_else(|| {
                BrokerError::Connection(format!(
                    "transport option {key}={text:?} is not a positive number of seconds"
                ))
            }),
    }
}

impl<S: Store> VirtualBroker<S> {
    /// Wrap a store and start the lease keeper.
    pub fn start(store: S, options: &HashMap<String, String>) -> Result<Arc<VirtualBroker<S>>, BrokerError> {
        let visibility_timeout = seconds_option(options, "visibility_timeout", store.default_visibility_timeout())?;
        let max_message_size = match options.get("max_message_size") {
            None => DEFAULT_MAX_MESSAGE_SIZE,
            Some(text) => text.parse().map_err(|_| {
                BrokerError::Connection(format!(
                    "transport option max_message_size={text:?} is not a number of bytes"
                ))
            })?,
        };
        let store = Arc::new(store);
        let flush_store = store.clone();
        let acks = Batcher::start(ACK_BATCH, move |tags: Vec<StoreTag>| {
            let store = flush_store.clone();
            async move {
                let deleted = store.delete_many(&tags).await;
                if let Err(err) = &deleted {
                    tracing::error!(count = tags.len(), error = %err,
                        "cannot acknowledge finished messages; they will be delivered again");
                }
                deleted
            }
        });
        let broker = Arc::new(VirtualBroker {
            store,
            acks,
            reserved: Mutex::new(HashMap::new()),
            next_tag: AtomicU64::new(1),
            rotation: AtomicUsize::new(0),
            max_message_size,
            last_unpark: Mutex::new(Instant::now()),
        });
        tokio::spawn(keep_leases(Arc::downgrade(&broker), visibility_timeout));
        Ok(broker)
    }

    /// Put parked messages that are due back on their queues, at most once per
    /// [`UNPARK_EVERY`] whichever worker call comes first.
    async fn unpark_when_due(&self) {
        {
            let mut last = self.last_unpark.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < UNPARK_EVERY {
                return;
            }
            *last = Instant::now();
        }
        match self.store.unpark_due().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(count = n, "parked messages are due; back on their queues"),
            Err(err) => tracing::warn!(error = %err, "cannot move due parked messages back to their queues"),
        }
    }

    fn reserved(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Reserved>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, tag: u64) -> Result<Reserved, BrokerError> {
        self.reserved().remove(&tag).ok_or(BrokerError::UnknownTag(tag))
    }

    /// The queues in the order to try them this time: one further each call, so that
    /// every queue gets its turn (fair round robin).
    fn rotated(&self, queues: &[String]) -> Vec<String> {
        let start = self.rotation.fetch_add(1, Ordering::Relaxed);
        (0..queues.len())
            .map(|i| queues[(start + i) % queues.len()].clone())
            .collect()
    }

    /// Reserve a taken message, or reject it if it cannot be a task message.
    async fn accept(&self, taken: Taken) -> Result<Option<Delivery>, BrokerError> {
        let Taken {
            queue,
            tag: store_tag,
            payload,
            redelivered,
            deferred_writes,
        } = taken;
        let message = if payload.len() > self.max_message_size {
            Err(format!(
                "message of {} bytes exceeds max_message_size ({} bytes)",
                payload.len(),
                self.max_message_size
            ))
        } else {
            Message::from_envelope_json(&payload).map_err(|e| e.to_string())
        };
        match message {
            Ok(message) => {
                let redelivered =
                    redelivered || message.headers.get("redelivered") == Some(&serde_json::Value::Bool(true));
                let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
                self.reserved().insert(
                    tag,
                    Reserved {
                        store_tag,
                        queue: queue.clone(),
                    },
                );
                Ok(Some(Delivery {
                    message,
                    queue,
                    tag,
                    redelivered,
                    deferred_writes,
                }))
            }
            Err(error) => {
                // The delete below waits for them.
                drop(deferred_writes);
                let preview: String = payload.chars().take(120).collect();
                let task_id = sniff_task_id(&payload).unwrap_or("?");
                tracing::error!(queue = %queue, store_tag = %store_tag, task_id = %task_id, error = %error,
                    payload = %preview, "rejecting malformed message");
                self.store.delete(&store_tag).await?;
                Ok(None)
            }
        }
    }
}
/// The task id of a message that cannot be decoded, found without parsing it (it may be
/// huge): the last `"id"` key of the text, which in kombu's envelope is in the headers,
/// after the base64 body.
fn sniff_task_id(payload: &str) -> Option<&str> {
    ["\"id\": \"", "\"id\":\""].iter().find_map(|key| {
        let start = payload.rfind(key)? + key.len();
        let len = payload[start..].find('"')?;
        Some(&payload[start..start + len]).filter(|id| id.len() <= 200)
    })
}

/// Renew the leases of reserved messages, and restore those of dead workers.
async fn keep_leases<S: Store>(broker: Weak<VirtualBroker<S>>, visibility_timeout: Duration) {
    let period = (visibility_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        let Some(broker) = broker.upgrade() else { return };
        let tags: Vec<StoreTag> = broker.reserved().values().map(|r| r.store_tag.clone()).collect();
        if !tags.is_empty() {
            if let Err(err) = broker.store.renew(&tags).await {
                tracing::warn!(error = %err, "could not renew message leases");
            }
        }
        match broker.store.restore_expired(visibility_timeout).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(count = n, "restored messages whose worker stopped renewing them"),
            Err(err) => tracing::warn!(error = %err, "could not restore expired messages"),
        }
    }
}

#[async_trait]
impl<S: Store> Broker for VirtualBroker<S> {
    async fn declare(&self, queues: &[String]) -> Result<(), BrokerError> {
        for queue in queues {
            self.store.declare(queue).await?;
        }
        Ok(())
    }

    async fn receive(&self, queues: &[String], max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        self.unpark_when_due().await;
        let mut out = Vec::new();
        if queues.is_empty() || max == 0 {
            return Ok(out);
        }
        for taken in self.store.take(&self.rotated(queues), max, wait).await? {
            out.extend(self.accept(taken).await?);
        }
        Ok(out)
    }
    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        // Acks, hand-backs and parking wait for the message's deferred record: let it go.
        delivery.release_deferred_writes();
        let reserved = self.release(delivery.tag)?;
        // Not awaited: the task's reservation then goes at once, and the worker takes the
        // next messages while the ack is written, as kombu's AMQP acks are sent and not
        // confirmed (Redis drains of 30,000 `math.add`, 8 rounds: +6.3% a round, ahead in 6).
        Ok(self.acks.send(reserved.store_tag)?)
    }

    async fn reject(&self, delivery: &Delivery, requeue: bool) -> Result<(), BrokerError> {
        delivery.release_deferred_writes();
        let reserved = self.release(delivery.tag)?;
        if requeue {
            self.store.restore(&reserved.store_tag).await
        } else {
            self.store.delete(&reserved.store_tag).await
        }
    }

    async fn park(&self, delivery: &Delivery, until: DateTime<Utc>) -> Result<bool, BrokerError> {
        delivery.release_deferred_writes();
        let until = until.timestamp_millis() as f64 / 1000.0;
        let payload = delivery.message.to_envelope_json();
        if !self
            .store
            .park(&delivery.queue, &payload, delivery.message.properties.priority, until)
            .await?
        {
            return Ok(false);
        }
        self.ack(delivery).await?;
        Ok(true)
    }

    async fn publish(&self, queue: &str, message: &Message) -> Result<(), BrokerError> {
        self.store
            .put(queue, &message.to_envelope_json(), message.properties.priority)
            .await
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        self.store.purge(queue).await
    }

    async fn publish_fanout(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        self.store
            .fanout(exchange, routing_key, &message.to_envelope_json())
            .await
    }

    async fn close(&self) -> Result<(), BrokerError> {
        if tokio::time::timeout(ACK_FLUSH_WAIT, self.acks.flushed()).await.is_err() {
            tracing::warn!("acks still unwritten after {ACK_FLUSH_WAIT:?}; those tasks may be delivered again");
        }
        let held: Vec<(u64, Reserved)> = self.reserved().drain().collect();
        for (_, reserved) in held {
            tracing::info!(queue = %reserved.queue, "returning unstarted message to its queue");
            self.store.restore(&reserved.store_tag).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::sniff_task_id;

    #[test]
    fn finds_the_id_of_an_undecodable_message() {
        let payload = r#"{"body": "AAAA", "headers": {"root_id": "r", "id": "abc-1", "parent_id": null}}"#;
        assert_eq!(sniff_task_id(payload), Some("abc-1"));
        assert_eq!(sniff_task_id(r#"{"headers":{"id":"x"}}"#), Some("x"));
        assert_eq!(sniff_task_id("not json"), None);
    }
}
