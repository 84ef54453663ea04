//! kombu's Redis transport, key for key, so Python clients and workers share the queues:
//!
//! - a queue is a list per priority step (`celery`, `celery\x06\x163`, …): LPUSH to
//!   publish, BRPOP to consume, lower step served first (kombu's order, not AMQP's);
//! - a taken message is recorded in the `unacked` hash (`[envelope, exchange,
//!   routing_key]`) and the `unacked_index` sorted set (score = time taken), removed on
//!   ack, and pushed back by whoever finds it older than `visibility_timeout`. kombu keys
//!   the record by the publisher's `delivery_tag`; this worker by a tag of its own, with
//!   no exchange and the queue as routing key, which any sweeper reads the same way;
//! - `_kombu.binding.<exchange>` sets name the queues bound to an exchange;
//! - fanout is PUBLISH on `/<db>.<exchange>/<routing_key>`;
//! - `global_keyprefix` prefixes every key and channel.
//!
//! Beyond kombu: the worker renews the `unacked_index` score of the messages it holds, so
//! a task running longer than `visibility_timeout` is not handed to a second worker by
//! any sweeper, Python's included (kombu issue 337).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use serde_json::Value;

use super::redis_parking::RedisParking;
use super::redis_recording::Recording;
use super::virtual_transport::{Store, StoreTag, Taken};
use super::{BrokerError, DeferredWrites};
use crate::config::redact;
use crate::protocol::time::unix_now;

/// kombu's separator between a queue name and its priority step.
pub const SEP: &str = "\x06\x16";
/// kombu's default `priority_steps`.
pub(super) const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];
/// kombu's `unacked_mutex_expire`.
const MUTEX_EXPIRE_MS: u64 = 300_000;
/// Messages restored per sweep, as kombu's `unacked_restore_limit`-less default batch.
const RESTORE_BATCH: isize = 1000;

/// Take up to ARGV[1] messages and record each as unacked under a tag of this worker's
/// making (`<ARGV[5]><n>`), all in one step: nothing is lost between the pop and the record.
/// KEYS: unacked, unacked_index, then the lists, priority step by step, each step with
/// one list per queue (ARGV[4] queues). Lower steps are served first; within a step the
/// queues take turns, one message each, so a batch is shared fairly among them.
/// ARGV: max, now, max size to record, queues per step, tag prefix, '1' if the server
/// pops a count (Redis 6.2), then for each list the end of its unacked entries
/// (`, "", "<queue>"]`, see [`entry_end`]).
/// Returns list, payload, tag for each message, one flat array; tag is '' for a message
/// that is too large or not a JSON object (the caller rejects it). A flat reply, counters
/// instead of `#t`, and `object_like` trying the first and last bytes before skipping any
/// whitespace took Redis's time for the script from 5.6 to 5.0 µs a message (SLOWLOG,
/// batches of 32 messages of 932 bytes).
/// The message is not parsed here: decoding it to find its publisher's tag was over a
/// third of this script's cost, and a tag of our own cannot collide with a reused one.
/// Each `redis.call` costs Redis ~2 µs beyond the command itself (commandstats of a
/// 60,000-task drain: scripts 19.8 µs a task, the commands in them 6.2), so a list that
/// is a step's only queue is popped with one RPOP of a count where the server has it
/// (Redis 6.2; older servers pop one message a call), and the records go in one ZADD and
/// one HSET per batch, not one of each per message.
const POP_AND_RECORD: &str = r"
local byte = string.byte
local space = {[9] = true, [10] = true, [13] = true, [32] = true}
local function object_like(v)
  if byte(v, 1) == 123 and byte(v, -1) == 125 then return true end
  local first, last = 1, #v
  while first < last and space[byte(v, first)] do first = first + 1 end
  while last > first and space[byte(v, last)] do last = last - 1 end
  return byte(v, first) == 123 and byte(v, last) == 125
end
local out, taken = {}, 0
local scores, entries, recorded = {}, {}, 0
local max = tonumber(ARGV[1])
local now = ARGV[2]
local max_size = tonumber(ARGV[3])
local per_step = tonumber(ARGV[4])
local prefix = ARGV[5]
local pops_count = ARGV[6] == '1'
local function record(i, v)
  taken = taken + 1
  local tag = ''
  if #v <= max_size and object_like(v) then
    tag = prefix .. taken
    scores[recorded + 1] = now
    scores[recorded + 2] = tag
    entries[recorded + 1] = tag
    entries[recorded + 2] = '[' .. v .. ARGV[i + 4]
    recorded = recorded + 2
  end
  out[3 * taken - 2] = KEYS[i]
  out[3 * taken - 1] = v
  out[3 * taken] = tag
end
for first = 3, #KEYS, per_step do
  local last = math.min(first + per_step - 1, #KEYS)
  if first == last and pops_count then
    local popped = redis.call('RPOP', KEYS[first], max - taken)
    if popped then
      for _, v in ipairs(popped) do record(first, v) end
    end
  else
    local more = true
    while more and taken < max do
      more = false
      for i = first, last do
        if taken >= max then break end
        local v = redis.call('RPOP', KEYS[i])
        if v then
          record(i, v)
          more = true
        end
      end
    end
  end
  if taken >= max then break end
end
-- In slices: unpack() is bounded by Lua's stack (8,000 values).
for from = 1, recorded, 1000 do
  local to = math.min(from + 999, recorded)
  redis.call('ZADD', KEYS[2], unpack(scores, from, to))
  redis.call('HSET', KEYS[1], unpack(entries, from, to))
end
return out
";
/// Claim an unacked message (only one caller can remove it from the hash) and push its
/// restored envelope to the consuming end of its list, so it runs next.
/// KEYS: unacked, unacked_index, list. ARGV: tag, envelope.
const CLAIM_AND_PUSH: &str = r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('RPUSH', KEYS[3], ARGV[2])
  return 1
end
return 0
";
/// Release a lock only if we still hold it.
const RELEASE_LOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

pub struct RedisStore {
    /// Every command but BRPOP (multiplexed, reconnects by itself).
    commands: ConnectionManager,
    /// BRPOP blocks its connection, so it gets one of its own.
    blocking: ConnectionManager,
    db: i64,
    prefix: String,
    unacked: String,
    unacked_index: String,
    unacked_mutex: String,
    pop_and_record: Script,
    /// Whether the server pops a count of messages at once (`RPOP key count`, Redis 6.2).
    pops_count: bool,
    /// Messages bigger than this are not recorded (the caller rejects them unread).
    max_message_size: usize,
    /// Unacked tags are `<this><take>:<n>`: unique to this store, whatever the publisher
    /// put in `delivery_tag` ([`new_tag_prefix`]).
    tag_prefix: String,
    takes: AtomicU64,
    claim_and_push: Script,
    release_lock: Script,
    parking: RedisParking,
    /// Unacked records of BRPOP'd messages still being written.
    recording: Recording,
}

pub fn connection_error(url: &str, err: redis::RedisError) -> BrokerError {
    BrokerError::Connection(format!("cannot connect to Redis at {}: {err}", redact(url)))
}

pub(super) fn op(err: redis::RedisError) -> BrokerError {
    BrokerError::Operation(format!("redis: {err}"))
}

/// The list that holds messages of `priority` (0–9, clamped) for `queue`.
fn step_of(priority: u8) -> u8 {
    PRIORITY_STEPS
        .iter()
        .copied()
        .filter(|s| *s <= priority.min(9))
        .max()
        .unwrap_or(0)
}

/// Open a connection manager that retries with backoff whenever Redis goes away.
pub async fn connect(
    client: &redis::Client,
    url: &str,
    response_timeout: Option<Duration>,
) -> Result<ConnectionManager, BrokerError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(response_timeout)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(5))
        // Bounded, so a wrong address fails at start; after that every failed command
        // triggers a new round of reconnection attempts.
        .set_number_of_retries(4);
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|e| connection_error(url, e))
}

impl RedisStore {
    pub async fn open(url: &str, options: &HashMap<String, String>) -> Result<RedisStore, BrokerError> {
        let client = redis::Client::open(url).map_err(|e| connection_error(url, e))?;
        let db = client.get_connection_info().redis_settings().db();
        let prefix = options.get("global_keyprefix").cloned().unwrap_or_default();
        let key = |option: &str, default: &str| {
            format!("{prefix}{}", options.get(option).map(String::as_str).unwrap_or(default))
        };
        let mut commands = connect(&client, url, Some(Duration::from_secs(10))).await?;
        let pops_count = pops_count(&mut commands).await;
        Ok(RedisStore {
            commands,
            pops_count,
            blocking: connect(&client, url, None).await?,
            db,
            unacked: key("unacked_key", "unacked"),
            unacked_index: key("unacked_index_key", "unacked_index"),
            unacked_mutex: key("unacked_mutex_key", "unacked_mutex"),
            prefix: prefix.clone(),
            pop_and_record: Script::new(POP_AND_RECORD),
            max_message_size: options
                .get("max_message_size")
                .and_then(|v| v.parse().ok())
                .unwrap_or(16 << 20),
            tag_prefix: new_tag_prefix(),
            takes: AtomicU64::new(0),
            claim_and_push: Script::new(CLAIM_AND_PUSH),
            release_lock: Script::new(RELEASE_LOCK),
            parking: RedisParking::new(&prefix),
            recording: Recording::default(),
        })
    }

    fn list_key(&self, queue: &str, step: u8) -> String {
        if step == 0 {
            format!("{}{queue}", self.prefix)
        } else {
            format!("{}{queue}{SEP}{step}", self.prefix)
        }
    }

    /// The queue a list key belongs to.
    fn queue_of(&self, key: &str) -> String {
        let key = key.strip_prefix(self.prefix.as_str()).unwrap_or(key);
        key.rsplit_once(SEP).map(|(queue, _)| queue).unwrap_or(key).to_owned()
    }

    /// The start of the tags of the next take's messages, each followed by its number.
    fn next_tag_prefix(&self) -> String {
        format!("{}{}:", self.tag_prefix, self.takes.fetch_add(1, Ordering::Relaxed))
    }

    /// Record a taken message as unacked, as the pop script does. The write goes on in the
    /// background (`redis_recording.rs`) once the returned handle lets it; acks and
    /// restores wait for it.
    fn record_unacked(&self, queue: &str, payload: &str) -> (StoreTag, Option<DeferredWrites>) {
        if payload.len() > self.max_message_size || !object_like(payload) {
            // Nothing to record; the virtual layer rejects it.
            return (untracked_tag(), None);
        }
        let tag = format!("{}1", self.next_tag_prefix());
        // `payload` looks like a JSON object, so it embeds as the first element as it is.
        let entry = format!("[{payload}{}", entry_end(queue));
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zadd(&self.unacked_index, &tag, unix_now())
            .hset(&self.unacked, &tag, entry);
        let mut conn = self.commands.clone();
        let (deferred, released) = DeferredWrites::new();
        self.recording.start(tag.clone(), async move {
            released.await;
            pipe.exec_async(&mut conn).await.map_err(op)
        });
        (tag, Some(deferred))
    }

    /// Read an `unacked` entry: the queue to restore it to (kombu's lookup: the routing key
    /// on the default exchange, else the exchange's bindings) and the envelope marked
    /// redelivered, as kombu marks it.
    async fn restorable(&self, raw: &str) -> Result<Option<(String, Value)>, BrokerError> {
        let Ok(Value::Array(mut entry)) = serde_json::from_str::<Value>(raw) else {
            return Ok(None);
        };
        if entry.len() != 3 || !entry[0].is_object() {
            return Ok(None);
        }
        let routing_key = entry[2].as_str().unwrap_or("").to_owned();
        let exchange = entry[1].as_str().unwrap_or("").to_owned();
        let mut envelope = entry.swap_remove(0);
        if let Some(headers) = envelope.get_mut("headers").and_then(Value::as_object_mut) {
            headers.insert("redelivered".into(), Value::Bool(true));
        }
        if let Some(info) = envelope
            .pointer_mut("/properties/delivery_info")
            .and_then(Value::as_object_mut)
        {
            info.insert("redelivered".into(), Value::Bool(true));
        }
        let queue = if exchange.is_empty() || exchange == routing_key {
            Some(routing_key)
        } else {
            let members: Vec<String> = self
                .commands
                .clone()
                .smembers(format!("{}_kombu.binding.{exchange}", self.prefix))
                .await
                .map_err(op)?;
            members.iter().find_map(|m| {
                let mut parts = m.splitn(3, SEP);
                let (rk, _pattern, queue) = (parts.next()?, parts.next()?, parts.next()?);
                (rk == routing_key).then(|| queue.to_owned())
            })
        };
        Ok(queue.filter(|q| !q.is_empty()).map(|q| (q, envelope)))
    }
}

/// Whether the server pops a count of messages with one RPOP (Redis 6.2 and later), read
/// from `INFO server`. Debian 11 and Ubuntu 22.04 ship Redis 6.0, which takes one a call;
/// a server that will not say is asked one at a time too, which works everywhere.
async fn pops_count(commands: &mut ConnectionManager) -> bool {
    let info: Result<String, _> = redis::cmd("INFO").arg("server").query_async(commands).await;
    match info.as_deref().ok().and_then(redis_version) {
        Some(version) if version >= (6, 2) => true,
        Some((major, minor)) => {
            tracing::info!("Redis {major}.{minor} is older than 6.2: taking one message per RPOP");
            false
        }
        None => {
            tracing::warn!("cannot read the Redis version (INFO server); taking one message per RPOP");
            false
        }
    }
}

/// The major and minor version in an `INFO server` reply (`redis_version:6.0.16`).
fn redis_version(info: &str) -> Option<(u32, u32)> {
    let version = info.lines().find_map(|line| line.strip_prefix("redis_version:"))?;
    let mut parts = version.trim().split('.').map(str::parse::<u32>);
    Some((parts.next()?.ok()?, parts.next()?.ok()?))
}

/// The fanout channel kombu uses: `/<db>.<exchange>` plus `/<routing_key>` if any, after
/// the global key prefix.
pub fn fanout_channel(prefix: &str, db: i64, exchange: &str, routing_key: &str) -> String {
    if routing_key.is_empty() {
        format!("{prefix}/{db}.{exchange}")
    } else {
        format!("{prefix}/{db}.{exchange}/{routing_key}")
    }
}

/// The end of an `unacked` entry of a message taken from `queue`, after its envelope: no
/// exchange, and the queue as routing key, so a restore (kombu's too) puts the message
/// back on the queue it was taken from. (kombu records the message's own exchange and
/// routing key, and a restore through a fanout exchange would copy it to every queue.)
fn entry_end(queue: &str) -> String {
    format!(", \"\", {}]", Value::from(queue))
}

/// Whether `payload` is, by its first and last characters, a JSON object: the envelope of
/// an `unacked` entry must be one for a restore to read it.
fn object_like(payload: &str) -> bool {
    let payload = payload.trim_matches([' ', '\t', '\n', '\r']);
    payload.starts_with('{') && payload.ends_with('}')
}

/// A store's tag prefix: two random UUIDs, so that every tag is longer than Redis'
/// `zset-max-listpack-value` (64 bytes by default). A sorted set holding such a member is
/// a skiplist, not a listpack, and ZADD into a listpack scans and re-parses every score
/// in it: on Redis 7.0 with 32 messages held, 8.7 µs a ZADD against 0.8 as a skiplist.
fn new_tag_prefix() -> String {
    format!("{}{}:", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// A tag for a message that is not a kombu envelope: nothing is recorded under it.
fn untracked_tag() -> StoreTag {
    format!("untracked-{}", uuid::Uuid::new_v4())
}

#[async_trait]
impl Store for RedisStore {
    async fn declare(&self, queue: &str) -> Result<(), BrokerError> {
        // The default direct exchange of a Celery queue has the queue's name.
        let member = format!("{queue}{SEP}{SEP}{queue}");
        redis::pipe()
            .sadd(format!("{}_kombu.binding.{queue}", self.prefix), &member)
            .sadd(format!("{}_kombu.binding_permanent.{queue}", self.prefix), &member)
            .exec_async(&mut self.commands.clone())
            .await
            .map_err(op)
    }

    async fn put(&self, queue: &str, payload: &str, priority: u8) -> Result<(), BrokerError> {
        let _: i64 = self
            .commands
            .clone()
            .lpush(self.list_key(queue, step_of(priority)), payload)
            .await
            .map_err(op)?;
        Ok(())
    }

    async fn park(&self, queue: &str, payload: &str, priority: u8, until: f64) -> Result<bool, BrokerError> {
        let list = self.list_key(queue, step_of(priority));
        self.parking
            .park(&mut self.commands.clone(), &list, payload, until)
            .await?;
        Ok(true)
    }

    async fn unpark_due(&self) -> Result<u64, BrokerError> {
        self.parking.unpark_due(&mut self.commands.clone()).await
    }

    async fn take(&self, queues: &[String], max: usize, block: Duration) -> Result<Vec<Taken>, BrokerError> {
        let lists: Vec<(String, &String)> = PRIORITY_STEPS
            .iter()
            .flat_map(|step| queues.iter().map(move |q| (self.list_key(q, *step), q)))
            .collect();
        // First whatever is waiting, in one round trip.
        let mut invocation = self.pop_and_record.key(&self.unacked);
        invocation
            .key(&self.unacked_index)
            .arg(max)
            .arg(unix_now())
            .arg(self.max_message_size)
            .arg(queues.len().max(1))
            .arg(self.next_tag_prefix())
            .arg(if self.pops_count { "1" } else { "0" });
        for (key, queue) in &lists {
            invocation.key(key).arg(entry_end(queue));
        }
        let popped: Vec<String> = invocation.invoke_async(&mut self.commands.clone()).await.map_err(op)?;
        if !popped.is_empty() || block.is_zero() {
            let mut fields = popped.into_iter();
            let mut taken = Vec::with_capacity(fields.len() / 3);
            while let (Some(key), Some(payload), Some(tag)) = (fields.next(), fields.next(), fields.next()) {
                taken.push(Taken {
                    queue: self.queue_of(&key),
                    tag: if tag.is_empty() { untracked_tag() } else { tag },
                    payload,
                    redelivered: false,
                    deferred_writes: None,
                });
            }
            return Ok(taken);
        }
        // Then wait for the next one. BRPOP's own timeout bounds the wait; the outer one
        // catches a dead connection.
        let keys: Vec<&String> = lists.iter().map(|(key, _)| key).collect();
        let mut blocking = self.blocking.clone();
        let brpop = blocking.brpop(&keys, block.as_secs_f64().max(0.01));
        let popped: Option<(String, String)> = match tokio::time::timeout(block + Duration::from_secs(5), brpop).await {
            Ok(result) => result.map_err(op)?,
            Err(_) => return Err(BrokerError::Operation("redis: BRPOP did not answer in time".into())),
        };
        let Some((key, payload)) = popped else {
            return Ok(Vec::new());
        };
        let queue = self.queue_of(&key);
        let (tag, deferred_writes) = self.record_unacked(&queue, &payload);
        Ok(vec![Taken {
            queue,
            tag,
            payload,
            redelivered: false,
            deferred_writes,
        }])
    }

    async fn delete(&self, tag: &StoreTag) -> Result<(), BrokerError> {
        self.delete_many(std::slice::from_ref(tag)).await
    }

    async fn delete_many(&self, tags: &[StoreTag]) -> Result<(), BrokerError> {
        self.recording.settled(tags).await;
        redis::pipe()
            .atomic()
            .zrem(&self.unacked_index, tags)
            .hdel(&self.unacked, tags)
            .exec_async(&mut self.commands.clone())
            .await
            .map_err(op)
    }

    async fn restore(&self, tag: &StoreTag) -> Result<(), BrokerError> {
        self.recording.settled(std::slice::from_ref(tag)).await;
        let mut conn = self.commands.clone();
        let raw: Option<String> = conn.hget(&self.unacked, tag).await.map_err(op)?;
        let Some(raw) = raw else { return Ok(()) };
        let Some((queue, envelope)) = self.restorable(&raw).await? else {
            tracing::error!(tag = %tag, "unacked entry is unreadable; dropping it");
            return self.delete(tag).await;
        };
        let priority = envelope["properties"]["priority"].as_u64().unwrap_or(0).min(9) as u8;
        let _: i64 = self
            .claim_and_push
            .key(&self.unacked)
            .key(&self.unacked_index)
            .key(self.list_key(&queue, step_of(priority)))
            .arg(tag)
            .arg(envelope.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(op)?;
        Ok(())
    }

    async fn renew(&self, tags: &[StoreTag]) -> Result<(), BrokerError> {
        let score = unix_now();
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(&self.unacked_index).arg("XX");
        for tag in tags {
            cmd.arg(score).arg(tag);
        }
        cmd.exec_async(&mut self.commands.clone()).await.map_err(op)
    }

    async fn restore_expired(&self, timeout: Duration) -> Result<u64, BrokerError> {
        let mut conn = self.commands.clone();
        let token = uuid::Uuid::new_v4().to_string();
        let locked: Option<String> = redis::cmd("SET")
            .arg(&self.unacked_mutex)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(MUTEX_EXPIRE_MS)
            .query_async(&mut conn)
            .await
            .map_err(op)?;
        if locked.is_none() {
            return Ok(0); // another worker is sweeping
        }
        let cutoff = unix_now() - timeout.as_secs_f64();
        let result = async {
            let expired: Vec<String> = conn
                .zrangebyscore_limit(&self.unacked_index, "-inf", cutoff, 0, RESTORE_BATCH)
                .await
                .map_err(op)?;
            for tag in &expired {
                self.restore(tag).await?;
            }
            Ok(expired.len() as u64)
        }
        .await;
        let _: i64 = self
            .release_lock
            .key(&self.unacked_mutex)
            .arg(&token)
            .invoke_async(&mut conn)
            .await
            .map_err(op)?;
        result
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut pipe = redis::pipe();
        for step in PRIORITY_STEPS {
            pipe.llen(self.list_key(queue, step));
        }
        for step in PRIORITY_STEPS {
            pipe.del(self.list_key(queue, step)).ignore();
        }
        let lengths: Vec<u64> = pipe
            .atomic()
            .query_async(&mut self.commands.clone())
            .await
            .map_err(op)?;
        Ok(lengths.iter().sum())
    }

    async fn fanout(&self, exchange: &str, routing_key: &str, payload: &str) -> Result<(), BrokerError> {
        let _: i64 = self
            .commands
            .clone()
            .publish(fanout_channel(&self.prefix, self.db, exchange, routing_key), payload)
            .await
            .map_err(op)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_from_info() {
        let info = "# Server\r\nredis_version:6.0.16\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(redis_version(info), Some((6, 0)));
        assert_eq!(redis_version("redis_version:7.2.4\r\n"), Some((7, 2)));
        assert_eq!(redis_version("# Server\r\nredis_mode:standalone\r\n"), None);
        assert_eq!(redis_version("redis_version:unstable\r\n"), None);
    }

    #[test]
    fn priorities_map_to_kombu_steps() {
        let steps: Vec<u8> = (0..=12).map(step_of).collect();
        assert_eq!(steps, [0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9, 9]);
    }
}
