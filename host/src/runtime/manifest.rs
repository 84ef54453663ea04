//! `NAME.toml` beside `NAME.wasm`: a plugin's limits, grants and per-task options. Without
//! one a plugin gets the defaults below and nothing else: no files, no environment, no
//! network.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::RuntimeError;
use crate::protocol::time::seconds;

/// Default memory cap per task instance.
pub const DEFAULT_MEMORY_MB: u64 = 128;
/// Default cap on a result's JSON.
pub const DEFAULT_MAX_RESULT_MB: u64 = 16;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub grants: Grants,
    /// Per-task options, by task name: `[tasks."math.add"]`.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskOptions>,
    /// Keep each executor thread's instance between tasks instead of a fresh one per
    /// task: much faster for interpreters (Python, JavaScript), but what one task leaves
    /// in the instance's memory, the next one sees.
    #[serde(default)]
    pub reuse_instance: bool,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskOptions {
    /// The queue this task is sent to when this worker sends it (a chain step, a
    /// callback, a chord body) and its signature names none, as Celery's `Task.queue`.
    pub queue: Option<String>,
    /// Ack the message only once the outcome is stored (default true). `false` acks it as
    /// the task starts, as Celery does by default: a worker that dies mid-task loses it
    /// instead of running it again; for tasks that must never run twice.
    pub acks_late: Option<bool>,
    /// Celery's rate limit for this task on each worker: `"10/s"`, `"100/m"`, `"1000/h"`.
    pub rate_limit: Option<String>,
    /// Make `rate_limit` hold across all workers instead of on each (needs Redis as broker
    /// or result backend; Celery has only per-worker limits).
    pub rate_limit_across_workers: Option<bool>,
    /// Celery's `autoretry_for`: exception type names (`"ValueError"`) that make a failure
    /// a retry, up to `max_retries`.
    #[serde(default)]
    pub autoretry_for: Vec<String>,
    /// Most retries (Celery's default 3).
    pub max_retries: Option<u32>,
    /// Seconds before a retry without backoff (Celery's `default_retry_delay`, 180).
    pub default_retry_delay: Option<f64>,
    /// Exponential backoff factor in seconds (Celery's `retry_backoff`): retry n waits
    /// `factor × 2ⁿ` seconds, at most `retry_backoff_max` (600), with full jitter unless
    /// `retry_jitter = false`.
    pub retry_backoff: Option<f64>,
    pub retry_backoff_max: Option<f64>,
    pub retry_jitter: Option<bool>,
}

impl TaskOptions {
    /// Whether a failure of type `exc_type` is retried automatically.
    pub fn autoretries(&self, exc_type: &str) -> bool {
        self.autoretry_for.iter().any(|t| t == exc_type || t == "Exception")
    }

    /// Seconds before retry number `retries + 1`, as Celery computes it; `jitter` in [0, 1).
    pub fn retry_countdown(&self, retries: u32, jitter: f64) -> f64 {
        match self.retry_backoff {
            None => self.default_retry_delay.unwrap_or(180.0),
            Some(factor) => {
                let ceiling = self.retry_backoff_max.unwrap_or(600.0);
                let countdown = (factor * 2f64.powi(retries.min(62) as i32)).min(ceiling);
                if self.retry_jitter.unwrap_or(true) {
                    (jitter * (countdown + 1.0)).floor().min(countdown)
                } else {
                    countdown
                }
            }
        }
    }
}

/// A Celery rate limit (`"10/s"`, `"100/m"`, `"1000/h"`, or a bare number per second) in
/// tasks per second; `None` for `"0"`, which Celery reads as no limit.
pub fn parse_rate(text: &str) -> Result<Option<f64>, String> {
    let (count, per) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
    let seconds = match per.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("rate limit {text:?}: unit {other:?} is not s, m or h")),
    };
    match count.trim().parse::<f64>() {
        Ok(0.0) => Ok(None),
        Ok(n) if n.is_finite() && n > 0.0 => Ok(Some(n / seconds)),
        _ => Err(format!("rate limit {text:?} is not N/s, N/m or N/h")),
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Memory cap per task instance, summed over the component's memories.
    pub memory_mb: u64,
    /// Hard time limit in seconds: the task is stopped and fails with TimeLimitExceeded.
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds: reported, and visible to the guest through
    /// `soft-time-limit-exceeded()`.
    pub soft_time_limit: Option<f64>,
    /// Largest result (and `update-state` meta) in MiB of JSON; a bigger one fails the
    /// task with `ResultTooLarge` instead of filling the result backend.
    pub max_result_mb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: DEFAULT_MEMORY_MB,
            time_limit: None,
            soft_time_limit: None,
            max_result_mb: DEFAULT_MAX_RESULT_MB,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Environment variables the guest sees.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Host directories mounted into the guest.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
    /// `IP:PORT` addresses the guest may open TCP connections to; nothing else on the
    /// network is reachable (no listening, no UDP, no name lookup).
    #[serde(default)]
    pub connect: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
    #[serde(default)]
    pub mode: DirMode,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum DirMode {
    #[default]
    Ro,
    Rw,
}

impl Manifest {
    /// Read `NAME.toml` next to `wasm`, if there is one.
    pub fn for_component(wasm: &Path) -> Result<Manifest, RuntimeError> {
        let path = wasm.with_extension("toml");
        if !path.exists() {
            return Ok(Manifest::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| RuntimeError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| RuntimeError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        manifest
            .validate()
            .map_err(|reason| RuntimeError::Manifest { path, reason })?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        let ceiling_mb = (super::engine::ENGINE_MEMORY_CEILING >> 20) as u64;
        if self.limits.memory_mb == 0 || self.limits.memory_mb > ceiling_mb {
            return Err(format!("limits.memory_mb must be between 1 and {ceiling_mb}"));
        }
        if self.limits.max_result_mb == 0 || self.limits.max_result_mb > 512 {
            // 512 MB is the most Redis stores in one value.
            return Err("limits.max_result_mb must be between 1 and 512".into());
        }
        for (name, value) in [
            ("time_limit", self.limits.time_limit),
            ("soft_time_limit", self.limits.soft_time_limit),
        ] {
            if value.is_some_and(|v| !v.is_finite() || v <= 0.0) {
                return Err(format!("limits.{name} must be a positive number of seconds"));
            }
        }
        for (task, options) in &self.tasks {
            if let Some(rate) = &options.rate_limit {
                parse_rate(rate).map_err(|e| format!("tasks.{task:?}.rate_limit: {e}"))?;
            }
        }
        for address in &self.grants.connect {
            address
                .parse::<SocketAddr>()
                .map_err(|_| format!("grants.connect: {address:?} is not IP:PORT (e.g. \"10.0.0.5:5432\")"))?;
        }
        for dir in &self.grants.dirs {
            if !dir.host.is_dir() {
                return Err(format!("grants.dirs: {} is not a directory", dir.host.display()));
            }
        }
        Ok(())
    }

    /// Whether `task`'s rate limit holds across all workers.
    pub fn rate_limit_across_workers(&self, task: &str) -> bool {
        self.tasks
            .get(task)
            .and_then(|o| o.rate_limit_across_workers)
            .unwrap_or(false)
    }

    /// Whether `task` is acked only after its outcome is stored.
    pub fn acks_late(&self, task: &str) -> bool {
        self.tasks.get(task).and_then(|o| o.acks_late).unwrap_or(true)
    }

    /// The rate limit of `task`, in tasks per second, if it has one.
    pub fn rate_limit(&self, task: &str) -> Option<f64> {
        let rate = self.tasks.get(task)?.rate_limit.as_deref()?;
        parse_rate(rate).ok().flatten()
    }

    pub fn max_result_bytes(&self) -> usize {
        (self.limits.max_result_mb as usize).saturating_mul(1 << 20)
    }

    pub fn memory_bytes(&self) -> usize {
        (self.limits.memory_mb as usize) << 20
    }

    pub fn time_limits(&self) -> (Option<Duration>, Option<Duration>) {
        let secs = |v: Option<f64>| v.and_then(seconds);
        (secs(self.limits.time_limit), secs(self.limits.soft_time_limit))
    }

    /// Whether the grants let the guest reach a network or files: blocking I/O, and
    /// effects a run cannot take back.
    pub fn grants_io(&self) -> bool {
        !self.grants.connect.is_empty() || !self.grants.dirs.is_empty()
    }

    /// Apply the grants to a fresh WASI context (which starts with nothing).
    pub fn apply_grants(&self, wasi: &mut WasiCtxBuilder) -> Result<(), RuntimeError> {
        for (key, value) in &self.grants.env {
            wasi.env(key, value);
        }
        if !self.grants.connect.is_empty() {
            let allowed: Arc<Vec<SocketAddr>> =
                Arc::new(self.grants.connect.iter().filter_map(|a| a.parse().ok()).collect());
            wasi.allow_tcp(true).socket_addr_check(move |address, usage| {
                let granted = match usage {
                    SocketAddrUse::TcpConnect => allowed.contains(&address),
                    // The ephemeral local port every connect binds first.
                    SocketAddrUse::TcpBind => address.ip().is_unspecified() && address.port() == 0,
                    _ => false,
                };
                Box::pin(async move { granted })
            });
        }
        for dir in &self.grants.dirs {
            let perms = match dir.mode {
                DirMode::Ro => FsPerms::ReadOnly,
                DirMode::Rw => FsPerms::ReadWrite,
            };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| RuntimeError::Grant(format!("cannot mount {}: {e}", dir.host.display())))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_celery_reads_them() {
        assert_eq!(parse_rate("10/s"), Ok(Some(10.0)));
        assert_eq!(parse_rate("120/m"), Ok(Some(2.0)));
        assert_eq!(parse_rate("3600/h"), Ok(Some(1.0)));
        assert_eq!(parse_rate("4"), Ok(Some(4.0)));
        assert_eq!(parse_rate("0"), Ok(None));
        assert!(parse_rate("10/d").is_err());
        assert!(parse_rate("-1/s").is_err());
        assert!(parse_rate("fast").is_err());
        let manifest: Manifest = toml::from_str("[tasks.\"math.add\"]\nrate_limit = \"5/s\"").unwrap();
        assert_eq!(manifest.tasks["math.add"].retry_countdown(0, 0.5), 180.0);
        assert_eq!(manifest.rate_limit("math.add"), Some(5.0));
        assert_eq!(manifest.rate_limit("math.div"), None);
    }

    #[test]
    fn backoff_follows_celery() {
        let options = TaskOptions {
            autoretry_for: vec!["ZeroDivisionError".into()],
            retry_backoff: Some(2.0),
            retry_jitter: Some(false),
            ..Default::default()
        };
        assert!(options.autoretries("ZeroDivisionError") && !options.autoretries("ValueError"));
        let countdowns: Vec<f64> = (0..4).map(|n| options.retry_countdown(n, 0.0)).collect();
        assert_eq!(countdowns, [2.0, 4.0, 8.0, 16.0]);
        assert_eq!(options.retry_countdown(40, 0.0), 600.0, "capped by retry_backoff_max");
        let jittered = TaskOptions {
            retry_jitter: None,
            ..options
        };
        assert_eq!(jittered.retry_countdown(3, 0.0), 0.0);
        assert!(jittered.retry_countdown(3, 0.999) <= 16.0);
    }
}
