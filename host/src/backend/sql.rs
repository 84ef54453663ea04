//! Celery's database result backend: tables `celery_taskmeta` / `celery_tasksetmeta`
//! with the DDL SQLAlchemy emits, and `result` as the Python pickle Celery loads.
//!
//! Celery ≤ 5.6 stores `result` as a pickle; 5.7 stores JSON bytes and still reads a
//! pickle (any protocol) when the bytes start with 0x80. A pickle is the one encoding
//! every Celery 5 reader understands, so that is what is written; both are read.

use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::SqlitePool;
use sqlx::Row;

use super::{BackendError, ResultBackend};
use crate::broker::sqlite::{open_pool, sql_timestamp};
use crate::protocol::{State, TaskResult};

/// The DDL SQLAlchemy emits for Celery 5.7's models on SQLite (a superset of 5.x's).
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS celery_taskmeta (
        id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        task_id VARCHAR(155),
        status VARCHAR(50),
        result BLOB,
        date_done DATETIME,
        traceback TEXT,
        children BLOB,
        name VARCHAR(155),
        args BLOB,
        kwargs BLOB,
        worker VARCHAR(155),
        retries INTEGER,
        queue VARCHAR(155),
        stamps BLOB,
        UNIQUE (task_id))",
    "CREATE INDEX IF NOT EXISTS ix_celery_taskmeta_date_done ON celery_taskmeta (date_done)",
    "CREATE TABLE IF NOT EXISTS celery_tasksetmeta (
        id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        taskset_id VARCHAR(155),
        result BLOB,
        date_done DATETIME,
        UNIQUE (taskset_id))",
    "CREATE INDEX IF NOT EXISTS ix_celery_tasksetmeta_date_done ON celery_tasksetmeta (date_done)",
];

pub struct SqlBackend {
    pool: SqlitePool,
}

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
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await.map_err(op)?;
        }
        Ok(SqlBackend { pool })
    }
}

#[async_trait]
impl ResultBackend for SqlBackend {
    async fn store(&self, result: &TaskResult) -> Result<(), BackendError> {
        let ext = result.extended.as_ref();
        let json_bytes = |v: Value| serde_json::to_vec(&v).unwrap_or_default();
        sqlx::query(
            "INSERT INTO celery_taskmeta
                (task_id, status, result, date_done, traceback, children, name, args, kwargs, worker, retries, queue)
             VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (task_id) DO UPDATE SET
                status = excluded.status, result = excluded.result, date_done = excluded.date_done,
                traceback = excluded.traceback, name = excluded.name, args = excluded.args,
                kwargs = excluded.kwargs, worker = excluded.worker, retries = excluded.retries,
                queue = excluded.queue
             WHERE celery_taskmeta.status IS NOT 'SUCCESS'",
        )
        .bind(&result.task_id)
        .bind(result.state.as_str())
        .bind(pickle(&result.result))
        .bind(result.date_done.map(sql_timestamp))
        .bind(&result.traceback)
        .bind(ext.map(|e| e.name.clone()))
        .bind(ext.map(|e| json_bytes(Value::Array(e.args.clone()))))
        .bind(ext.map(|e| json_bytes(Value::Object(e.kwargs.clone()))))
        .bind(ext.map(|e| e.worker.clone()))
        .bind(ext.map(|e| e.retries as i64))
        .bind(ext.map(|e| e.queue.clone()))
        .execute(&self.pool)
        .await
        .map_err(op)?;
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskResult>, BackendError> {
        let row = sqlx::query("SELECT status, result, date_done, traceback FROM celery_taskmeta WHERE task_id = ?")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(op)?;
        let Some(row) = row else { return Ok(None) };
        let status: Option<String> = row.get(0);
        let bytes: Option<Vec<u8>> = row.get(1);
        let date_done: Option<String> = row.get(2);
        let result = match bytes {
            Some(bytes) => unpickle_or_json(&bytes).map_err(|reason| BackendError::Corrupt {
                task_id: task_id.to_owned(),
                reason,
            })?,
            None => Value::Null,
        };
        let mut stored = TaskResult::new(task_id, State::parse(status.as_deref().unwrap_or("PENDING")), result);
        stored.date_done = date_done.as_deref().and_then(parse_sql_timestamp);
        stored.traceback = row.get(3);
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
}
