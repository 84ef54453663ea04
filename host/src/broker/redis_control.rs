//! Remote control and events over Redis, as kombu does them: requests and events are
//! PUBLISHed on fanout channels (`/<db>.celery.pidbox`, `/<db>.celeryev/<routing key>`);
//! a reply is LPUSHed to each queue that `_kombu.binding.reply.celery.pidbox` binds to
//! the client's id. A subscriber that is not connected at the moment of a PUBLISH misses
//! it, so the listener re-subscribes at once after a lost connection.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio::sync::mpsc;

use super::control::{
    back_off, node_queue, reply_queue, ControlBus, EVENT_EXCHANGE, PIDBOX_EXCHANGE, REPLY_EXCHANGE, REQUEST_BACKLOG,
};
use super::redis::{connect, connection_error, fanout_channel, op, PRIORITY_STEPS, SEP};
use super::BrokerError;
use crate::config::redact;
use crate::protocol::Message;

pub struct RedisControl {
    url: String,
    client: redis::Client,
    commands: ConnectionManager,
    db: i64,
    prefix: String,
}

impl RedisControl {
    pub async fn open(url: &str, options: &HashMap<String, String>) -> Result<RedisControl, BrokerError> {
        let client = redis::Client::open(url).map_err(|e| connection_error(url, e))?;
        Ok(RedisControl {
            url: url.to_owned(),
            db: client.get_connection_info().redis_settings().db(),
            commands: connect(&client, url, Some(Duration::from_secs(10))).await?,
            client,
            prefix: options.get("global_keyprefix").cloned().unwrap_or_default(),
        })
    }

    /// The list holding a queue's messages of priority step `step`.
    fn list_key(&self, queue: &str, step: u8) -> String {
        if step == 0 {
            format!("{}{queue}", self.prefix)
        } else {
            format!("{}{queue}{SEP}{step}", self.prefix)
        }
    }

    fn binding_key(&self, exchange: &str) -> String {
        format!("{}_kombu.binding.{exchange}", self.prefix)
    }
}

/// Forward every request published on `channel` to `requests`, subscribing again after
/// each lost connection, until the receiving side is dropped.
async fn relay(client: redis::Client, url: String, channel: String, requests: mpsc::Sender<Message>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(err) => {
                tracing::warn!(url = %redact(&url), error = %err, "remote control: cannot reach Redis; retrying");
                back_off(&mut delay).await;
                continue;
            }
        };
        if let Err(err) = pubsub.subscribe(&channel).await {
            tracing::warn!(channel = %channel, error = %err, "remote control: cannot subscribe; retrying");
            back_off(&mut delay).await;
            continue;
        }
        delay = Duration::from_millis(100);
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let Ok(payload) = message.get_payload::<String>() else {
                tracing::warn!(channel = %channel, "remote control: ignoring a request that is not text");
                continue;
            };
            match Message::from_envelope_json(&payload) {
                Ok(request) => {
                    if requests.is_closed() {
                        return;
                    }
                    if requests.try_send(request).is_err() {
                        tracing::warn!("remote control: too many requests waiting; dropping one");
                    }
                }
                Err(err) => {
                    tracing::warn!(channel = %channel, error = %err, "remote control: ignoring a malformed request")
                }
            }
        }
        if requests.is_closed() {
            return;
        }
        tracing::warn!(url = %redact(&url), "remote control: lost the Redis subscription; subscribing again");
    }
}

#[async_trait]
impl ControlBus for RedisControl {
    async fn listen(&self, node: &str) -> Result<mpsc::Receiver<Message>, BrokerError> {
        // Informational, as kombu writes it: nothing routes through a fanout binding.
        let member = format!("{SEP}{SEP}{}", node_queue(node));
        let _: i64 = self
            .commands
            .clone()
            .sadd(self.binding_key(PIDBOX_EXCHANGE), member)
            .await
            .map_err(op)?;
        let (sender, receiver) = mpsc::channel(REQUEST_BACKLOG);
        let channel = fanout_channel(&self.prefix, self.db, PIDBOX_EXCHANGE, "");
        tokio::spawn(relay(self.client.clone(), self.url.clone(), channel, sender));
        Ok(receiver)
    }

    async fn reply(&self, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        let members: Vec<String> = self
            .commands
            .clone()
            .smembers(self.binding_key(REPLY_EXCHANGE))
            .await
            .map_err(op)?;
        let payload = message.to_envelope_json();
        let mut pipe = redis::pipe();
        for member in &members {
            let mut parts = member.splitn(3, SEP);
            if let (Some(key), Some(_pattern), Some(queue)) = (parts.next(), parts.next(), parts.next()) {
                if key == routing_key && !queue.is_empty() {
                    pipe.lpush(self.list_key(queue, 0), &payload).ignore();
                }
            }
        }
        pipe.exec_async(&mut self.commands.clone()).await.map_err(op)
    }

    async fn event(&self, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        let channel = fanout_channel(&self.prefix, self.db, EVENT_EXCHANGE, routing_key);
        let _: i64 = self
            .commands
            .clone()
            .publish(channel, message.to_envelope_json())
            .await
            .map_err(op)?;
        Ok(())
    }

    async fn broadcast(
        &self,
        request: &Message,
        client_id: &str,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Message>, BrokerError> {
        let queue = reply_queue(client_id);
        let member = format!("{client_id}{SEP}{SEP}{queue}");
        let lists: Vec<String> = PRIORITY_STEPS.iter().map(|step| self.list_key(&queue, *step)).collect();
        let mut commands = self.commands.clone();
        let _: i64 = commands
            .sadd(self.binding_key(REPLY_EXCHANGE), &member)
            .await
            .map_err(op)?;
        let channel = fanout_channel(&self.prefix, self.db, PIDBOX_EXCHANGE, "");
        let _: i64 = commands
            .publish(channel, request.to_envelope_json())
            .await
            .map_err(op)?;
        // BRPOP blocks its connection: a connection of its own.
        let mut blocking = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| connection_error(&self.url, e))?;
        let until = Instant::now() + timeout;
        let mut replies = Vec::new();
        while limit.is_none_or(|limit| replies.len() < limit) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let popped: Option<(String, String)> =
                blocking.brpop(&lists, left.as_secs_f64().max(0.01)).await.map_err(op)?;
            let Some((_, payload)) = popped else { break };
            match Message::from_envelope_json(&payload) {
                Ok(reply) => replies.push(reply),
                Err(err) => tracing::warn!(error = %err, "ignoring a malformed reply"),
            }
        }
        let mut cleanup = redis::pipe();
        cleanup.srem(self.binding_key(REPLY_EXCHANGE), &member).ignore();
        for list in &lists {
            cleanup.del(list).ignore();
        }
        cleanup.exec_async(&mut commands).await.map_err(op)?;
        Ok(replies)
    }
}
