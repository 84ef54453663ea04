//! Tasks whose ETA is far off, kept in Redis instead of in a worker: a sorted set
//! (`celeriac.eta`, under the global key prefix) of `[list key, envelope]` scored by the
//! ETA in Unix seconds. Every worker moves the due ones back onto their lists, each in
//! one script that only the first caller gets past, so two workers never move the same
//! message twice. Python workers do not read this set: a parked task is run by a
//! Celeriac worker.
//!
//! The members are read here, not in Redis: Debian 11's and Ubuntu 22.04's Redis (6.0,
//! built on the system's Lua) has no `cjson` in scripts, and a script that removed a
//! member and then failed to decode it would lose the message.

use redis::aio::ConnectionManager;

use super::redis::op;
use super::BrokerError;
use crate::protocol::time::unix_now;

/// Most messages moved back per call.
const UNPARK_BATCH: isize = 1000;

/// Move one parked message back, if it is still parked. KEYS: the set, the list.
/// ARGV: the member, the envelope. Returns 1 if this call moved it.
const MOVE_BACK: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
";

pub struct RedisParking {
    key: String,
}

impl RedisParking {
    pub fn new(prefix: &str) -> RedisParking {
        RedisParking {
            key: format!("{prefix}celeriac.eta"),
        }
    }

    /// Keep `payload` until `until` (Unix seconds), then push it on `list`.
    pub async fn park(
        &self,
        conn: &mut ConnectionManager,
        list: &str,
        payload: &str,
        until: f64,
    ) -> Result<(), BrokerError> {
        let member = serde_json::json!([list, payload]).to_string();
        redis::cmd("ZADD")
            .arg(&self.key)
            .arg(until)
            .arg(member)
            .query_async::<()>(conn)
            .await
            .map_err(op)
    }

    /// Push every due message back on its list; how many.
    pub async fn unpark_due(&self, conn: &mut ConnectionManager) -> Result<u64, BrokerError> {
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&self.key)
            .arg("-inf")
            .arg(unix_now())
            .arg("LIMIT")
            .arg(0)
            .arg(UNPARK_BATCH)
            .query_async(conn)
            .await
            .map_err(op)?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut moves = redis::pipe();
        for member in &due {
            match parked_entry(member) {
                // EVAL, not EVALSHA: the redis crate pipelines no scripts, and this one is short.
                Some((list, envelope)) => {
                    moves
                        .cmd("EVAL")
                        .arg(MOVE_BACK)
                        .arg(2)
                        .arg(&self.key)
                        .arg(list)
                        .arg(member)
                        .arg(envelope);
                }
                None => {
                    tracing::error!(member = %member, "a parked entry is not [list, envelope]; dropping it");
                    moves.zrem(&self.key, member).ignore();
                }
            }
        }
        let moved: Vec<u64> = moves.query_async(conn).await.map_err(op)?;
        Ok(moved.iter().sum())
    }
}

/// The list key and envelope of a `[list, envelope]` member.
fn parked_entry(member: &str) -> Option<(String, String)> {
    serde_json::from_str(member).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_parked_entry() {
        let member = serde_json::json!(["celery\x06\x163", "{\"body\": \"e30=\"}"]).to_string();
        assert_eq!(
            parked_entry(&member),
            Some(("celery\x06\x163".to_owned(), "{\"body\": \"e30=\"}".to_owned()))
        );
        assert_eq!(parked_entry("[\"celery\"]"), None);
        assert_eq!(parked_entry("not json"), None);
    }
}
