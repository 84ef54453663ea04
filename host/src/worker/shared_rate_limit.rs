//! Rate limits shared by every worker, which Celery does not have: with
//! `rate_limit_across_workers = true` in a task's manifest, its `rate_limit` holds for the
//! whole fleet. One schedule per task name lives in Redis (`celeriac.rate.<task>`, the
//! time of the next free turn, on Redis's own clock so the workers' clocks do not
//! matter); each start takes the next turn in one script, and the worker waits for it.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

use crate::broker::redis::{connect, connection_error};
use crate::broker::BrokerError;

/// Take the next turn. KEYS: the schedule. ARGV: interval in µs. Returns the wait in µs.
const TAKE_TURN: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local turn = tonumber(redis.call('GET', KEYS[1]) or '0')
if turn < now then turn = now end
local next_turn = turn + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', next_turn), 'PX', math.ceil((next_turn - now) / 1000) + 1000)
return turn - now
";

pub struct SharedRateLimits {
    conn: ConnectionManager,
    take_turn: Script,
}

impl SharedRateLimits {
    pub async fn connect(url: &str) -> Result<SharedRateLimits, BrokerError> {
        let client = redis::Client::open(url).map_err(|e| connection_error(url, e))?;
        Ok(SharedRateLimits {
            conn: connect(&client, url, Some(Duration::from_secs(5))).await?,
            take_turn: Script::new(TAKE_TURN),
        })
    }

    /// Take the next fleet-wide turn for `task` at `per_second`; how long to wait for it.
    pub async fn take_turn(&self, task: &str, per_second: f64) -> Result<Duration, redis::RedisError> {
        let interval_us = (1e6 / per_second).round().max(1.0) as u64;
        let wait_us: i64 = self
            .take_turn
            .key(format!("celeriac.rate.{task}"))
            .arg(interval_us)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(Duration::from_micros(wait_us.max(0) as u64))
    }
}
