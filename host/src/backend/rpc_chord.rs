//! Chords on `rpc://`, which Celery cannot run: its results live in the client's reply
//! queue, so there is no store to count in. Celeriac counts in RabbitMQ instead.
//!
//! Each header task publishes its outcome to the durable queue `celeriac.chord.<group>`
//! (expiring with the results), then reads the queue's length against the chord's size,
//! which the worker that started the chord put in the body (`chord_size`, the field
//! Celery 5.0 used). The worker that sees the count complete claims the chord by
//! declaring the exclusive queue `celeriac.chord.<group>.claim`: only one connection can
//! hold it, and it vanishes with a worker that dies. It takes every entry unacked,
//! sends the body, then acks and deletes both queues, or hands the entries back.

use std::collections::HashMap;
use std::sync::Mutex;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{json, Value};

use super::chord::{ChordEntry, ChordJoin, ChordPart};
use super::BackendError;
use crate::broker::amqp_connect::CELERY_FRAME_MAX;
use crate::config::redact;
use crate::protocol::State;

fn op(err: lapin::Error) -> BackendError {
    BackendError::Operation(format!("rpc chord: {err}"))
}

fn queue_name(group_id: &str) -> String {
    format!("celeriac.chord.{group_id}")
}

/// A claimed chord: the channel holding its entries unacked, and the last entry's tag.
struct Claimed {
    channel: Channel,
    last_tag: u64,
}

pub struct RpcChords {
    url: String,
    /// Milliseconds an idle count queue lives (`result_expires`); 0: forever.
    expires_ms: u64,
    connection: tokio::sync::Mutex<Option<Connection>>,
    /// Claims held by this worker, by claim queue. The exclusive queue keeps other
    /// connections out; this keeps out this worker's other tasks, which share its one.
    claims: Mutex<HashMap<String, Option<Claimed>>>,
}

impl RpcChords {
    pub fn new(url: &str, result_expires: u64) -> RpcChords {
        RpcChords {
            url: url.to_owned(),
            expires_ms: result_expires.saturating_mul(1000),
            connection: tokio::sync::Mutex::new(None),
            claims: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh channel on this backend's own connection (an error closes only it).
    async fn channel(&self) -> Result<Channel, BackendError> {
        let mut connection = self.connection.lock().await;
        if !connection.as_ref().is_some_and(|c| c.status().connected()) {
            let fresh = crate::broker::amqp_connect::connect(&self.url, CELERY_FRAME_MAX)
                .await
                .map_err(|e| BackendError::Connection(format!("cannot connect to {}: {e}", redact(&self.url))))?;
            *connection = Some(fresh);
        }
        let connection = connection.as_ref().ok_or(BackendError::Closed)?;
        connection.create_channel().await.map_err(op)
    }

    async fn declare_count_queue(&self, channel: &Channel, queue: &str, passive: bool) -> Result<u32, BackendError> {
        let mut arguments = FieldTable::default();
        if self.expires_ms > 0 {
            arguments.insert("x-expires".into(), AMQPValue::LongLongInt(self.expires_ms as i64));
        }
        let options = QueueDeclareOptions {
            durable: true,
            passive,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(queue.into(), options, arguments)
            .await
            .map_err(op)?;
        Ok(declared.message_count())
    }

    pub async fn part_return(&self, part: &ChordPart<'_>) -> Result<ChordJoin, BackendError> {
        let Some(size) = part.size else {
            tracing::error!(group_id = %part.group_id,
                "a chord on rpc:// needs its size in the body (chord_size); only chords started by Celeriac have it");
            return Ok(ChordJoin::Pending);
        };
        let queue = queue_name(part.group_id);
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(op)?;
        self.declare_count_queue(&channel, &queue, false).await?;
        let entry = json!({
            "index": part.group_index,
            "entry": [1, part.task_id, part.state.as_str(), part.result],
        });
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                entry.to_string().as_bytes(),
                properties,
            )
            .await
            .map_err(op)?
            .await
            .map_err(op)?;
        if confirm.is_nack() {
            return Err(BackendError::Operation(format!(
                "RabbitMQ refused the chord entry for {queue}"
            )));
        }
        if self.declare_count_queue(&channel, &queue, true).await? as usize >= size {
            return self.claim(channel, part.group_id, size).await;
        }
        let _ = channel.close(200, "counted".into()).await;
        Ok(ChordJoin::Pending)
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Claimed>>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take the chord if no other task or worker holds it, and read its entries.
    async fn claim(&self, channel: Channel, group_id: &str, size: usize) -> Result<ChordJoin, BackendError> {
        let queue = queue_name(group_id);
        let claim = format!("{queue}.claim");
        if self.claims().insert(claim.clone(), None).is_some() {
            tracing::debug!(group_id, "chord claimed by another task of this worker");
            let _ = channel.close(200, "claimed".into()).await;
            return Ok(ChordJoin::Pending);
        }
        match self.take_entries(channel, &queue, &claim, size).await {
            Ok(Some(entries)) => Ok(ChordJoin::Complete { entries, claim }),
            Ok(None) => Ok(ChordJoin::Pending),
            Err(err) => {
                self.claims().remove(&claim);
                Err(err)
            }
        }
    }

    /// Hold the claim queue and read every entry; `None` if another worker holds the
    /// claim or the entries are not all there (they are handed back).
    async fn take_entries(
        &self,
        channel: Channel,
        queue: &str,
        claim: &str,
        size: usize,
    ) -> Result<Option<Vec<ChordEntry>>, BackendError> {
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        };
        if channel
            .queue_declare(claim.into(), exclusive, FieldTable::default())
            .await
            .is_err()
        {
            // Held by another worker (the refusal closed this channel).
            self.claims().remove(claim);
            return Ok(None);
        }
        let mut entries: Vec<(Option<u64>, ChordEntry)> = Vec::new();
        let mut last_tag = 0;
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(op)?
        {
            last_tag = message.delivery.delivery_tag;
            if let Some((index, entry)) = decode(&message.delivery.data) {
                // A redelivered header task may have counted twice.
                if !entries.iter().any(|(i, e)| *i == index && e.task_id == entry.task_id) {
                    entries.push((index, entry));
                }
            }
        }
        let claimed = Claimed { channel, last_tag };
        if entries.len() < size {
            self.hand_back(claim, claimed).await;
            return Ok(None);
        }
        entries.sort_by_key(|(index, _)| index.unwrap_or(u64::MAX));
        self.claims().insert(claim.to_owned(), Some(claimed));
        Ok(Some(entries.into_iter().map(|(_, entry)| entry).collect()))
    }

    /// Return the entries to the count queue and drop the claim.
    async fn hand_back(&self, claim: &str, claimed: Claimed) {
        self.claims().remove(claim);
        let requeue = BasicNackOptions {
            multiple: true,
            requeue: true,
        };
        if claimed.last_tag > 0 {
            let _ = claimed.channel.basic_nack(claimed.last_tag, requeue).await;
        }
        let _ = claimed
            .channel
            .queue_delete(claim.into(), QueueDeleteOptions::default())
            .await;
        let _ = claimed.channel.close(200, "chord not complete".into()).await;
    }

    pub async fn release(&self, group_id: &str, claim: &str, body_sent: bool) -> Result<(), BackendError> {
        let Some(Some(claimed)) = self.claims().remove(claim) else {
            return Ok(());
        };
        if !body_sent {
            self.hand_back(claim, claimed).await;
            return Ok(());
        }
        let channel = &claimed.channel;
        let all = BasicAckOptions { multiple: true };
        channel.basic_ack(claimed.last_tag, all).await.map_err(op)?;
        for queue in [queue_name(group_id), claim.to_owned()] {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(op)?;
        }
        let _ = channel.close(200, "chord done".into()).await;
        Ok(())
    }
}

/// `{"index": i, "entry": [1, id, state, result]}`.
fn decode(data: &[u8]) -> Option<(Option<u64>, ChordEntry)> {
    let value: Value = serde_json::from_slice(data).ok()?;
    let index = value.get("index").and_then(Value::as_u64);
    match value.get("entry")?.as_array()?.as_slice() {
        [_, Value::String(task_id), Value::String(state), result] => Some((
            index,
            ChordEntry {
                task_id: task_id.clone(),
                state: State::parse(state),
                result: result.clone(),
            },
        )),
        _ => None,
    }
}
