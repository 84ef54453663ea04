//! `NAME.toml` beside `NAME.wasm`: a plugin's limits and grants. Without one a plugin
//! gets the defaults below and nothing else: no files, no environment, no network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::RuntimeError;
use crate::protocol::time::seconds;

/// Default memory cap per task instance.
pub const DEFAULT_MEMORY_MB: u64 = 128;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub grants: Grants,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory cap per task instance, summed over the component's memories.
    pub memory_mb: u64,
    /// Hard time limit in seconds: the task is stopped and fails with TimeLimitExceeded.
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds: reported, and visible to the guest through
    /// `soft-time-limit-exceeded()`.
    pub soft_time_limit: Option<f64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: DEFAULT_MEMORY_MB,
            time_limit: None,
            soft_time_limit: None,
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
        for (name, value) in [
            ("time_limit", self.limits.time_limit),
            ("soft_time_limit", self.limits.soft_time_limit),
        ] {
            if value.is_some_and(|v| !v.is_finite() || v <= 0.0) {
                return Err(format!("limits.{name} must be a positive number of seconds"));
            }
        }
        for dir in &self.grants.dirs {
            if !dir.host.is_dir() {
                return Err(format!("grants.dirs: {} is not a directory", dir.host.display()));
            }
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> usize {
        (self.limits.memory_mb as usize) << 20
    }

    pub fn time_limits(&self) -> (Option<Duration>, Option<Duration>) {
        let secs = |v: Option<f64>| v.and_then(seconds);
        (secs(self.limits.time_limit), secs(self.limits.soft_time_limit))
    }

    /// Apply the grants to a fresh WASI context (which starts with nothing).
    pub fn apply_grants(&self, wasi: &mut WasiCtxBuilder) -> Result<(), RuntimeError> {
        for (key, value) in &self.grants.env {
            wasi.env(key, value);
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
