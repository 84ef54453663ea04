//! Tasks whose ETA is far off, kept in RabbitMQ instead of in a worker, so no delivery
//! stays unacked long enough to trip `consumer_timeout` (Celery issue 6760).
//!
//! Delay queues by powers of two: `celeriac.delay.<n>s` holds messages for n seconds
//! (`x-message-ttl`), then dead-letters them to the default exchange under the routing
//! key they were parked with, their own queue. Every message in one delay queue has the
//! same TTL, so they expire in arrival order (RabbitMQ expires only at a queue's head).
//! A message waits in the largest delay that does not overshoot its ETA; back in its
//! queue, the worker parks it again for what is left, or holds it once the rest is
//! short: at most log₂(delay) hops, and the ETA is kept to the worker's precision.
//! Each delay queue has a fanout exchange of the same name, so the routing key of a
//! parked message is free to name the queue it returns to.

use std::collections::HashSet;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;

use super::amqp::{op, AmqpBroker};
use super::{Broker, BrokerError, Delivery};

/// The longest delay queue: 2²⁴ s, about 194 days; longer ETAs take several hops.
const MAX_LEVEL: u32 = 24;

/// Headers RabbitMQ adds when it dead-letters a message: not carried into the next hop.
const DEATH_HEADERS: [&str; 3] = ["x-death", "x-first-death-", "x-last-death-"];

/// The delay queues declared by this broker connection.
#[derive(Default)]
pub struct DelayQueues {
    declared: Mutex<HashSet<u32>>,
}

/// The delay queue for a wait of `seconds`: the largest power of two not above it.
fn level(seconds: f64) -> u32 {
    (seconds.max(1.0).log2().floor() as u32).min(MAX_LEVEL)
}

fn name(level: u32) -> String {
    format!("celeriac.delay.{}s", 1u64 << level)
}

impl DelayQueues {
    fn is_declared(&self, level: u32) -> bool {
        self.declared.lock().unwrap_or_else(|e| e.into_inner()).contains(&level)
    }

    fn mark(&self, level: u32, declared: bool) {
        let mut set = self.declared.lock().unwrap_or_else(|e| e.into_inner());
        if declared {
            set.insert(level);
        } else {
            set.remove(&level);
        }
    }
}

/// Park `delivery` until `until`, then ack it.
pub(super) async fn park(broker: &AmqpBroker, delivery: &Delivery, until: DateTime<Utc>) -> Result<bool, BrokerError> {
    let seconds = (until - Utc::now()).num_milliseconds() as f64 / 1000.0;
    if seconds < 1.0 {
        return Ok(false);
    }
    let level = level(seconds);
    let queue = name(level);
    let delays = &broker.delay_queues;
    if !delays.is_declared(level) {
        declare(broker, level).await?;
        delays.mark(level, true);
    }
    let mut message = delivery.message.clone();
    message
        .headers
        .retain(|key, _| !DEATH_HEADERS.iter().any(|death| key.starts_with(death)));
    if let Err(err) = broker.publish_to(&queue, &delivery.queue, &message).await {
        // Declared again next time, in case it was deleted under us.
        delays.mark(level, false);
        return Err(err);
    }
    broker.ack(delivery).await?;
    Ok(true)
}

async fn declare(broker: &AmqpBroker, level: u32) -> Result<(), BrokerError> {
    let channel = broker.channel().await?;
    let queue = name(level);
    let mut arguments = FieldTable::default();
    arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt((1i64 << level) * 1000));
    arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
    let durable = |durable| ExchangeDeclareOptions {
        durable,
        ..Default::default()
    };
    channel
        .exchange_declare(
            queue.as_str().into(),
            ExchangeKind::Fanout,
            durable(true),
            FieldTable::default(),
        )
        .await
        .map_err(op)?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .map_err(op)?;
    channel
        .queue_bind(
            queue.as_str().into(),
            queue.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_goes_to_the_largest_delay_that_does_not_overshoot() {
        assert_eq!(name(level(1.0)), "celeriac.delay.1s");
        assert_eq!(name(level(59.9)), "celeriac.delay.32s");
        assert_eq!(name(level(64.0)), "celeriac.delay.64s");
        assert_eq!(level(1e12), MAX_LEVEL);
    }
}
