//! RabbitMQ (AMQP 0-9-1) through `lapin`, with Celery's topology: for each queue a
//! durable direct exchange and a durable queue of the same name, bound by that name.
//! Messages are pushed by the server up to `prefetch` (basic.qos); acks are late;
//! everything published waits for the publisher confirm.
//!
//! The connection is re-opened on demand: when it or the channel fails, the next
//! operation reconnects, re-declares and re-consumes. Messages delivered on the dead
//! channel were not acked, so RabbitMQ delivers them again.
//!
//! Acks from concurrent tasks are written together (`amqp_acks`): one multiple ack per
//! batch rather than a frame, and a wake-up of lapin's I/O thread, per message; an ack
//! that cannot join a multiple one yet waits a few milliseconds for the chance.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Acker;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

use tokio::sync::{mpsc, Mutex};

use super::amqp_acks::{AckLedger, SINGLE_ACK_HOLD};
use super::amqp_connect::{self, FrameMax, FIRST_FRAME_MAX};
use super::amqp_parking::DelayQueues;
use super::{Broker, BrokerError, Delivery, Window};
use crate::batch::{Batcher, Linger};
use crate::config::redact;
use crate::protocol::amqp_table::{headers_to_table, table_to_headers};
use crate::protocol::{DeliveryInfo, Message, Properties};

struct Live {
    connection: Connection,
    channel: Channel,
    /// The frame size this connection asked for: what its consumers report a frame too
    /// large against (the broker's `frame_max` may have been raised since it opened).
    frame_max: u32,
}

/// Most acks written in one go.
const ACK_BATCH: usize = 1024;

/// A delivery the worker holds, and the channel (by generation) it came on.
struct Held {
    generation: u64,
    channel_tag: u64,
    acker: Acker,
}

/// The channel acks go to, and its ledger; both replaced on reconnect.
#[derive(Default)]
struct AckChannel {
    generation: u64,
    channel: Option<Channel>,
    ledger: AckLedger,
    /// A flush of held-back acks is scheduled.
    timer_armed: bool,
    /// The window is [`Window::Fair`]: acks are not held back, each one lets the next
    /// message come.
    prompt: bool,
}

type Acks = Arc<SyncMutex<AckChannel>>;

fn lock(acks: &Acks) -> std::sync::MutexGuard<'_, AckChannel> {
    acks.lock().unwrap_or_else(|e| e.into_inner())
}

/// Send the acks for a batch of finished deliveries: one multiple ack for the run the
/// ledger allows, single acks for those it no longer holds back, and a later flush for
/// those it still does. Deliveries from a channel that has since died need nothing:
/// RabbitMQ redelivers them. `now` is when to plan for: a moment past every hold sends
/// everything.
async fn flush_acks(acks: &Acks, batch: Vec<Held>, now: Instant) -> Result<(), BrokerError> {
    let (channel, plan) = {
        let mut current = lock(acks);
        let generation = current.generation;
        let tags = batch
            .iter()
            .filter(|held| held.generation == generation)
            .map(|held| held.channel_tag);
        // Planning past every hold sends all that is finished.
        let now = if current.prompt { now + SINGLE_ACK_HOLD } else { now };
        let plan = current.ledger.plan(tags.collect::<Vec<_>>(), now);
        if let Some(at) = plan.again_at.filter(|_| !current.timer_armed) {
            current.timer_armed = true;
            tokio::spawn(flush_held_acks(acks.clone(), at));
        }
        (current.channel.clone(), plan)
    };
    let Some(channel) = channel else {
        return Err(BrokerError::Operation("amqp: no channel to acknowledge on".into()));
    };
    if let Some(tag) = plan.up_to {
        channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(op)?;
    }
    for tag in plan.singles {
        channel.basic_ack(tag, BasicAckOptions::default()).await.map_err(op)?;
    }
    Ok(())
}

/// At `at`, send the acks the ledger held back (boxed: it is spawned from `flush_acks`).
fn flush_held_acks(acks: Acks, at: Instant) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        tokio::time::sleep_until(at.into()).await;
        lock(&acks).timer_armed = false;
        if let Err(err) = flush_acks(&acks, Vec::new(), Instant::now()).await {
            tracing::warn!(error = %err, "cannot acknowledge finished messages; they will be delivered again");
        }
    })
}

/// Queue arguments from transport options: `max_priority` and `queue_type` (quorum).
fn queue_arguments(options: &HashMap<String, String>) -> Result<FieldTable, BrokerError> {
    let mut arguments = FieldTable::default();
    if let Some(max) = options.get("max_priority") {
        let max: u8 = max
            .parse()
            .map_err(|_| BrokerError::Connection(format!("transport option max_priority={max:?} is not 0-255")))?;
        arguments.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(max));
    }
    if let Some(kind) = options.get("queue_type") {
        arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.clone().into()));
    }
    Ok(arguments)
}

pub struct AmqpBroker {
    url: String,
    queue_arguments: FieldTable,
    live: Mutex<Option<Live>>,
    /// What to consume after a reconnect: queues and prefetch (0: none for now).
    consuming: SyncMutex<Option<(Vec<String>, u16)>>,
    /// Deliveries from every consumer, with the generation of their channel.
    inbox: Mutex<mpsc::UnboundedReceiver<(u64, lapin::message::Delivery)>>,
    inbox_sender: mpsc::UnboundedSender<(u64, lapin::message::Delivery)>,
    held: Arc<SyncMutex<HashMap<u64, Held>>>,
    /// The consumer of each queue on the live channel, for `cancel_queue`.
    consumer_tags: SyncMutex<HashMap<String, String>>,
    next_tag: AtomicU64,
    acks: Acks,
    ack_batcher: Batcher<Held, BrokerError>,
    /// Where messages with a far-off ETA wait (`amqp_parking`).
    pub(super) delay_queues: DelayQueues,
    /// The frame size the next connection asks for (`amqp_connect`).
    frame_max: Arc<FrameMax>,
}

pub(super) fn op(err: lapin::Error) -> BrokerError {
    BrokerError::Operation(format!("amqp: {err}"))
}

/// How long RabbitMQ gets to answer the steps that hold the live connection.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// How often a step waiting on an answer looks whether its connection is still up.
const WATCH_CONNECTION_EVERY: Duration = Duration::from_millis(50);

/// `step`, failed if `connection` (when it has one yet) closes first, or if RabbitMQ has not
/// answered within [`ANSWER_WITHIN`]. lapin leaves a request unanswered when the connection
/// dies under it (seen: a channel opened just as the connection closed on a frame too
/// large), and a step that holds the live connection must not wait on it: the next
/// operation reconnects.
async fn answered<T>(
    step: &str,
    connection: Option<&Connection>,
    work: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    let closed = async {
        loop {
            tokio::time::sleep(WATCH_CONNECTION_EVERY).await;
            if connection.is_some_and(|c| !c.status().connected()) {
                return;
            }
        }
    };
    tokio::select! {
        result = work => result,
        () = closed => Err(BrokerError::Operation(format!("amqp: the connection closed while {step}"))),
        () = tokio::time::sleep(ANSWER_WITHIN) => Err(BrokerError::Operation(format!(
            "amqp: no answer from RabbitMQ in {ANSWER_WITHIN:?} while {step}"
        ))),
    }
}

impl AmqpBroker {
    pub async fn open(url: &str, options: &HashMap<String, String>) -> Result<AmqpBroker, BrokerError> {
        let (inbox_sender, inbox) = mpsc::unbounded_channel();
        let acks = Acks::default();
        let flush_to = acks.clone();
        let held: Arc<SyncMutex<HashMap<u64, Held>>> = Arc::default();
        let still_held = held.clone();
        // Acks wait while they are fewer than the deliveries still unacknowledged: half
        // the window is acked while the other half runs.
        let linger = Linger::until(move || still_held.lock().unwrap_or_else(|e| e.into_inner()).len());
        let ack_batcher = Batcher::start_lingering(ACK_BATCH, Some(linger), move |batch: Vec<Held>| {
            let acks = flush_to.clone();
            async move { flush_acks(&acks, batch, Instant::now()).await }
        });
        let broker = AmqpBroker {
            url: url.to_owned(),
            queue_arguments: queue_arguments(options)?,
            live: Mutex::new(None),
            consuming: SyncMutex::new(None),
            inbox: Mutex::new(inbox),
            inbox_sender,
            held,
            consumer_tags: SyncMutex::new(HashMap::new()),
            next_tag: AtomicU64::new(1),
            acks,
            ack_batcher,
            delay_queues: DelayQueues::default(),
            frame_max: Arc::new(FrameMax::starting_at(FIRST_FRAME_MAX)),
        };
        broker
            .channel()
            .await
            .map_err(|e| BrokerError::Connection(format!("cannot connect to {}: {e}", redact(url))))?;
        Ok(broker)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live channel, reconnecting (and re-consuming) if the last one died.
    pub(super) async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut live = self.live.lock().await;
        if let Some(current) = live.as_ref() {
            if current.channel.status().connected() && current.connection.status().connected() {
                return Ok(current.channel.clone());
            }
            tracing::warn!(url = %redact(&self.url), "AMQP connection lost; reconnecting");
        }
        let fresh = answered("reconnecting", None, self.open_live()).await?;
        let channel = fresh.channel.clone();
        *live = Some(fresh);
        Ok(channel)
    }

    /// A new connection and channel, consuming what the worker consumes.
    async fn open_live(&self) -> Result<Live, BrokerError> {
        let frame_max = self.frame_max.get();
        let connection = amqp_connect::connect(&self.url, frame_max).await.map_err(op)?;
        let channel = connection.create_channel().await.map_err(op)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(op)?;
        // Delivery tags start again at 1 on the new channel.
        let generation = {
            let mut acks = lock(&self.acks);
            *acks = AckChannel {
                generation: acks.generation + 1,
                channel: Some(channel.clone()),
                ledger: AckLedger::default(),
                // A flush already scheduled still comes, and finds the new ledger.
                timer_armed: acks.timer_armed,
                prompt: acks.prompt,
            };
            acks.generation
        };
        let consuming = self.consuming.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((queues, prefetch)) = consuming {
            for queue in &queues {
                self.declare_on(&channel, queue).await?;
            }
            self.consume_on(&channel, &queues, prefetch, generation, frame_max)
                .await?;
        }
        Ok(Live {
            connection,
            channel,
            frame_max,
        })
    }

    /// A channel of its own on the broker's connection (re-opened if it died), for remote
    /// control and events: an error on it closes that channel only, never the task channel.
    pub async fn open_channel(&self) -> Result<Channel, BrokerError> {
        self.channel().await?;
        let live = self.live.lock().await;
        let live = live.as_ref().ok_or(BrokerError::Closed)?;
        answered("opening a channel", Some(&live.connection), async {
            live.connection.create_channel().await.map_err(op)
        })
        .await
    }

    /// Consume `queues` with `prefetch` unacked messages each (RabbitMQ applies
    /// `basic.qos` to consumers started after it); none while `prefetch` is 0.
    async fn consume_on(
        &self,
        channel: &Channel,
        queues: &[String],
        prefetch: u16,
        generation: u64,
        frame_max: u32,
    ) -> Result<(), BrokerError> {
        if prefetch == 0 {
            return Ok(());
        }
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(op)?;
        for queue in queues {
            self.start_consumer(channel, queue, generation, frame_max).await?;
        }
        Ok(())
    }

    /// Forward the deliveries of `queue` to the inbox, tagged with the channel's generation;
    /// `asked` is the frame size of the channel's connection.
    async fn start_consumer(
        &self,
        channel: &Channel,
        queue: &str,
        generation: u64,
        asked: u32,
    ) -> Result<(), BrokerError> {
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(op)?;
        self.consumer_tags()
            .insert(queue.to_owned(), consumer.tag().as_str().to_owned());
        let inbox = self.inbox_sender.clone();
        let queue = queue.to_owned();
        // Not the broker's current size: a connection opened while another consumer was
        // raising it asked for the old one, and reporting against the new one raised it
        // twice (two reconnects where one does).
        let frame_max = self.frame_max.clone();
        tokio::spawn(async move {
            let mut consumer = consumer;
            while let Some(delivery) = consumer.next().await {
                match delivery {
                    Ok(delivery) => {
                        if inbox.send((generation, delivery)).is_err() {
                            return;
                        }
                    }
                    Err(err) if amqp_connect::is_frame_too_large(&err) => {
                        // Each consumer on the connection reports it; the first one raises.
                        if let Some(next) = frame_max.raise_from(asked) {
                            tracing::warn!(queue = %queue, error = %err, frame_max = next,
                                "a message's headers did not fit in one frame; reconnecting with larger frames (0: the server's largest)");
                        }
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(queue = %queue, error = %err, "AMQP consumer stopped");
                        return;
                    }
                }
            }
        });
        Ok(())
    }

    fn consumer_tags(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.consumer_tags.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Celery's declaration of a queue: direct exchange and durable queue, one name.
    async fn declare_on(&self, channel: &Channel, queue: &str) -> Result<(), BrokerError> {
        channel
            .exchange_declare(
                queue.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(op)?;
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                self.queue_arguments.clone(),
            )
            .await
            .map_err(op)?;
        channel
            .queue_bind(
                queue.into(),
                queue.into(),
                queue.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(op)
    }

    fn to_delivery(&self, (generation, delivery): (u64, lapin::message::Delivery)) -> Delivery {
        let message = message_of(
            &delivery.properties,
            delivery.data,
            &delivery.exchange,
            &delivery.routing_key,
        );
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        self.held().insert(
            tag,
            Held {
                generation,
                channel_tag: delivery.delivery_tag,
                acker: delivery.acker,
            },
        );
        let queue = message.properties.delivery_info.routing_key.clone();
        Delivery {
            message,
            queue,
            tag,
            redelivered: delivery.redelivered,
            deferred_writes: None,
        }
    }

    /// Return to the queue every delivery the worker has not taken yet, for other
    /// workers to take.
    async fn hand_back_waiting(&self) {
        let mut inbox = self.inbox.lock().await;
        let mut returned = 0;
        while let Ok((generation, delivery)) = inbox.try_recv() {
            if generation != lock(&self.acks).generation {
                continue; // its channel died, and RabbitMQ took it back then
            }
            if let Err(err) = delivery.acker.reject(BasicRejectOptions { requeue: true }).await {
                tracing::warn!(error = %err, "cannot hand back a waiting message; it returns when the channel closes");
                continue;
            }
            lock(&self.acks).ledger.rejected(delivery.delivery_tag);
            returned += 1;
        }
        if returned > 0 {
            tracing::debug!(returned, "long tasks hold the executors: waiting messages handed back");
        }
    }

    pub(super) async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        let properties = properties_of(message);
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &message.body,
                properties,
            )
            .await
            .map_err(op)?;
        let confirmation = confirm.await.map_err(op)?;
        if confirmation.is_nack() {
            return Err(BrokerError::Operation(format!(
                "RabbitMQ refused the message for {routing_key}"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn declare(&self, queues: &[String]) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        for queue in queues {
            self.declare_on(&channel, queue).await?;
        }
        Ok(())
    }

    async fn consume(&self, queues: &[String], prefetch: usize) -> Result<(), BrokerError> {
        *self.consuming.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((queues.to_vec(), prefetch.min(u16::MAX as usize) as u16));
        // Force a fresh channel so the consumers start with the right prefetch.
        if let Some(live) = self.live.lock().await.take() {
            let _ = live.connection.close(200, "reconfiguring".into()).await;
        }
        self.channel().await.map(|_| ())
    }

    async fn add_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        let prefetch = match self.consuming.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some((queues, prefetch)) => {
                queues.push(queue.to_owned());
                *prefetch
            }
            None => 0,
        };
        self.declare_on(&channel, queue).await?;
        let generation = lock(&self.acks).generation;
        let asked = self
            .live
            .lock()
            .await
            .as_ref()
            .map_or(self.frame_max.get(), |live| live.frame_max);
        self.consume_on(&channel, &[queue.to_owned()], prefetch, generation, asked)
            .await
    }

    fn sends_ahead(&self) -> bool {
        true
    }

    /// RabbitMQ keeps a consumer's prefetch for its life, so a new window means new
    /// consumers: cancel, then consume again with the new `basic.qos`. Deliveries the old
    /// consumers made stay valid on the channel.
    async fn set_window(&self, window: Window) -> Result<(), BrokerError> {
        let (Window::Ahead(size) | Window::Fair(size)) = window;
        let size = size.min(u16::MAX as usize) as u16;
        let fair = matches!(window, Window::Fair(_));
        lock(&self.acks).prompt = fair;
        let queues = {
            let mut consuming = self.consuming.lock().unwrap_or_else(|e| e.into_inner());
            match consuming.as_mut() {
                Some((queues, prefetch)) if *prefetch != size => {
                    *prefetch = size;
                    queues.clone()
                }
                _ => return Ok(()),
            }
        };
        let live = self.live.lock().await;
        // Without a live channel, the next one is consumed with the new window.
        let Some(Live {
            connection,
            channel,
            frame_max,
        }) = live.as_ref()
        else {
            return Ok(());
        };
        answered("resizing the prefetch window", Some(connection), async {
            let tags: Vec<String> = self.consumer_tags().drain().map(|(_, tag)| tag).collect();
            for tag in tags {
                channel
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await
                    .map_err(op)?;
            }
            if fair {
                self.hand_back_waiting().await;
            }
            let generation = lock(&self.acks).generation;
            self.consume_on(channel, &queues, size, generation, *frame_max).await
        })
        .await
    }

    async fn cancel_queue(&self, queue: &str) -> Result<(), BrokerError> {
        if let Some((queues, _)) = self.consuming.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            queues.retain(|q| q != queue);
        }
        let Some(tag) = self.consumer_tags().remove(queue) else {
            return Ok(());
        };
        let channel = self.channel().await?;
        channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await
            .map_err(op)
    }

    async fn receive(&self, _queues: &[String], max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        // A dead connection is noticed (and replaced) here, not only when publishing.
        self.channel().await?;
        let mut inbox = self.inbox.lock().await;
        let mut out = Vec::new();
        if let Ok(Some(first)) = tokio::time::timeout(wait, inbox.recv()).await {
            out.push(self.to_delivery(first));
            while out.len() < max {
                match inbox.try_recv() {
                    Ok(next) => out.push(self.to_delivery(next)),
                    Err(_) => break,
                }
            }
        }
        Ok(out)
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        let held = self
            .held()
            .remove(&delivery.tag)
            .ok_or(BrokerError::UnknownTag(delivery.tag))?;
        self.ack_batcher.submit(held).await.map_err(BrokerError::shared)
    }

    async fn reject(&self, delivery: &Delivery, requeue: bool) -> Result<(), BrokerError> {
        let held = self
            .held()
            .remove(&delivery.tag)
            .ok_or(BrokerError::UnknownTag(delivery.tag))?;
        held.acker.reject(BasicRejectOptions { requeue }).await.map_err(op)?;
        let mut acks = lock(&self.acks);
        if acks.generation == held.generation {
            acks.ledger.rejected(held.channel_tag);
        }
        Ok(())
    }

    async fn park(&self, delivery: &Delivery, until: DateTime<Utc>) -> Result<bool, BrokerError> {
        super::amqp_parking::park(self, delivery, until).await
    }

    async fn publish(&self, queue: &str, message: &Message) -> Result<(), BrokerError> {
        // Celery publishes to the default exchange with the queue name as routing key.
        self.publish_to("", queue, message).await
    }

    async fn publish_fanout(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        self.publish_to(exchange, routing_key, message).await
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let channel = self.channel().await?;
        let count = channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .map_err(op)?;
        Ok(count.into())
    }

    async fn close(&self) -> Result<(), BrokerError> {
        // Acks still held back go now, so those tasks are not delivered again.
        if let Err(err) = flush_acks(&self.acks, Vec::new(), Instant::now() + SINGLE_ACK_HOLD).await {
            tracing::warn!(error = %err, "cannot acknowledge finished messages; they will be delivered again");
        }
        // Closing the connection hands every unacknowledged message back to RabbitMQ.
        if let Some(live) = self.live.lock().await.take() {
            live.connection.close(200, "worker shutdown".into()).await.map_err(op)?;
        }
        Ok(())
    }
}

/// A received AMQP message as a broker-neutral [`Message`].
pub(super) fn message_of(
    properties: &BasicProperties,
    body: Vec<u8>,
    exchange: &ShortString,
    routing_key: &ShortString,
) -> Message {
    let p = properties;
    let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_owned());
    Message {
        body,
        content_type: text(p.content_type()).unwrap_or_else(|| "application/json".into()),
        content_encoding: text(p.content_encoding()).unwrap_or_else(|| "utf-8".into()),
        headers: p.headers().as_ref().map(table_to_headers).unwrap_or_default(),
        properties: Properties {
            correlation_id: text(p.correlation_id()),
            reply_to: text(p.reply_to()),
            delivery_mode: p.delivery_mode().unwrap_or(2),
            priority: p.priority().unwrap_or(0),
            delivery_info: DeliveryInfo {
                exchange: exchange.as_str().to_owned(),
                routing_key: routing_key.as_str().to_owned(),
            },
        },
    }
}

/// The AMQP properties for publishing a [`Message`].
pub(super) fn properties_of(message: &Message) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_content_type(message.content_type.as_str().into())
        .with_content_encoding(message.content_encoding.as_str().into())
        .with_headers(headers_to_table(&message.headers))
        .with_delivery_mode(message.properties.delivery_mode)
        .with_priority(message.properties.priority);
    if let Some(id) = &message.properties.correlation_id {
        properties = properties.with_correlation_id(id.as_str().into());
    }
    if let Some(reply_to) = &message.properties.reply_to {
        properties = properties.with_reply_to(reply_to.as_str().into());
    }
    properties
}
