//! One configuration from a TOML file, the environment and command-line flags (in rising
//! precedence), and the URL → broker / backend kind mapping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::broker::sqs::SqsUrl;

/// The embedded default when no broker or backend is named.
pub const DEFAULT_URL: &str = "sqlite://celeriac.db";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unsupported {what} URL {url:?}: {hint}")]
    Url {
        what: &'static str,
        url: String,
        hint: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("bad --broker-transport-option {0:?}: expected KEY=VALUE")]
    TransportOption(String),
}

/// A broker, by the URL that names it.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerUrl {
    /// `sqlite://FILE`, `sqla+sqlite:///FILE` (four slashes for an absolute path).
    Sqlite(PathBuf),
    /// `redis://`, `rediss://`, `redis+socket://`, as a URL the `redis` crate reads.
    Redis(String),
    /// `amqp://USER:PASSWORD@HOST:PORT/VHOST`, `amqps://…` (Celery's `pyamqp://` too).
    Amqp(String),
    /// `sqs://[KEY:SECRET@][HOST:PORT]`: AWS, or the SQS-compatible server at HOST:PORT.
    Sqs(SqsUrl),
    /// `zookeeper://HOST[:PORT][,HOST[:PORT]…][/VHOST]`: what follows the scheme.
    Zookeeper(String),
}

/// A result backend, by the URL that names it.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendUrl {
    /// `sqlite://FILE`, `db+sqlite:///FILE`.
    Sqlite(PathBuf),
    /// `redis://`, `rediss://`, `redis+socket://`, as a URL the `redis` crate reads.
    Redis(String),
    /// `rpc://`: results go back as messages through the (AMQP) broker.
    Rpc,
    /// `db+postgresql://…` (any SQLAlchemy driver suffix), as sqlx reads it: `postgres://…`.
    Postgres(String),
    /// `db+mysql://…` (any SQLAlchemy driver suffix), as sqlx reads it: `mysql://…`.
    MySql(String),
}

const BROKERS_SUPPORTED: &str = "supported: sqlite://FILE, sqla+sqlite:///FILE, redis://[:PASSWORD@]HOST[:PORT][/DB], \
     rediss://…, redis+socket:///PATH, amqp://USER:PASSWORD@HOST[:PORT]/VHOST, amqps://…, \
     sqs://[KEY:SECRET@][HOST:PORT], zookeeper://HOST[:PORT][/VHOST]";
const BACKENDS_SUPPORTED: &str = "supported: sqlite://FILE, db+sqlite:///FILE, redis://[:PASSWORD@]HOST[:PORT][/DB], \
     rediss://…, redis+socket:///PATH, rpc:// (with an amqp:// broker), \
     db+postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, db+mysql://USER[:PASSWORD]@HOST[:PORT]/DB";

/// kombu's Redis URL spellings, as the `redis` crate reads them: `redis+socket:///PATH`
/// (db in `?virtual_host=N`) becomes `redis+unix:///PATH?db=N`.
fn redis_url(scheme: &str, rest: &str) -> Option<String> {
    match scheme {
        "redis" | "rediss" => Some(format!("{scheme}://{rest}")),
        "redis+socket" | "socket" => {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let db = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("virtual_host=").or_else(|| kv.strip_prefix("db=")))
                .unwrap_or("0");
            Some(format!("redis+unix://{path}?db={db}"))
        }
        _ => None,
    }
}

/// SQLAlchemy's reading of a SQLite URL: after `scheme://`, one `/` separates the (empty)
/// host from the path, so `///rel.db` is relative and `////abs.db` is absolute. The
/// short form `sqlite://rel.db` is relative too.
fn sqlite_path(rest: &str) -> Option<PathBuf> {
    let path = rest.strip_prefix('/').unwrap_or(rest);
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty()).then(|| PathBuf::from(path))
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, ConfigError> {
        let error = |hint: &str| ConfigError::Url {
            what: "broker",
            url: url.to_owned(),
            hint: hint.to_owned(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| error(BROKERS_SUPPORTED))?;
        match scheme {
            "sqlite" | "sqla+sqlite" => sqlite_path(rest)
                .map(BrokerUrl::Sqlite)
                .ok_or_else(|| error("the URL names no database file")),
            "redis" | "rediss" | "redis+socket" | "socket" => redis_url(scheme, rest)
                .map(BrokerUrl::Redis)
                .ok_or_else(|| error(BROKERS_SUPPORTED)),
            "amqp" | "amqps" => Ok(BrokerUrl::Amqp(url.to_owned())),
            "pyamqp" => Ok(BrokerUrl::Amqp(format!("amqp://{rest}"))),
            "sqs" => Ok(BrokerUrl::Sqs(SqsUrl::parse(rest))),
            "zookeeper" => Ok(BrokerUrl::Zookeeper(rest.to_owned())),
            _ => Err(error(BROKERS_SUPPORTED)),
        }
    }
}

impl BackendUrl {
    pub fn parse(url: &str) -> Result<BackendUrl, ConfigError> {
        let error = |hint: &str| ConfigError::Url {
            what: "result backend",
            url: url.to_owned(),
            hint: hint.to_owned(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| error(BACKENDS_SUPPORTED))?;
        match scheme {
            "sqlite" | "db+sqlite" => sqlite_path(rest)
                .map(BackendUrl::Sqlite)
                .ok_or_else(|| error("the URL names no database file")),
            "redis" | "rediss" | "redis+socket" | "socket" => redis_url(scheme, rest)
                .map(BackendUrl::Redis)
                .ok_or_else(|| error(BACKENDS_SUPPORTED)),
            "rpc" => Ok(BackendUrl::Rpc),
            // SQLAlchemy names the driver after a `+` (`db+mysql+pymysql`); sqlx has its own.
            _ => match scheme.strip_prefix("db+").map(|s| s.split('+').next().unwrap_or(s)) {
                Some("postgresql" | "postgres") => Ok(BackendUrl::Postgres(format!("postgres://{rest}"))),
                Some("mysql" | "mariadb") => Ok(BackendUrl::MySql(format!("mysql://{rest}"))),
                _ => Err(error(BACKENDS_SUPPORTED)),
            },
        }
    }
}

/// The optional TOML config file; every key mirrors a command-line flag.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub broker: Option<String>,
    pub result_backend: Option<String>,
    pub plugins: Option<PathBuf>,
    pub queues: Option<Vec<String>>,
    pub concurrency: Option<usize>,
    pub hostname: Option<String>,
    pub prefetch_multiplier: Option<usize>,
    pub result_extended: Option<bool>,
    pub task_events: Option<bool>,
    pub statedb: Option<PathBuf>,
    pub park_eta_after: Option<f64>,
    pub shutdown_timeout: Option<f64>,
    pub otlp_endpoint: Option<String>,
    pub result_expires: Option<u64>,
    pub log_format: Option<String>,
    pub http: Option<String>,
    pub inline_below: Option<u64>,
    pub io_threads: Option<u16>,
    #[serde(default)]
    pub broker_transport_options: HashMap<String, toml::Value>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let file_error = |reason: String| ConfigError::File {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        toml::from_str(&text).map_err(|e| file_error(e.to_string()))
    }

    /// Transport options as strings, the way they arrive from the command line.
    pub fn transport_options(&self) -> HashMap<String, String> {
        self.broker_transport_options
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    }
}

/// Parse `KEY=VALUE` pairs given with `--broker-transport-option`.
pub fn parse_transport_options(pairs: &[String]) -> Result<HashMap<String, String>, ConfigError> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| ConfigError::TransportOption(pair.clone()))
        })
        .collect()
}

/// A URL with its password hidden, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => format!("{}://***@{}", &url[..scheme_end], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// The default node name, `celeriac@<host>`, as Celery's `celery@<host>`.
pub fn default_hostname() -> String {
    format!("celeriac@{}", gethostname::gethostname().to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_follow_sqlalchemy() {
        assert_eq!(
            BrokerUrl::parse("sqlite://celeriac.db").unwrap(),
            BrokerUrl::Sqlite("celeriac.db".into())
        );
        assert_eq!(
            BrokerUrl::parse("sqla+sqlite:///celeriac.db").unwrap(),
            BrokerUrl::Sqlite("celeriac.db".into())
        );
        assert_eq!(
            BrokerUrl::parse("sqla+sqlite:////tmp/x.db").unwrap(),
            BrokerUrl::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            BackendUrl::parse("db+sqlite:////tmp/x.db").unwrap(),
            BackendUrl::Sqlite("/tmp/x.db".into())
        );
    }

    #[test]
    fn redis_urls_follow_kombu() {
        assert_eq!(
            BrokerUrl::parse("redis://:pw@h:6380/3").unwrap(),
            BrokerUrl::Redis("redis://:pw@h:6380/3".into())
        );
        assert_eq!(
            BrokerUrl::parse("redis+socket:///run/redis.sock?virtual_host=2").unwrap(),
            BrokerUrl::Redis("redis+unix:///run/redis.sock?db=2".into())
        );
        assert_eq!(
            BackendUrl::parse("rediss://h/1").unwrap(),
            BackendUrl::Redis("rediss://h/1".into())
        );
    }

    #[test]
    fn sqs_urls_follow_kombu() {
        let BrokerUrl::Sqs(url) = BrokerUrl::parse("sqs://key:hunter2@127.0.0.1:5000").unwrap() else {
            panic!("not an SQS URL");
        };
        assert_eq!(url.host.as_deref(), Some("127.0.0.1:5000"));
        assert!(!format!("{url:?}").contains("hunter2"), "{url:?}");
        assert_eq!(BrokerUrl::parse("sqs://").unwrap(), BrokerUrl::Sqs(SqsUrl::default()));
    }

    #[test]
    fn database_urls_follow_celery() {
        assert_eq!(
            BackendUrl::parse("db+postgresql://u:p@h:5432/results").unwrap(),
            BackendUrl::Postgres("postgres://u:p@h:5432/results".into())
        );
        assert_eq!(
            BackendUrl::parse("db+postgresql+psycopg2://h/r").unwrap(),
            BackendUrl::Postgres("postgres://h/r".into())
        );
        assert_eq!(
            BackendUrl::parse("db+mysql+pymysql://root@h:3306/test?charset=utf8mb4").unwrap(),
            BackendUrl::MySql("mysql://root@h:3306/test?charset=utf8mb4".into())
        );
        assert!(BackendUrl::parse("db+oracle://h/x").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:secret@host:6379/1"), "redis://***@host:6379/1");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn wrong_urls_say_what_is_supported() {
        let err = BrokerUrl::parse("http://x").unwrap_err().to_string();
        assert!(err.contains("supported"), "{err}");
        assert!(BrokerUrl::parse("sqlite://").is_err());
        assert!(parse_transport_options(&["novalue".into()]).is_err());
        assert_eq!(parse_transport_options(&["a=1".into()]).unwrap()["a"], "1");
    }
}
