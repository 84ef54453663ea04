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
use std::time::Duration;

use async_trait::async_trait;

use super::{Broker, BrokerError, Delivery};
use crate::protocol::Message;

/// A store's own handle for a taken message (a row id, a receipt handle…).
pub type StoreTag = String;

/// The few operations a store provides.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn declare(&self, queue: &str) -> Result<(), BrokerError>;
    async fn put(&self, queue: &str, payload: &str, priority: u8) -> Result<(), BrokerError>;
    /// Take the next visible message, leasing it to this worker.
    async fn take(&self, queue: &str) -> Result<Option<(StoreTag, String)>, BrokerError>;
    /// Acknowledge: remove for good.
    async fn delete(&self, tag: &StoreTag) -> Result<(), BrokerError>;
    /// Make a taken message visible again.
    async fn restore(&self, tag: &StoreTag) -> Result<(), BrokerError>;
    /// Keep the leases of these messages fresh.
    async fn renew(&self, tags: &[StoreTag]) -> Result<(), BrokerError>;
    /// Make visible again every message whose lease is older than `timeout`.
    async fn restore_expired(&self, timeout: Duration) -> Result<u64, BrokerError>;
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError>;

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
    store: S,
    reserved: Mutex<HashMap<u64, Reserved>>,
    next_tag: AtomicU64,
    rotation: AtomicUsize,
    polling_interval: Duration,
}

/// Transport options, with kombu's names.
struct Options {
    visibility_timeout: Duration,
    polling_interval: Duration,
}

impl Options {
    fn parse(options: &HashMap<String, String>, default_visibility: Duration) -> Result<Options, BrokerError> {
        let seconds = |key: &str, default: f64| -> Result<Duration, BrokerError> {
            match options.get(key) {
                None => Ok(Duration::from_secs_f64(default)),
                Some(text) => text
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        BrokerError::Connection(format!(
                            "transport option {key}={text:?} is not a positive number of seconds"
                        ))
                    }),
            }
        };
        Ok(Options {
            visibility_timeout: seconds("visibility_timeout", default_visibility.as_secs_f64())?,
            polling_interval: seconds("polling_interval", 0.05)?,
        })
    }
}

impl<S: Store> VirtualBroker<S> {
    /// Wrap a store and start the lease keeper.
    pub fn start(store: S, options: &HashMap<String, String>) -> Result<Arc<VirtualBroker<S>>, BrokerError> {
        let options = Options::parse(options, store.default_visibility_timeout())?;
        let broker = Arc::new(VirtualBroker {
            store,
            reserved: Mutex::new(HashMap::new()),
            next_tag: AtomicU64::new(1),
            rotation: AtomicUsize::new(0),
            polling_interval: options.polling_interval,
        });
        tokio::spawn(keep_leases(Arc::downgrade(&broker), options.visibility_timeout));
        Ok(broker)
    }

    fn reserved(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Reserved>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, tag: u64) -> Result<Reserved, BrokerError> {
        self.reserved().remove(&tag).ok_or(BrokerError::UnknownTag(tag))
    }

    /// One pass over the queues, starting one further each time (fair round robin).
    async fn take_some(&self, queues: &[String], max: usize) -> Result<Vec<Delivery>, BrokerError> {
        let mut out = Vec::new();
        if queues.is_empty() {
            return Ok(out);
        }
        let start = self.rotation.fetch_add(1, Ordering::Relaxed);
        for i in 0..queues.len() {
            let queue = &queues[(start + i) % queues.len()];
            while out.len() < max {
                let Some((store_tag, payload)) = self.store.take(queue).await? else {
                    break;
                };
                match Message::from_envelope_json(&payload) {
                    Ok(message) => {
                        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
                        self.reserved().insert(
                            tag,
                            Reserved {
                                store_tag,
                                queue: queue.clone(),
                            },
                        );
                        out.push(Delivery {
                            message,
                            queue: queue.clone(),
                            tag,
                            redelivered: false,
                        });
                    }
                    Err(err) => {
                        let preview: String = payload.chars().take(120).collect();
                        tracing::error!(queue = %queue, store_tag = %store_tag, error = %err, payload = %preview,
                            "rejecting malformed message");
                        self.store.delete(&store_tag).await?;
                    }
                }
            }
        }
        Ok(out)
    }
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
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let got = self.take_some(queues, max).await?;
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(self.polling_interval.min(wait)).await;
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        let reserved = self.release(delivery.tag)?;
        self.store.delete(&reserved.store_tag).await
    }

    async fn reject(&self, delivery: &Delivery, requeue: bool) -> Result<(), BrokerError> {
        let reserved = self.release(delivery.tag)?;
        if requeue {
            self.store.restore(&reserved.store_tag).await
        } else {
            self.store.delete(&reserved.store_tag).await
        }
    }

    async fn publish(&self, queue: &str, message: &Message) -> Result<(), BrokerError> {
        self.store
            .put(queue, &message.to_envelope_json(), message.properties.priority)
            .await
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        self.store.purge(queue).await
    }

    async fn close(&self) -> Result<(), BrokerError> {
        let held: Vec<(u64, Reserved)> = self.reserved().drain().collect();
        for (_, reserved) in held {
            tracing::info!(queue = %reserved.queue, "returning unstarted message to its queue");
            self.store.restore(&reserved.store_tag).await?;
        }
        Ok(())
    }
}
