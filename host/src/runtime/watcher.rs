//! The plugin folder, watched by polling: adding, replacing or removing `NAME.wasm` (or
//! its `NAME.toml`) takes effect within about a second, without a restart.
//!
//! Polling, rather than inotify, because it also sees files on network and bind mounts,
//! and because a file is only loaded once its size and mtime held still for one
//! interval, so a half-copied file is never compiled.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Runtime;

/// Scan interval of the plugin folder.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(400);

/// What identifies one version of a plugin on disk: the `.wasm` and the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    wasm: (u64, Option<SystemTime>),
    manifest: Option<(u64, Option<SystemTime>)>,
}

fn stat(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    std::fs::metadata(path).ok().map(|m| (m.len(), m.modified().ok()))
}

/// Every `*.wasm` in `dir` with its stamp.
pub fn scan(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, Stamp>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        if let Some(wasm) = stat(&path) {
            let manifest = stat(&path.with_extension("toml"));
            found.insert(path, Stamp { wasm, manifest });
        }
    }
    Ok(found)
}

/// Keep the registry in step with the folder until the runtime is dropped.
/// `applied` holds the stamps already acted on (loaded, or refused as broken).
pub async fn watch(runtime: Arc<Runtime>, dir: PathBuf, mut applied: BTreeMap<PathBuf, Stamp>) {
    let mut previous: BTreeMap<PathBuf, Stamp> = applied.clone();
    let mut ticker = tokio::time::interval(SCAN_INTERVAL);
    loop {
        ticker.tick().await;
        let current = match scan(&dir) {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(dir = %dir.display(), error = %err, "cannot scan the plugin folder");
                continue;
            }
        };
        let mut pending: HashMap<PathBuf, Stamp> = HashMap::new();
        for (path, stamp) in &current {
            let changed = applied.get(path) != Some(stamp);
            let settled = previous.get(path) == Some(stamp);
            if changed && settled {
                pending.insert(path.clone(), stamp.clone());
            }
        }
        for (path, stamp) in pending {
            let rt = runtime.clone();
            let load_path = path.clone();
            // Compiling can take seconds for big guests: keep it off the async threads.
            let loaded = tokio::task::spawn_blocking(move || rt.load_file(&load_path)).await;
            match loaded {
                Ok(Ok(version)) => {
                    tracing::info!(plugin = %version.name, tasks = ?task_names(&version), "plugin loaded")
                }
                Ok(Err(err)) => {
                    tracing::error!(path = %path.display(), error = %err, "plugin refused; the previous version stays in service")
                }
                Err(err) => tracing::error!(path = %path.display(), error = %err, "plugin loader failed"),
            }
            applied.insert(path, stamp);
        }
        let gone: Vec<PathBuf> = applied.keys().filter(|p| !current.contains_key(*p)).cloned().collect();
        for path in gone {
            applied.remove(&path);
            if let Some(old) = runtime.registry.remove(&path) {
                tracing::info!(plugin = %old.name, tasks = ?task_names(&old), "plugin removed");
            }
        }
        previous = current;
    }
}

fn task_names(version: &super::PluginVersion) -> Vec<&str> {
    version.tasks.iter().map(|t| t.name.as_str()).collect()
}
