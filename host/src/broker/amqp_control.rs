//! Remote control and events over RabbitMQ, with kombu's declarations (flags and
//! arguments must match exactly, or RabbitMQ refuses the redeclaration and closes the
//! channel): `celery.pidbox` fanout and `reply.celery.pidbox` direct, both non-durable;
//! `celeryev` topic, durable; the worker's `<node>.celery.pidbox` queue exclusive and
//! auto-delete, with kombu's message TTL and expiry.
//!
//! Requests arrive on a channel of their own, replies and events go out on a second one,
//! both on the worker's AMQP connection (a connection costs the worker ~9 MB, a channel
//! next to nothing), re-opened after a loss. Replies and events go without publisher
//! confirms: they are fire-and-forget in Celery too (`delivery_mode` 1).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer, ExchangeKind};
use tokio::sync::{mpsc, Mutex};

use super::amqp::{message_of, op, properties_of, AmqpBroker};
use super::control::{
    back_off, node_queue, reply_queue, ControlBus, CONTROL_MESSAGE_TTL_MS, CONTROL_QUEUE_EXPIRES_MS, EVENT_EXCHANGE,
    PIDBOX_EXCHANGE, REPLY_EXCHANGE, REQUEST_BACKLOG,
};
use super::BrokerError;
use crate::protocol::Message;

pub struct AmqpControl {
    broker: Arc<AmqpBroker>,
    /// For replies and events; re-opened when it dies.
    publisher: Mutex<Option<Channel>>,
}

async fn declare_exchange(channel: &Channel, name: &str, kind: ExchangeKind, durable: bool) -> Result<(), BrokerError> {
    let options = ExchangeDeclareOptions {
        durable,
        ..Default::default()
    };
    channel
        .exchange_declare(name.into(), kind, options, FieldTable::default())
        .await
        .map_err(op)
}

/// A control queue as kombu declares it: exclusive, auto-delete, with TTL and expiry;
/// bound to `exchange` by `routing_key`; consumed without acks.
async fn consume_control_queue(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<Consumer, BrokerError> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-message-ttl".into(), AMQPValue::LongUInt(CONTROL_MESSAGE_TTL_MS));
    arguments.insert("x-expires".into(), AMQPValue::LongUInt(CONTROL_QUEUE_EXPIRES_MS));
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), options, arguments)
        .await
        .map_err(op)?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(op)?;
    let options = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    channel
        .basic_consume(queue.into(), "".into(), options, FieldTable::default())
        .await
        .map_err(op)
}

/// The worker's request queue on a fresh channel.
async fn subscribe(broker: &AmqpBroker, node: &str) -> Result<(Channel, Consumer), BrokerError> {
    let channel = broker.open_channel().await?;
    declare_exchange(&channel, PIDBOX_EXCHANGE, ExchangeKind::Fanout, false).await?;
    let consumer = consume_control_queue(&channel, &node_queue(node), PIDBOX_EXCHANGE, "").await?;
    Ok((channel, consumer))
}

/// Forward every request to `requests`, re-opening the channel after each loss, until
/// the receiving side is dropped.
async fn relay(broker: Arc<AmqpBroker>, node: String, requests: mpsc::Sender<Message>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let (channel, mut consumer) = match subscribe(&broker, &node).await {
            Ok(subscribed) => subscribed,
            Err(err) => {
                tracing::warn!(error = %err, "remote control: cannot subscribe; retrying");
                back_off(&mut delay).await;
                continue;
            }
        };
        delay = Duration::from_millis(100);
        while let Some(Ok(delivery)) = consumer.next().await {
            let request = message_of(
                &delivery.properties,
                delivery.data,
                &delivery.exchange,
                &delivery.routing_key,
            );
            if requests.is_closed() {
                break;
            }
            if requests.try_send(request).is_err() {
                tracing::warn!("remote control: too many requests waiting; dropping one");
            }
        }
        if requests.is_closed() {
            let _ = channel.close(200, "worker stopping".into()).await;
            return;
        }
        tracing::warn!("remote control: lost the AMQP channel; re-opening it");
        back_off(&mut delay).await;
    }
}

impl AmqpControl {
    pub fn new(broker: Arc<AmqpBroker>) -> AmqpControl {
        AmqpControl {
            broker,
            publisher: Mutex::new(None),
        }
    }

    /// Publish on the shared publishing channel, re-opening it once if it had died.
    async fn publish(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        let mut publisher = self.publisher.lock().await;
        for attempt in 0..2 {
            let channel = match publisher.as_ref() {
                Some(channel) if channel.status().connected() => channel.clone(),
                _ => {
                    let channel = self.broker.open_channel().await?;
                    declare_exchange(&channel, EVENT_EXCHANGE, ExchangeKind::Topic, true).await?;
                    declare_exchange(&channel, REPLY_EXCHANGE, ExchangeKind::Direct, false).await?;
                    *publisher = Some(channel.clone());
                    channel
                }
            };
            let sent = channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    &message.body,
                    properties_of(message),
                )
                .await;
            match sent {
                Ok(_) => return Ok(()),
                Err(err) if attempt == 0 => {
                    tracing::debug!(error = %err, "control channel failed; re-opening it");
                    *publisher = None;
                }
                Err(err) => return Err(op(err)),
            }
        }
        Err(BrokerError::Closed)
    }
}

#[async_trait]
impl ControlBus for AmqpControl {
    async fn listen(&self, node: &str) -> Result<mpsc::Receiver<Message>, BrokerError> {
        let (sender, receiver) = mpsc::channel(REQUEST_BACKLOG);
        tokio::spawn(relay(self.broker.clone(), node.to_owned(), sender));
        Ok(receiver)
    }

    async fn reply(&self, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        self.publish(REPLY_EXCHANGE, routing_key, message).await
    }

    async fn event(&self, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        self.publish(EVENT_EXCHANGE, routing_key, message).await
    }

    async fn broadcast(
        &self,
        request: &Message,
        client_id: &str,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Message>, BrokerError> {
        let channel = self.broker.open_channel().await?;
        declare_exchange(&channel, REPLY_EXCHANGE, ExchangeKind::Direct, false).await?;
        declare_exchange(&channel, PIDBOX_EXCHANGE, ExchangeKind::Fanout, false).await?;
        let mut consumer = consume_control_queue(&channel, &reply_queue(client_id), REPLY_EXCHANGE, client_id).await?;
        channel
            .basic_publish(
                PIDBOX_EXCHANGE.into(),
                "".into(),
                BasicPublishOptions::default(),
                &request.body,
                properties_of(request),
            )
            .await
            .map_err(op)?;
        let until = Instant::now() + timeout;
        let mut replies = Vec::new();
        while limit.is_none_or(|limit| replies.len() < limit) {
            let next = tokio::time::timeout_at(until.into(), consumer.next()).await;
            let Ok(Some(Ok(delivery))) = next else { break };
            replies.push(message_of(
                &delivery.properties,
                delivery.data,
                &delivery.exchange,
                &delivery.routing_key,
            ));
        }
        let _ = channel.close(200, "control client done".into()).await;
        Ok(replies)
    }
}
