//! What Celery's SQLAlchemy models come to on each database: the DDL `create_all` emits
//! for `celery_taskmeta` / `celery_tasksetmeta` (with the extended-result columns, which
//! SQLAlchemy always creates), and the two statements the backend needs — an upsert that
//! never replaces a stored SUCCESS (a redelivered duplicate must not overwrite the first
//! result) and the read of one task's state.
//!
//! Every statement binds the same values in the same order, all as text, bytes or
//! integers, so one Rust body serves the three databases. Timestamps travel as text in
//! SQLAlchemy's format (`2026-11-25 08:30:00.123456`) and are cast where the column is
//! a real timestamp.

/// Which database, by the URL that named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Sqlite,
    Postgres,
    MySql,
}

pub struct Dialect {
    /// Statements run in order at start; each is idempotent.
    pub schema: &'static [&'static str],
    /// Binds: task_id, status, result, date_done, traceback, name, args, kwargs, worker,
    /// retries, queue.
    pub upsert: String,
    /// Binds: task_id. Returns status, result, date_done (text), traceback.
    pub select: String,
}

const SQLITE_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS celery_taskmeta (
        id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        task_id VARCHAR(155), status VARCHAR(50), result BLOB, date_done DATETIME,
        traceback TEXT, children BLOB, name VARCHAR(155), args BLOB, kwargs BLOB,
        worker VARCHAR(155), retries INTEGER, queue VARCHAR(155), stamps BLOB,
        UNIQUE (task_id))",
    "CREATE INDEX IF NOT EXISTS ix_celery_taskmeta_date_done ON celery_taskmeta (date_done)",
    "CREATE TABLE IF NOT EXISTS celery_tasksetmeta (
        id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        taskset_id VARCHAR(155), result BLOB, date_done DATETIME,
        UNIQUE (taskset_id))",
    "CREATE INDEX IF NOT EXISTS ix_celery_tasksetmeta_date_done ON celery_tasksetmeta (date_done)",
];

/// SQLAlchemy gives the ids sequences of their own (`sa.Sequence`) and no column default,
/// so inserts name `nextval(...)` themselves.
const POSTGRES_SCHEMA: &[&str] = &[
    "CREATE SEQUENCE IF NOT EXISTS task_id_sequence",
    "CREATE TABLE IF NOT EXISTS celery_taskmeta (
        id INTEGER NOT NULL,
        task_id VARCHAR(155), status VARCHAR(50), result BYTEA, date_done TIMESTAMP WITHOUT TIME ZONE,
        traceback TEXT, children BYTEA, name VARCHAR(155), args BYTEA, kwargs BYTEA,
        worker VARCHAR(155), retries INTEGER, queue VARCHAR(155), stamps BYTEA,
        PRIMARY KEY (id), UNIQUE (task_id))",
    "CREATE INDEX IF NOT EXISTS ix_celery_taskmeta_date_done ON celery_taskmeta (date_done)",
    "CREATE SEQUENCE IF NOT EXISTS taskset_id_sequence",
    "CREATE TABLE IF NOT EXISTS celery_tasksetmeta (
        id INTEGER NOT NULL,
        taskset_id VARCHAR(155), result BYTEA, date_done TIMESTAMP WITHOUT TIME ZONE,
        PRIMARY KEY (id), UNIQUE (taskset_id))",
    "CREATE INDEX IF NOT EXISTS ix_celery_tasksetmeta_date_done ON celery_tasksetmeta (date_done)",
];

/// SQLAlchemy's `LargeBinary` is a 64 KiB `BLOB` on MySQL; tables created here use
/// `LONGBLOB` so that a large result is stored rather than refused. Celery reads both.
const MYSQL_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS celery_taskmeta (
        id INTEGER NOT NULL AUTO_INCREMENT,
        task_id VARCHAR(155), status VARCHAR(50), result LONGBLOB, date_done DATETIME,
        traceback TEXT, children LONGBLOB, name VARCHAR(155), args LONGBLOB, kwargs LONGBLOB,
        worker VARCHAR(155), retries INTEGER, queue VARCHAR(155), stamps LONGBLOB,
        PRIMARY KEY (id), UNIQUE (task_id), INDEX ix_celery_taskmeta_date_done (date_done))",
    "CREATE TABLE IF NOT EXISTS celery_tasksetmeta (
        id INTEGER NOT NULL AUTO_INCREMENT,
        taskset_id VARCHAR(155), result LONGBLOB, date_done DATETIME,
        PRIMARY KEY (id), UNIQUE (taskset_id), INDEX ix_celery_tasksetmeta_date_done (date_done))",
];

const UPDATED: [&str; 10] = [
    "status",
    "result",
    "date_done",
    "traceback",
    "name",
    "args",
    "kwargs",
    "worker",
    "retries",
    "queue",
];

/// `?` placeholders as PostgreSQL's `$1, $2, …`.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

impl Dialect {
    pub fn of(flavor: Flavor) -> Dialect {
        let columns = "task_id, status, result, date_done, traceback, name, args, kwargs, worker, retries, queue";
        match flavor {
            Flavor::Sqlite => Dialect {
                schema: SQLITE_SCHEMA,
                upsert: format!(
                    "INSERT INTO celery_taskmeta ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                     ON CONFLICT (task_id) DO UPDATE SET {}
                     WHERE celery_taskmeta.status IS NOT 'SUCCESS'",
                    UPDATED.map(|c| format!("{c} = excluded.{c}")).join(", ")
                ),
                select: "SELECT status, result, date_done, traceback FROM celery_taskmeta WHERE task_id = ?".into(),
            },
            Flavor::Postgres => Dialect {
                schema: POSTGRES_SCHEMA,
                upsert: numbered(&format!(
                    "INSERT INTO celery_taskmeta (id, {columns})
                     VALUES (nextval('task_id_sequence'), ?, ?, ?, CAST(? AS TIMESTAMP), ?, ?, ?, ?, ?, ?, ?)
                     ON CONFLICT (task_id) DO UPDATE SET {}
                     WHERE celery_taskmeta.status IS DISTINCT FROM 'SUCCESS'",
                    UPDATED.map(|c| format!("{c} = EXCLUDED.{c}")).join(", ")
                )),
                select:
                    "SELECT status, result, CAST(date_done AS TEXT), traceback FROM celery_taskmeta WHERE task_id = $1"
                        .into(),
            },
            Flavor::MySql => Dialect {
                schema: MYSQL_SCHEMA,
                // MySQL applies the assignments left to right, each seeing the ones before:
                // `status` goes last so every other column still tests the stored status.
                upsert: format!(
                    "INSERT INTO celery_taskmeta ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                     ON DUPLICATE KEY UPDATE {}",
                    UPDATED[1..]
                        .iter()
                        .chain(&UPDATED[..1])
                        .map(|c| format!("{c} = IF(status <=> 'SUCCESS', {c}, VALUES({c}))"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                select:
                    "SELECT status, result, CAST(date_done AS CHAR), traceback FROM celery_taskmeta WHERE task_id = ?"
                        .into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered() {
        assert_eq!(
            numbered("VALUES (?, CAST(? AS TIMESTAMP))"),
            "VALUES ($1, CAST($2 AS TIMESTAMP))"
        );
        let upsert = Dialect::of(Flavor::Postgres).upsert;
        assert!(upsert.contains("$11") && !upsert.contains('?'), "{upsert}");
    }

    #[test]
    fn mysql_sets_status_last() {
        let upsert = Dialect::of(Flavor::MySql).upsert;
        assert!(
            upsert.ends_with(", status = IF(status <=> 'SUCCESS', status, VALUES(status))"),
            "{upsert}"
        );
    }
}
