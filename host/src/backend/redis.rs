//! Celery's Redis result backend: `celery-task-meta-<id>` keys holding the meta JSON,
//! written with a TTL (`result_expires`) and PUBLISHed on a channel of the same name,
//! which is what a waiting `AsyncResult.get()` listens to.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::chord::{ChordCounting, ChordJoin, ChordPart};
use super::redis_chord::RedisChords;
use super::{BackendError, ResultBackend};
use crate::broker::redis::connect;
use crate::config::redact;
use crate::protocol::TaskResult;

/// Celery's key prefix for task results.
pub const TASK_KEY_PREFIX: &str = "celery-task-meta-";

/// Store each meta unless a SUCCESS is already there (a redelivered duplicate must not
/// replace the first result), then publish it. KEYS: meta keys. ARGV: TTL seconds
/// (0: none), then one meta JSON per key. The current values are read with one MGET, not
/// a GET each: every `redis.call` costs Redis ~2 µs beyond the command (`broker/redis.rs`).
/// `unpack(KEYS)` is bounded by Lua's stack (8,000 values); the worker writes at most
/// `RESULT_BATCH` (256) results at a time.
/// A stored meta's status is read with `cjson` where Redis has it; Debian 11's and Ubuntu
/// 22.04's Redis (6.0, built on the system's Lua) has none, and there the top level of the
/// meta is scanned instead, skipping strings and nested values whole.
const STORE: &str = r#"
local json = rawget(_G, 'cjson')
local byte, sub, match = string.byte, string.sub, string.match
local function status_of(text)
  if json then
    local ok, meta = pcall(json.decode, text)
    return ok and type(meta) == 'table' and meta.status or nil
  end
  local depth, i, n = 0, 1, #text
  while i <= n do
    local c = byte(text, i)
    if c == 34 then
      local j = i + 1
      while j <= n do
        local d = byte(text, j)
        if d == 34 then break end
        j = j + (d == 92 and 2 or 1)
      end
      if depth == 1 and sub(text, i, j) == '"status"' then
        local value = match(text, '^%s*:%s*"(%u+)"', j + 1)
        if value then return value end
      end
      i = j + 1
    else
      if c == 123 or c == 91 then
        depth = depth + 1
      elseif c == 125 or c == 93 then
        depth = depth - 1
      end
      i = i + 1
    end
  end
end
local ttl = tonumber(ARGV[1])
local stored = 0
local current = redis.call('MGET', unpack(KEYS))
for i, key in ipairs(KEYS) do
  local meta = ARGV[i + 1]
  if not (current[i] and status_of(current[i]) == 'SUCCESS') then
    if ttl > 0 then
      redis.call('SET', key, meta, 'EX', ttl)
    else
      redis.call('SET', key, meta)
    end
    redis.call('PUBLISH', key, meta)
    stored = stored + 1
  end
end
return stored
"#;

pub struct RedisBackend {
    client: redis::Client,
    conn: ConnectionManager,
    /// `result_expires` in seconds; 0 keeps results forever.
    expires: u64,
    store: Script,
    chords: RedisChords,
}

fn op(err: redis::RedisError) -> BackendError {
    BackendError::Operation(format!("redis: {err}"))
}

fn decode(task_id: &str, text: &str) -> Result<TaskResult, BackendError> {
    serde_json::from_str(text)
        .ok()
        .and_then(|meta| TaskResult::from_meta(&meta))
        .ok_or_else(|| BackendError::Corrupt {
            task_id: task_id.to_owned(),
            reason: "not a Celery result meta".into(),
        })
}

impl RedisBackend {
    pub async fn open(url: &str, expires: u64) -> Result<RedisBackend, BackendError> {
        let connection_error = |e: String| BackendError::Connection(format!("Redis at {}: {e}", redact(url)));
        let client = redis::Client::open(url).map_err(|e| connection_error(e.to_string()))?;
        let conn = connect(&client, url, Some(Duration::from_secs(10)))
            .await
            .map_err(|e| connection_error(e.to_string()))?;
        Ok(RedisBackend {
            client,
            conn,
            expires,
            store: Script::new(STORE),
            chords: RedisChords::default(),
        })
    }
}

#[async_trait]
impl ResultBackend for RedisBackend {
    async fn store(&self, result: &TaskResult) -> Result<(), BackendError> {
        self.store_many(std::slice::from_ref(result)).await
    }

    async fn store_many(&self, results: &[TaskResult]) -> Result<(), BackendError> {
        if results.is_empty() {
            return Ok(()); // MGET of no keys is an error
        }
        let mut invocation = self.store.arg(self.expires);
        for result in results {
            invocation
                .key(format!("{TASK_KEY_PREFIX}{}", result.task_id))
                .arg(result.meta_json());
        }
        let _: i64 = invocation.invoke_async(&mut self.conn.clone()).await.map_err(op)?;
        Ok(())
    }

    fn chord_counting(&self) -> ChordCounting {
        ChordCounting::Native
    }

    async fn start_chord(&self, group_id: &str, size: usize) -> Result<(), BackendError> {
        self.chords
            .start(&mut self.conn.clone(), group_id, size, self.expires)
            .await
    }

    async fn chord_part_return(&self, part: &ChordPart<'_>) -> Result<ChordJoin, BackendError> {
        self.chords
            .part_return(&mut self.conn.clone(), part, self.expires)
            .await
    }

    async fn release_chord(&self, group_id: &str, claim: &str, body_sent: bool) -> Result<(), BackendError> {
        self.chords
            .release(&mut self.conn.clone(), group_id, claim, body_sent)
            .await
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskResult>, BackendError> {
        let text: Option<String> = self
            .conn
            .clone()
            .get(format!("{TASK_KEY_PREFIX}{task_id}"))
            .await
            .map_err(op)?;
        text.map(|t| decode(task_id, &t)).transpose()
    }

    /// Subscribe first, then read once, then wait for the PUBLISH: as Celery's client does,
    /// so a result stored in between is not missed.
    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<Option<TaskResult>, BackendError> {
        let key = format!("{TASK_KEY_PREFIX}{task_id}");
        let mut pubsub = self.client.get_async_pubsub().await.map_err(op)?;
        pubsub.subscribe(&key).await.map_err(op)?;
        let mut latest = self.get(task_id).await?;
        if latest.as_ref().is_some_and(|r| r.state.is_ready()) {
            return Ok(latest);
        }
        let mut messages = pubsub.on_message();
        let deadline = tokio::time::Instant::now() + timeout;
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, messages.next()).await {
            let text: String = message.get_payload().map_err(op)?;
            let result = decode(task_id, &text)?;
            let ready = result.state.is_ready();
            latest = Some(result);
            if ready {
                break;
            }
        }
        Ok(latest)
    }
}
