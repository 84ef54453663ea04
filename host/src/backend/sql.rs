//! Celery's database result backend on SQLite, PostgreSQL and MySQL/MariaDB: tables
//! `celery_taskmeta` / `celery_tasksetmeta` as SQLAlchemy creates them (`sql_dialect`),
//! and `result` as the Python pickle Celery loads.
//!
//! Celery ≤ 5.6 stores `result` as a pickle; 5.7 stores JSON bytes and still reads a
//! pickle (any protocol) when the bytes start with 0x80. A pickle is the one encoding
//! every Celery 5 reader understands, so that is what is written; both are read.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::SqlitePool;

use super::sql_dialect::{Dialect, Flavor};
use super::{BackendError, ResultBackend};
use crate::broker::sqlite::{open_pool, sql_timestamp};
use crate::config::redact;
use crate::protocol::{State, TaskResult};

/// Connections per worker: result writes are short and batched.
const MAX_CONNECTIONS: u32 = 4;

enum SqlPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    MySql(MySqlPool),
}

/// Run the same sqlx code on whichever pool this is: the statements differ by dialect,
/// the Rust that binds and reads them does not.
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            SqlPool::Sqlite($p) => $body,
            SqlPool::Postgres($p) => $body,
            SqlPool::MySql($p) => $body,
        }
    };
}

pub struct SqlBackend {
    pool: SqlPool,
    dialect: Dialect,
}

/// One stored row as the select returns it: status, result, date_done, traceback.
type Row = (Option<String>, Option<Vec<u8>>, Option<String>, Option<String>);

fn op(err: sqlx::Error) -> BackendError {
    BackendError::Operation(err.to_string())
}

/// A Python pickle of a JSON value (dicts, lists, str, int, float, bool, None).
pub fn pickle(value: &Value) -> Vec<u8> {
    // Serializing a serde_json::Value into a pickle has no failing case.
    serde_pickle::to_vec(value, serde_pickle::SerOptions::new()).unwrap_or_default()
}

/// Decode a stored `result`: JSON (Celery 5.7) or a pickle (Celery ≤ 5.6, Celeriac).
pub fn unpickle_or_json(bytes: &[u8]) -> Result<Value, String> {
    if bytes.first() == Some(&0x80) {
        serde_pickle::from_slice(bytes, serde_pickle::DeOptions::new().replace_unresolved_globals())
            .map_err(|e| format!("not a readable pickle: {e}"))
    } else {
        serde_json::from_slice(bytes).map_err(|e| format!("neither a pickle nor JSON: {e}"))
    }
}

impl SqlBackend {
    pub async fn open_sqlite(path: &Path) -> Result<SqlBackend, BackendError> {
        let pool = open_pool(path)
            .await
            .map_err(|e| BackendError::Connection(format!("cannot open SQLite backend {}: {e}", path.display())))?;
        SqlBackend::create(SqlPool::Sqlite(pool), Flavor::Sqlite).await
    }

    /// `url` as sqlx reads it: `postgres://…` or `mysql://…`.
    pub async fn open_server(url: &str, flavor: Flavor) -> Result<SqlBackend, BackendError> {
        let unreachable = |e: sqlx::Error| BackendError::Connection(format!("cannot connect to {}: {e}", redact(url)));
        let timeout = Duration::from_secs(10);
        let pool = match flavor {
            Flavor::Postgres => SqlPool::Postgres(
                PgPoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(timeout)
                    .connect(url)
                    .await
                    .map_err(unreachable)?,
            ),
            Flavor::MySql => SqlPool::MySql(
                MySqlPoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(timeout)
                    .connect(url)
                    .await
                    .map_err(unreachable)?,
            ),
            Flavor::Sqlite => return Err(BackendError::Connection("SQLite is a file, not a server".into())),
        };
        SqlBackend::create(pool, flavor).await
    }

    /// Create the tables if they are missing.
    async fn create(pool: SqlPool, flavor: Flavor) -> Result<SqlBackend, BackendError> {
        let dialect = Dialect::of(flavor);
        for statement in dialect.schema {
            let run = || async { on_pool!(&pool, p => sqlx::query(statement).execute(p).await.map(|_| ())) };
            if run().await.is_err() {
                // Two workers starting together can race on CREATE … IF NOT EXISTS;
                // the loser's retry finds the object there.
                tokio::time::sleep(Duration::from_millis(200)).await;
                run().await.map_err(op)?;
            }
        }
        Ok(SqlBackend { pool, dialect })
    }
}

#[async_trait]
impl ResultBackend for SqlBackend {
    async fn store(&self, result: &TaskResult) -> Result<(), BackendError> {
        let ext = result.extended.as_ref();
        let json_bytes = |v: Value| serde_json::to_vec(&v).unwrap_or_default();
        let result_bytes = pickle(&result.result);
        let date_done = result.date_done.map(sql_timestamp);
        let name = ext.map(|e| e.name.clone());
        let args = ext.map(|e| json_bytes(Value::Array(e.args.clone())));
        let kwargs = ext.map(|e| json_bytes(Value::Object(e.kwargs.clone())));
        let worker = ext.map(|e| e.worker.clone());
        let retries = ext.map(|e| i32::try_from(e.retries).unwrap_or(i32::MAX));
        let queue = ext.map(|e| e.queue.clone());
        on_pool!(&self.pool, pool => sqlx::query(&self.dialect.upsert)
            .bind(&result.task_id)
            .bind(result.state.as_str())
            .bind(&result_bytes)
            .bind(&date_done)
            .bind(&result.traceback)
            .bind(&name)
            .bind(&args)
            .bind(&kwargs)
            .bind(&worker)
            .bind(retries)
            .bind(&queue)
            .execute(pool)
            .await
            .map(|_| ()))
        .map_err(op)
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskResult>, BackendError> {
        let row: Option<Row> = on_pool!(&self.pool, pool => sqlx::query_as(&self.dialect.select)
            .bind(task_id)
            .fetch_optional(pool)
            .await)
        .map_err(op)?;
        let Some((status, bytes, date_done, traceback)) = row else {
            return Ok(None);
        };
        let result = match bytes {
            Some(bytes) => unpickle_or_json(&bytes).map_err(|reason| BackendError::Corrupt {
                task_id: task_id.to_owned(),
                reason,
            })?,
            None => Value::Null,
        };
        let mut stored = TaskResult::new(task_id, State::parse(status.as_deref().unwrap_or("PENDING")), result);
        stored.date_done = date_done.as_deref().and_then(parse_sql_timestamp);
        stored.traceback = traceback;
        Ok(Some(stored))
    }
}

fn parse_sql_timestamp(text: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pickles_read_back() {
        let value = json!({"exc_type": "ZeroDivisionError", "exc_message": ["division by zero"], "n": 5, "f": 1.5, "none": null});
        assert_eq!(unpickle_or_json(&pickle(&value)).unwrap(), value);
        assert_eq!(unpickle_or_json(b"5").unwrap(), json!(5));
        assert!(unpickle_or_json(b"\x80garbage").is_err());
    }

    #[test]
    fn timestamps_read_with_and_without_fractions() {
        // SQLite and PostgreSQL keep microseconds; MySQL's DATETIME keeps whole seconds.
        let micros = parse_sql_timestamp("2026-11-25 08:30:00.123456").unwrap();
        assert_eq!(micros.timestamp_subsec_micros(), 123456);
        assert_eq!(
            parse_sql_timestamp("2026-11-25 08:30:00").unwrap().timestamp(),
            micros.timestamp()
        );
    }
}
