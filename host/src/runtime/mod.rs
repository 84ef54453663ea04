//! The Wasm runtime: one engine, plugins loaded from a folder, one fresh instance per task.
//!
//! ```text
//! Runtime::new ─→ load_dir(plugins.d) ─→ watch() keeps the registry in step with the folder
//! worker: registry.lookup(task) ─→ Runtime::execute(plugin, Invocation) ─→ Outcome
//! ```

pub mod bindings;
pub mod cache;
pub mod engine;
pub mod execute;
mod inline;
pub mod limits;
pub mod manifest;
pub mod plugin;
pub mod registry;
mod reuse;
mod standby;
pub mod state;
#[cfg(test)]
mod testing;
pub mod watcher;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::Engine;

pub use bindings::TaskContext;
pub use execute::{Invocation, Outcome, Usage};
pub use plugin::PluginVersion;
pub use registry::Registry;
pub use state::ProgressSink;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("wasm engine: {0}")]
    Engine(String),
    #[error("plugin {path} is refused: {reason}")]
    InvalidPlugin { path: PathBuf, reason: String },
    #[error("manifest {path} is invalid: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("grant refused: {0}")]
    Grant(String),
    #[error("task {task:?} is claimed by two plugins, {first} and {second}; keeping {first}")]
    TaskConflict {
        task: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("plugin folder {path} cannot be read: {reason} (create it, or point --plugins at the folder holding your .wasm files)")]
    PluginDir { path: PathBuf, reason: String },
}

pub struct Runtime {
    pub engine: Engine,
    pub registry: Registry,
    linker: Linker<state::TaskState>,
    cache: cache::ComponentCache,
    /// Runs shorter than this, and unheard, count as short (`inline.rs`); zero: none do.
    inline_below: Duration,
}

impl Runtime {
    /// An engine sized for `slots` concurrent tasks, caching compiled plugins in `cache_dir`.
    pub fn new(slots: usize, cache_dir: Option<PathBuf>) -> Result<Runtime, RuntimeError> {
        let engine = engine::build_engine(slots)?;
        engine::start_ticker(&engine)?;
        let linker = engine::build_linker(&engine)?;
        let cache = cache::ComponentCache::new(&engine, cache_dir);
        Ok(Runtime {
            engine,
            registry: Registry::default(),
            linker,
            cache,
            inline_below: inline::INLINE_BELOW,
        })
    }

    /// Count runs under `short` as short, so that their tasks run on the I/O thread
    /// (`inline.rs`); zero runs every task on an executor thread.
    pub fn with_inline_below(self, short: Duration) -> Runtime {
        Runtime {
            inline_below: short,
            ..self
        }
    }

    /// Load (or reload) one plugin file and put it in service.
    pub fn load_file(&self, path: &Path) -> Result<Arc<PluginVersion>, RuntimeError> {
        let version = plugin::load(self, path)?;
        self.registry.install(version)
    }

    /// Validate a file without putting it in service (`celeriac plugins check`).
    pub fn check_file(&self, path: &Path) -> Result<PluginVersion, RuntimeError> {
        plugin::load(self, path)
    }

    /// Load every plugin in a folder. A broken file is logged and skipped. Returns the
    /// folder's state, to seed [`watcher::watch`].
    pub fn load_dir(&self, dir: &Path) -> Result<BTreeMap<PathBuf, watcher::Stamp>, RuntimeError> {
        let found = watcher::scan(dir).map_err(|e| RuntimeError::PluginDir {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        for path in found.keys() {
            match self.load_file(path) {
                Ok(version) => tracing::info!(
                    plugin = %version.name,
                    tasks = ?version.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
                    "plugin loaded"
                ),
                Err(err) => tracing::error!(error = %err, "plugin skipped"),
            }
        }
        Ok(found)
    }
}
