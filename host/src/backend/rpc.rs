//! Celery's `rpc://` result backend: each state is published through the AMQP broker to
//! the sender's `reply_to` queue, with `correlation_id` = task id and Celery's meta dict
//! as the body, which `AsyncResult.get()` in the sending process consumes.
//!
//! Worker side it only publishes (a task sent without `reply_to` gets no result, as in
//! Celery). Client side (`celeriac call --wait`) it declares a private reply queue,
//! consumes it, and keeps the latest state per task id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use tokio::sync::{Notify, OnceCell};

use super::chord::{ChordCounting, ChordJoin, ChordPart};
use super::rpc_chord::RpcChords;
use super::{BackendError, ResultBackend};
use crate::broker::amqp::AmqpBroker;
use crate::broker::amqp_connect::CELERY_FRAME_MAX;
use crate::broker::Broker;
use crate::config::redact;
use crate::protocol::{DeliveryInfo, Headers, Message, Properties, TaskResult};

/// The client side: a reply queue and what arrived on it.
struct Replies {
    queue: String,
    /// Kept open for as long as the backend lives: the queue is exclusive to it.
    _connection: Connection,
    latest: Arc<Mutex<HashMap<String, TaskResult>>>,
    arrived: Arc<Notify>,
}

pub struct RpcBackend {
    url: String,
    publisher: AmqpBroker,
    replies: OnceCell<Replies>,
    chords: RpcChords,
}

fn op(err: impl std::fmt::Display) -> BackendError {
    BackendError::Operation(format!("rpc: {err}"))
}

impl RpcBackend {
    pub async fn open(url: &str, result_expires: u64) -> Result<RpcBackend, BackendError> {
        let publisher = AmqpBroker::open(url, &HashMap::new())
            .await
            .map_err(|e| BackendError::Connection(e.to_string()))?;
        Ok(RpcBackend {
            url: url.to_owned(),
            publisher,
            replies: OnceCell::new(),
            chords: RpcChords::new(url, result_expires),
        })
    }

    async fn replies(&self) -> Result<&Replies, BackendError> {
        self.replies
            .get_or_try_init(|| async {
                let connection = crate::broker::amqp_connect::connect(&self.url, CELERY_FRAME_MAX)
                    .await
                    .map_err(|e| BackendError::Connection(format!("cannot connect to {}: {e}", redact(&self.url))))?;
                let channel = connection.create_channel().await.map_err(op)?;
                let queue = uuid::Uuid::new_v4().to_string();
                let options = QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                };
                channel
                    .queue_declare(queue.as_str().into(), options, FieldTable::default())
                    .await
                    .map_err(op)?;
                let no_ack = BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                };
                let mut consumer = channel
                    .basic_consume(queue.as_str().into(), "".into(), no_ack, FieldTable::default())
                    .await
                    .map_err(op)?;
                let latest = Arc::new(Mutex::new(HashMap::new()));
                let arrived = Arc::new(Notify::new());
                let (store, notify) = (latest.clone(), arrived.clone());
                tokio::spawn(async move {
                    while let Some(Ok(delivery)) = consumer.next().await {
                        let meta: Option<serde_json::Value> = serde_json::from_slice(&delivery.data).ok();
                        if let Some(result) = meta.as_ref().and_then(TaskResult::from_meta) {
                            store
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(result.task_id.clone(), result);
                            notify.notify_waiters();
                        }
                    }
                });
                Ok(Replies {
                    queue,
                    _connection: connection,
                    latest,
                    arrived,
                })
            })
            .await
    }
}

#[async_trait]
impl ResultBackend for RpcBackend {
    async fn store(&self, result: &TaskResult) -> Result<(), BackendError> {
        let Some(reply_to) = &result.reply_to else {
            return Ok(());
        };
        let message = Message {
            body: result.meta_json().into_bytes(),
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            headers: Headers::new(),
            properties: Properties {
                correlation_id: Some(reply_to.correlation_id.clone()),
                reply_to: None,
                delivery_mode: 1,
                priority: 0,
                delivery_info: DeliveryInfo::default(),
            },
        };
        self.publisher.publish(&reply_to.queue, &message).await.map_err(op)
    }

    async fn reply_to(&self) -> Result<Option<String>, BackendError> {
        Ok(Some(self.replies().await?.queue.clone()))
    }

    fn chord_counting(&self) -> ChordCounting {
        ChordCounting::Native
    }

    async fn chord_part_return(&self, part: &ChordPart<'_>) -> Result<ChordJoin, BackendError> {
        self.chords.part_return(part).await
    }

    async fn release_chord(&self, group_id: &str, claim: &str, body_sent: bool) -> Result<(), BackendError> {
        self.chords.release(group_id, claim, body_sent).await
    }

    fn keeps_state(&self) -> bool {
        false
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskResult>, BackendError> {
        let replies = self.replies().await?;
        Ok(replies
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(task_id)
            .cloned())
    }

    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<Option<TaskResult>, BackendError> {
        let replies = self.replies().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = replies.arrived.notified();
            let current = self.get(task_id).await?;
            if current.as_ref().is_some_and(|r| r.state.is_ready()) {
                return Ok(current);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(current);
            }
        }
    }
}
