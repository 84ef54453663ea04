//! Chord counting in Redis, on Celery's keys so Python and Celeriac workers can share a
//! chord: `celery-taskset-meta-<group>` + `.s` (header size, set when the chord is
//! applied), `.t` (size adjustments), `.j` (a sorted set of `[1, id, state, result]` by
//! header index), `.d` (part-returns already counted, so a redelivered header task is
//! counted once) and `.c` (the claim to run the body, then `done`), as Celery 5.7 does.
//! Each step is one script, so two workers finishing the last two header tasks at once
//! cannot both run the body.

use redis::aio::ConnectionManager;
use redis::Script;
use serde_json::{json, Value};

use super::chord::{ChordEntry, ChordJoin, ChordPart};
use super::BackendError;
use crate::protocol::State;

/// Celery's key prefix for group and chord bookkeeping.
const GROUP_KEY_PREFIX: &str = "celery-taskset-meta-";
/// How long a claim to run the body holds if its worker dies before releasing it.
const CLAIM_SECONDS: u64 = 10;
/// How long `done` keeps late duplicates of header tasks from starting the count again.
const DONE_SECONDS: u64 = 300;

/// Count one header outcome; claim the body when the count reaches the size.
/// KEYS: .j .t .s .d .c. ARGV: member id, entry, score, expiry (0: none), claim token,
/// claim seconds. Returns {claimed, entries}.
const PART_RETURN: &str = r"
if redis.call('GET', KEYS[5]) == 'done' then
  return {0, {}}
end
if redis.call('SADD', KEYS[4], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
end
local expires = tonumber(ARGV[4])
if expires > 0 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], expires) end
end
local size = redis.call('GET', KEYS[3])
if not size then
  return {0, {}}
end
local total = tonumber(size) + tonumber(redis.call('GET', KEYS[2]) or '0')
if redis.call('ZCARD', KEYS[1]) >= total
    and redis.call('SET', KEYS[5], ARGV[5], 'NX', 'EX', tonumber(ARGV[6])) then
  return {1, redis.call('ZRANGE', KEYS[1], 0, -1)}
end
return {0, {}}
";

/// Give up a claim: after the body was sent, drop the chord's keys and mark it done;
/// otherwise free the claim for the header task's next delivery.
/// KEYS: .j .t .s .d .c. ARGV: claim token, `1` if the body was sent, done seconds.
const RELEASE: &str = r"
if redis.call('GET', KEYS[5]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
  redis.call('SET', KEYS[5], 'done', 'EX', tonumber(ARGV[3]))
else
  redis.call('DEL', KEYS[5])
end
return 1
";

pub struct RedisChords {
    part_return: Script,
    release: Script,
}

fn key(group_id: &str, suffix: &str) -> String {
    format!("{GROUP_KEY_PREFIX}{group_id}{suffix}")
}

/// A script call on a chord's keys, in the order both scripts take them: .j .t .s .d .c.
fn on_chord_keys<'a>(script: &'a Script, group_id: &str) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    for suffix in [".j", ".t", ".s", ".d", ".c"] {
        invocation.key(key(group_id, suffix));
    }
    invocation
}

fn op(err: redis::RedisError) -> BackendError {
    BackendError::Operation(format!("redis chord: {err}"))
}

impl Default for RedisChords {
    fn default() -> RedisChords {
        RedisChords {
            part_return: Script::new(PART_RETURN),
            release: Script::new(RELEASE),
        }
    }
}

impl RedisChords {
    /// A new run of the chord: its size, and no claim left from an earlier run.
    pub async fn start(
        &self,
        conn: &mut ConnectionManager,
        group_id: &str,
        size: usize,
        expires: u64,
    ) -> Result<(), BackendError> {
        let mut pipe = redis::pipe();
        pipe.del(key(group_id, ".c"));
        if expires > 0 {
            pipe.set_ex(key(group_id, ".s"), size, expires);
        } else {
            pipe.set(key(group_id, ".s"), size);
        }
        pipe.query_async::<()>(conn).await.map_err(op)
    }

    pub async fn part_return(
        &self,
        conn: &mut ConnectionManager,
        part: &ChordPart<'_>,
        expires: u64,
    ) -> Result<ChordJoin, BackendError> {
        let group = part.group_id;
        // Celery scores a header task without an index last.
        let score = part.group_index.map_or_else(|| "+inf".to_owned(), |i| i.to_string());
        let entry = json!([1, part.task_id, part.state.as_str(), part.result]).to_string();
        let claim = uuid::Uuid::new_v4().simple().to_string();
        let (claimed, entries): (i64, Vec<String>) = on_chord_keys(&self.part_return, group)
            .arg(format!("{}:{score}", part.task_id))
            .arg(entry)
            .arg(score)
            .arg(expires)
            .arg(&claim)
            .arg(CLAIM_SECONDS)
            .invoke_async(conn)
            .await
            .map_err(op)?;
        if claimed == 0 {
            return Ok(ChordJoin::Pending);
        }
        let entries = entries
            .iter()
            .map(|text| decode_entry(group, text))
            .collect::<Result<_, _>>()?;
        Ok(ChordJoin::Complete { entries, claim })
    }

    pub async fn release(
        &self,
        conn: &mut ConnectionManager,
        group_id: &str,
        claim: &str,
        body_sent: bool,
    ) -> Result<(), BackendError> {
        let _: i64 = on_chord_keys(&self.release, group_id)
            .arg(claim)
            .arg(if body_sent { "1" } else { "0" })
            .arg(DONE_SECONDS)
            .invoke_async(conn)
            .await
            .map_err(op)?;
        Ok(())
    }
}

/// `[1, task_id, state, result]`, as Celery's workers write it.
fn decode_entry(group_id: &str, text: &str) -> Result<ChordEntry, BackendError> {
    let corrupt = || BackendError::Corrupt {
        task_id: group_id.to_owned(),
        reason: format!("not a chord entry: {text:.200}"),
    };
    let value: Value = serde_json::from_str(text).map_err(|_| corrupt())?;
    match value.as_array().map(Vec::as_slice) {
        Some([_, Value::String(task_id), Value::String(state), result]) => Ok(ChordEntry {
            task_id: task_id.clone(),
            state: State::parse(state),
            result: result.clone(),
        }),
        _ => Err(corrupt()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_written_by_celery_decode_and_garbage_is_an_error() {
        let entry = decode_entry("g", r#"[1, "30734d6d", "SUCCESS", 1]"#).unwrap();
        assert_eq!(
            (entry.task_id.as_str(), entry.state, entry.result),
            ("30734d6d", State::Success, json!(1))
        );
        assert!(decode_entry("g", "[1, 2]").is_err());
        assert!(decode_entry("g", "{").is_err());
    }
}
