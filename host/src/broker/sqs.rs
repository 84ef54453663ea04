//! Amazon SQS (or any server that speaks its API) through `aws-sdk-sqs`, with kombu's
//! conventions so Python clients with `sqs://` reach the same queues:
//!
//! - the SQS name of a queue is `queue_name_prefix + name` with `.` → `-` and other
//!   punctuation → `_` (a `.fifo` suffix is kept); queues are created when missing, with
//!   the `visibility_timeout` attribute (default 1800 s), unless `predefined_queues` lists
//!   them, in which case nothing else is used or created;
//! - a message body is the kombu JSON envelope, base64-encoded again;
//! - ack is DeleteMessage; a message not deleted comes back after the visibility timeout.
//!
//! Beyond kombu: while a task runs its message's visibility is extended (the virtual
//! transport's lease renewal is ChangeMessageVisibility here), so a task longer than the
//! visibility timeout is never handed to a second worker; a message handed back is made
//! visible at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageSystemAttributeName,
    QueueAttributeName,
};
use aws_sdk_sqs::Client;
use base64::Engine;
use serde_json::Value;

use super::virtual_transport::{seconds_option, Store, StoreTag, Taken};
use super::BrokerError;

/// kombu's default queue visibility timeout.
const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(1800);
/// SQS's limits: messages per receive and entries per batch call; seconds of long polling.
const MAX_BATCH: usize = 10;
const MAX_WAIT_SECONDS: i32 = 20;

/// What `sqs://KEY:SECRET@HOST:PORT` says, as kombu reads it.
#[derive(Clone, Default, PartialEq)]
pub struct SqsUrl {
    /// `http://HOST:PORT` (`https` with `is_secure=true`); none: AWS's own endpoint.
    pub host: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
}

/// Never prints the secret key.
impl std::fmt::Debug for SqsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsUrl")
            .field("host", &self.host)
            .field("access_key", &self.access_key)
            .field("secret_key", &self.secret_key.as_ref().map(|_| "***"))
            .finish()
    }
}

impl SqsUrl {
    /// `rest` is what follows `sqs://`.
    pub fn parse(rest: &str) -> SqsUrl {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let (credentials, host) = match authority.rsplit_once('@') {
            Some((credentials, host)) => (Some(credentials), host),
            None => (None, authority),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|s| s.into_owned())
                .filter(|s| !s.is_empty())
        };
        let (access_key, secret_key) = match credentials.map(|c| c.split_once(':').unwrap_or((c, ""))) {
            Some((key, secret)) => (decode(key), decode(secret)),
            None => (None, None),
        };
        SqsUrl {
            host: (!host.is_empty()).then(|| host.to_owned()),
            access_key,
            secret_key,
        }
    }
}

/// kombu's `entity_name`: the SQS name of a Celery queue.
pub fn entity_name(name: &str) -> String {
    let (stem, fifo) = match name.strip_suffix(".fifo") {
        Some(stem) => (stem, ".fifo"),
        None => (name, ""),
    };
    let translated: String = stem
        .chars()
        .map(|c| match c {
            '.' => '-',
            '-' | '_' => c,
            c if c.is_ascii_punctuation() => '_',
            c => c,
        })
        .collect();
    translated + fifo
}

fn op(err: impl std::error::Error) -> BrokerError {
    BrokerError::Operation(format!("sqs: {}", DisplayErrorContext(err)))
}

/// A taken message's handle: the queue URL and the receipt, which SQS needs together.
fn tag_of(url: &str, receipt: &str) -> StoreTag {
    format!("{url} {receipt}")
}

fn split_tag(tag: &str) -> Result<(&str, &str), BrokerError> {
    tag.split_once(' ')
        .ok_or_else(|| BrokerError::Operation(format!("sqs: not a receipt of this broker: {tag:?}")))
}

/// Tags grouped by queue URL, in batches SQS accepts.
fn batches(tags: &[StoreTag]) -> Result<Vec<(String, Vec<String>)>, BrokerError> {
    let mut by_queue: HashMap<&str, Vec<String>> = HashMap::new();
    for tag in tags {
        let (url, receipt) = split_tag(tag)?;
        by_queue.entry(url).or_default().push(receipt.to_owned());
    }
    Ok(by_queue
        .into_iter()
        .flat_map(|(url, receipts)| {
            receipts
                .chunks(MAX_BATCH)
                .map(|chunk| (url.to_owned(), chunk.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect())
}

pub struct SqsStore {
    client: Client,
    prefix: String,
    visibility_timeout: Duration,
    /// Longest long poll, in seconds (transport option `wait_time_seconds`, default 10).
    wait_time_seconds: i32,
    /// SQS name → URL: looked up or created once, or given by `predefined_queues`.
    urls: Mutex<HashMap<String, String>>,
    predefined: bool,
}

impl SqsStore {
    pub async fn open(url: &SqsUrl, options: &HashMap<String, String>) -> Result<SqsStore, BrokerError> {
        let secure = options.get("is_secure").is_some_and(|v| v == "true" || v == "1");
        let region = options.get("region").cloned().unwrap_or_else(|| "us-east-1".into());
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(region));
        if let Some(host) = &url.host {
            loader = loader.endpoint_url(format!("{}://{host}", if secure { "https" } else { "http" }));
        }
        if let (Some(key), Some(secret)) = (&url.access_key, &url.secret_key) {
            loader = loader.credentials_provider(Credentials::new(key, secret, None, None, "sqs-url"));
        }
        let client = Client::new(&loader.load().await);
        let wait_time_seconds = match options.get("wait_time_seconds") {
            None => 10,
            Some(v) => v
                .parse::<i32>()
                .ok()
                .filter(|s| (0..=MAX_WAIT_SECONDS).contains(s))
                .ok_or_else(|| {
                    BrokerError::Connection(format!("transport option wait_time_seconds={v:?} is not 0-20"))
                })?,
        };
        let predefined = predefined_queues(options)?;
        let store = SqsStore {
            client,
            prefix: options.get("queue_name_prefix").cloned().unwrap_or_default(),
            visibility_timeout: seconds_option(options, "visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT)?,
            wait_time_seconds,
            predefined: predefined.is_some(),
            urls: Mutex::new(predefined.unwrap_or_default()),
        };
        // Fail at start, with the reason, when the endpoint or credentials are wrong.
        store
            .client
            .list_queues()
            .queue_name_prefix(&store.prefix)
            .max_results(1)
            .send()
            .await
            .map_err(|e| BrokerError::Connection(format!("cannot reach SQS: {}", DisplayErrorContext(e))))?;
        Ok(store)
    }

    fn urls(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.urls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The URL of a Celery queue's SQS queue, creating the queue when it is missing.
    async fn queue_url(&self, queue: &str) -> Result<String, BrokerError> {
        let name = entity_name(&format!("{}{queue}", self.prefix));
        if let Some(url) = self.urls().get(&name) {
            return Ok(url.clone());
        }
        if self.predefined {
            return Err(BrokerError::Operation(format!(
                "sqs: queue {name:?} is not in predefined_queues"
            )));
        }
        let url = match self.client.get_queue_url().queue_name(&name).send().await {
            Ok(found) => found.queue_url.unwrap_or_default(),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_queue_does_not_exist()) => {
                let mut create = self.client.create_queue().queue_name(&name).attributes(
                    QueueAttributeName::VisibilityTimeout,
                    self.visibility_timeout.as_secs().to_string(),
                );
                if name.ends_with(".fifo") {
                    create = create.attributes(QueueAttributeName::FifoQueue, "true");
                }
                create.send().await.map_err(op)?.queue_url.unwrap_or_default()
            }
            Err(err) => return Err(op(err)),
        };
        self.urls().insert(name, url.clone());
        Ok(url)
    }

    /// Up to `max` messages from one queue, waiting up to `wait` seconds for the first.
    async fn receive(&self, queue: &str, max: usize, wait: i32) -> Result<Vec<Taken>, BrokerError> {
        // From a FIFO queue, one message at a time: SQS then holds back the rest of its
        // group until that one is deleted, so a group's tasks run in order, on any number
        // of slots and workers. (A batch would be run concurrently and could finish out
        // of order.)
        let max = if queue.ends_with(".fifo") { 1 } else { max };
        let url = self.queue_url(queue).await?;
        let received = self
            .client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(wait)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(op)?;
        Ok(received
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let receipt = m.receipt_handle?;
                let receive_count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|count| count.parse::<u64>().ok());
                Some(Taken {
                    queue: queue.to_owned(),
                    tag: tag_of(&url, &receipt),
                    payload: crate::protocol::envelope::from_sqs_body(m.body.as_deref().unwrap_or("")),
                    redelivered: receive_count.is_some_and(|count| count > 1),
                    deferred_writes: None,
                })
            })
            .collect())
    }

    async fn set_visibility(&self, tags: &[StoreTag], timeout: Duration) -> Result<(), BrokerError> {
        let seconds = timeout.as_secs().min(43_200) as i32; // SQS's ceiling: 12 hours
        for (url, receipts) in batches(tags)? {
            let entries = receipts
                .iter()
                .enumerate()
                .map(|(i, receipt)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .visibility_timeout(seconds)
                        .build()
                        .map_err(op)
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.client
                .change_message_visibility_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(op)?;
        }
        Ok(())
    }
}

/// `predefined_queues` as JSON: `{"<sqs name>": {"url": "…"}, …}`.
fn predefined_queues(options: &HashMap<String, String>) -> Result<Option<HashMap<String, String>>, BrokerError> {
    let Some(text) = options.get("predefined_queues") else {
        return Ok(None);
    };
    let bad = |why: &str| BrokerError::Connection(format!("transport option predefined_queues: {why}"));
    let Ok(Value::Object(queues)) = serde_json::from_str::<Value>(text) else {
        return Err(bad("expected a JSON object {\"name\": {\"url\": \"…\"}}"));
    };
    queues
        .into_iter()
        .map(|(name, queue)| {
            let url = queue
                .get("url")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("{name} has no url")))?;
            Ok((name, url.to_owned()))
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

#[async_trait]
impl Store for SqsStore {
    async fn declare(&self, queue: &str) -> Result<(), BrokerError> {
        self.queue_url(queue).await.map(|_| ())
    }

    async fn put(&self, queue: &str, payload: &str, _priority: u8) -> Result<(), BrokerError> {
        let url = self.queue_url(queue).await?;
        let mut send = self
            .client
            .send_message()
            .queue_url(&url)
            .message_body(base64::engine::general_purpose::STANDARD.encode(payload));
        if url.ends_with(".fifo") {
            // kombu's defaults: one group, and no content-based deduplication.
            send = send
                .message_group_id("default")
                .message_deduplication_id(uuid::Uuid::new_v4().to_string());
        }
        send.send().await.map_err(op)?;
        Ok(())
    }

    async fn take(&self, queues: &[String], max: usize, block: Duration) -> Result<Vec<Taken>, BrokerError> {
        // Whatever is waiting, queue by queue; then a long poll on the first queue (the
        // virtual transport rotates the order, so each queue gets its turn).
        for queue in queues {
            let taken = self.receive(queue, max, 0).await?;
            if !taken.is_empty() {
                return Ok(taken);
            }
        }
        match queues.first() {
            Some(queue) if !block.is_zero() && self.wait_time_seconds > 0 => {
                let wait = (block.as_secs_f64().ceil() as i32).clamp(1, self.wait_time_seconds);
                self.receive(queue, max, wait).await
            }
            _ => Ok(Vec::new()),
        }
    }

    async fn delete(&self, tag: &StoreTag) -> Result<(), BrokerError> {
        let (url, receipt) = split_tag(tag)?;
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(op)?;
        Ok(())
    }

    async fn delete_many(&self, tags: &[StoreTag]) -> Result<(), BrokerError> {
        for (url, receipts) in batches(tags)? {
            let entries = receipts
                .iter()
                .enumerate()
                .map(|(i, receipt)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .build()
                        .map_err(op)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let outcome = self
                .client
                .delete_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(op)?;
            if let Some(failure) = outcome.failed.first() {
                return Err(BrokerError::Operation(format!(
                    "sqs: {} of {} deletes refused, first: {} {}",
                    outcome.failed.len(),
                    receipts.len(),
                    failure.code,
                    failure.message.as_deref().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    async fn restore(&self, tag: &StoreTag) -> Result<(), BrokerError> {
        self.set_visibility(std::slice::from_ref(tag), Duration::ZERO).await
    }

    async fn renew(&self, tags: &[StoreTag]) -> Result<(), BrokerError> {
        self.set_visibility(tags, self.visibility_timeout).await
    }

    async fn restore_expired(&self, _timeout: Duration) -> Result<u64, BrokerError> {
        Ok(0) // SQS makes unacknowledged messages visible again by itself
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let url = self.queue_url(queue).await?;
        let attributes = self
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(op)?;
        let waiting = attributes
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages).cloned())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        self.client.purge_queue().queue_url(&url).send().await.map_err(op)?;
        Ok(waiting)
    }

    fn default_visibility_timeout(&self) -> Duration {
        self.visibility_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_kombu() {
        assert_eq!(entity_name("dev-my.tasks:high"), "dev-my-tasks_high");
        assert_eq!(entity_name("dev-jobs.fifo"), "dev-jobs.fifo");
        assert_eq!(entity_name("celery"), "celery");
    }

    #[test]
    fn urls_follow_kombu() {
        let url = SqsUrl::parse("AKIA:se%2Fcret@127.0.0.1:5000");
        assert_eq!(url.host.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(url.access_key.as_deref(), Some("AKIA"));
        assert_eq!(url.secret_key.as_deref(), Some("se/cret"));
        assert_eq!(SqsUrl::parse(""), SqsUrl::default());
        assert_eq!(
            SqsUrl::parse("@localhost:4566/").host.as_deref(),
            Some("localhost:4566")
        );
    }
}
