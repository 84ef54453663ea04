//! The embedded broker: one SQLite file with the tables of kombu's SQLAlchemy transport
//! (`kombu_queue`, `kombu_message`), so Python clients using `sqla+sqlite:///FILE` reach it.
//!
//! kombu marks a taken row `visible = 0` and never looks at it again, so a worker that
//! dies loses it. Here a taken row's `timestamp` is its lease: the worker renews it while
//! the task runs and deletes the row on ack; a row whose lease is older than
//! `visibility_timeout` is made visible again by any worker.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use super::virtual_transport::{seconds_option, Store, StoreTag, Taken};
use super::BrokerError;

/// The DDL SQLAlchemy emits for kombu's models on SQLite (kombu 5.x).
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS kombu_queue (
        id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        name VARCHAR(200),
        UNIQUE (name))",
    "CREATE TABLE IF NOT EXISTS kombu_message (
        id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        visible BOOLEAN,
        timestamp DATETIME,
        payload TEXT NOT NULL,
        version SMALLINT NOT NULL,
        queue_id INTEGER,
        CONSTRAINT \"FK_kombu_message_queue\" FOREIGN KEY(queue_id) REFERENCES kombu_queue (id))",
    "CREATE INDEX IF NOT EXISTS ix_kombu_message_visible ON kombu_message (visible)",
    "CREATE INDEX IF NOT EXISTS ix_kombu_message_timestamp ON kombu_message (timestamp)",
    "CREATE INDEX IF NOT EXISTS ix_kombu_message_timestamp_id ON kombu_message (timestamp, id)",
];

pub struct SqliteStore {
    pool: SqlitePool,
    queue_ids: Mutex<HashMap<String, i64>>,
    /// Pause between polls of empty queues (transport option `polling_interval`).
    polling_interval: Duration,
}

/// Open (creating if needed) a SQLite database file shared with Python processes.
pub async fn open_pool(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        // WAL lets Python readers and this worker's writers proceed side by side.
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new().max_connections(4).connect_with(options).await
}

/// SQLAlchemy's text form of a naive `DateTime` on SQLite.
pub fn sql_timestamp(t: chrono::DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

fn op(err: sqlx::Error) -> BrokerError {
    BrokerError::Operation(err.to_string())
}

impl SqliteStore {
    pub async fn open(path: &Path, options: &HashMap<String, String>) -> Result<SqliteStore, BrokerError> {
        let polling_interval = seconds_option(options, "polling_interval", Duration::from_millis(50))?;
        let pool = open_pool(path)
            .await
            .map_err(|e| BrokerError::Connection(format!("cannot open SQLite broker {}: {e}", path.display())))?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await.map_err(op)?;
        }
        Ok(SqliteStore {
            pool,
            queue_ids: Mutex::new(HashMap::new()),
            polling_interval,
        })
    }

    async fn queue_id(&self, queue: &str) -> Result<i64, BrokerError> {
        if let Some(id) = self.queue_ids.lock().unwrap_or_else(|e| e.into_inner()).get(queue) {
            return Ok(*id);
        }
        sqlx::query("INSERT OR IGNORE INTO kombu_queue (name) VALUES (?)")
            .bind(queue)
            .execute(&self.pool)
            .await
            .map_err(op)?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM kombu_queue WHERE name = ?")
            .bind(queue)
            .fetch_one(&self.pool)
            .await
            .map_err(op)?;
        self.queue_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(queue.to_owned(), id);
        Ok(id)
    }

    async fn take_from(&self, queue: &str) -> Result<Option<Taken>, BrokerError> {
        let queue_id = self.queue_id(queue).await?;
        // One statement: SQLite runs it atomically, so two workers never take one row.
        let row = sqlx::query(
            "UPDATE kombu_message SET visible = 0, timestamp = ?, version = version + 1
             WHERE id = (SELECT id FROM kombu_message WHERE queue_id = ? AND visible = 1
                         ORDER BY timestamp, id LIMIT 1)
             RETURNING id, payload, version",
        )
        .bind(sql_timestamp(Utc::now()))
        .bind(queue_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(op)?;
        Ok(row.map(|r| Taken {
            queue: queue.to_owned(),
            tag: r.get::<i64, _>(0).to_string(),
            payload: r.get(1),
            // Inserted at version 1 and taken at 2; anything higher was taken before.
            redelivered: r.get::<i64, _>(2) > 2,
            deferred_writes: None,
        }))
    }
}

fn row_id(tag: &StoreTag) -> Result<i64, BrokerError> {
    tag.parse()
        .map_err(|_| BrokerError::Operation(format!("bad SQLite message id {tag:?}")))
}

#[async_trait]
impl Store for SqliteStore {
    async fn declare(&self, queue: &str) -> Result<(), BrokerError> {
        self.queue_id(queue).await.map(|_| ())
    }

    async fn put(&self, queue: &str, payload: &str, _priority: u8) -> Result<(), BrokerError> {
        let queue_id = self.queue_id(queue).await?;
        sqlx::query(
            "INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id) VALUES (1, NULL, ?, 1, ?)",
        )
        .bind(payload)
        .bind(queue_id)
        .execute(&self.pool)
        .await
        .map_err(op)?;
        Ok(())
    }

    async fn take(&self, queues: &[String], max: usize, block: Duration) -> Result<Vec<Taken>, BrokerError> {
        let deadline = tokio::time::Instant::now() + block;
        let mut out = Vec::new();
        loop {
            for queue in queues {
                while out.len() < max {
                    match self.take_from(queue).await? {
                        Some(taken) => out.push(taken),
                        None => break,
                    }
                }
            }
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(out);
            }
            tokio::time::sleep(self.polling_interval.min(block)).await;
        }
    }

    async fn delete(&self, tag: &StoreTag) -> Result<(), BrokerError> {
        sqlx::query("DELETE FROM kombu_message WHERE id = ?")
            .bind(row_id(tag)?)
            .execute(&self.pool)
            .await
            .map_err(op)?;
        Ok(())
    }

    async fn restore(&self, tag: &StoreTag) -> Result<(), BrokerError> {
        sqlx::query("UPDATE kombu_message SET visible = 1, version = version + 1 WHERE id = ?")
            .bind(row_id(tag)?)
            .execute(&self.pool)
            .await
            .map_err(op)?;
        Ok(())
    }

    async fn renew(&self, tags: &[StoreTag]) -> Result<(), BrokerError> {
        let now = sql_timestamp(Utc::now());
        for chunk in tags.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(",");
            let sql = format!("UPDATE kombu_message SET timestamp = ? WHERE visible = 0 AND id IN ({placeholders})");
            let mut query = sqlx::query(&sql).bind(&now);
            for tag in chunk {
                query = query.bind(row_id(tag)?);
            }
            query.execute(&self.pool).await.map_err(op)?;
        }
        Ok(())
    }

    async fn restore_expired(&self, timeout: Duration) -> Result<u64, BrokerError> {
        let Some(cutoff) = chrono::Duration::from_std(timeout)
            .ok()
            .and_then(|t| Utc::now().checked_sub_signed(t))
        else {
            return Ok(0); // a timeout longer than the calendar: nothing has expired
        };
        let done = sqlx::query(
            "UPDATE kombu_message SET visible = 1, version = version + 1
             WHERE visible = 0 AND timestamp IS NOT NULL AND timestamp < ?",
        )
        .bind(sql_timestamp(cutoff))
        .execute(&self.pool)
        .await
        .map_err(op)?;
        Ok(done.rows_affected())
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let queue_id = self.queue_id(queue).await?;
        let done = sqlx::query("DELETE FROM kombu_message WHERE queue_id = ? AND visible = 1")
            .bind(queue_id)
            .execute(&self.pool)
            .await
            .map_err(op)?;
        Ok(done.rows_affected())
    }

    /// Short, because leases are renewed while tasks run and no Python sweeper exists
    /// here: a dead worker's messages come back within half a minute.
    fn default_visibility_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}
