//! Tasks whose ETA is far off, kept in Redis instead of in a worker: a sorted set
//! (`celeriac.eta`, under the global key prefix) of `[list key, envelope]` scored by the
//! ETA in Unix seconds. Every worker moves the due ones back onto their lists, in one
//! script, so two workers never move the same message twice. Python workers do not read
//! this set: a parked task is run by a Celeriac worker.

use redis::aio::ConnectionManager;
use redis::Script;

use super::redis::op;
use super::BrokerError;
use crate::protocol::time::unix_now;

/// Most messages moved back per call.
const UNPARK_BATCH: usize = 1000;

/// Move due messages back. KEYS: the set. ARGV: now, batch size. Returns how many.
const UNPARK: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local ok, entry = pcall(cjson.decode, member)
  if ok and type(entry) == 'table' and type(entry[1]) == 'string' and type(entry[2]) == 'string' then
    redis.call('LPUSH', entry[1], entry[2])
  end
end
return #due
";

pub struct RedisParking {
    key: String,
    unpark: Script,
}

impl RedisParking {
    pub fn new(prefix: &str) -> RedisParking {
        RedisParking {
            key: format!("{prefix}celeriac.eta"),
            unpark: Script::new(UNPARK),
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
        self.unpark
            .key(&self.key)
            .arg(unix_now())
            .arg(UNPARK_BATCH)
            .invoke_async(conn)
            .await
            .map_err(op)
    }
}
