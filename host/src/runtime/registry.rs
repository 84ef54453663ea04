//! Which plugin version serves which task name. Readers take a snapshot without locking;
//! a reload builds a new snapshot and swaps it in, so running tasks finish on the version
//! they started with.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::plugin::PluginVersion;
use super::RuntimeError;

#[derive(Default, Clone)]
struct Snapshot {
    by_task: HashMap<String, Arc<PluginVersion>>,
    by_file: BTreeMap<PathBuf, Arc<PluginVersion>>,
}

#[derive(Default)]
pub struct Registry {
    current: ArcSwap<Snapshot>,
    writer: Mutex<()>,
}

impl Registry {
    /// The plugin version serving `task`, if any.
    pub fn lookup(&self, task: &str) -> Option<Arc<PluginVersion>> {
        self.current.load().by_task.get(task).cloned()
    }

    /// Every loaded plugin, by file name.
    pub fn plugins(&self) -> Vec<Arc<PluginVersion>> {
        self.current.load().by_file.values().cloned().collect()
    }

    /// Every served task name, sorted.
    pub fn task_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.current.load().by_task.keys().cloned().collect();
        names.sort();
        names
    }

    /// Put a version in service, replacing the same file's previous version. Fails,
    /// naming both files, if another file already serves one of its task names.
    pub fn install(&self, version: PluginVersion) -> Result<Arc<PluginVersion>, RuntimeError> {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Snapshot::clone(&self.current.load());
        for task in &version.tasks {
            if let Some(other) = next.by_task.get(&task.name) {
                if other.path != version.path {
                    return Err(RuntimeError::TaskConflict {
                        task: task.name.clone(),
                        first: other.path.clone(),
                        second: version.path.clone(),
                    });
                }
            }
        }
        let version = Arc::new(version);
        if let Some(old) = next.by_file.remove(&version.path) {
            next.by_task.retain(|_, v| !Arc::ptr_eq(v, &old));
        }
        for task in &version.tasks {
            next.by_task.insert(task.name.clone(), version.clone());
        }
        next.by_file.insert(version.path.clone(), version.clone());
        self.current.store(Arc::new(next));
        Ok(version)
    }

    /// Take a file's plugin out of service.
    pub fn remove(&self, path: &Path) -> Option<Arc<PluginVersion>> {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Snapshot::clone(&self.current.load());
        let old = next.by_file.remove(path)?;
        next.by_task.retain(|_, v| !Arc::ptr_eq(v, &old));
        self.current.store(Arc::new(next));
        Some(old)
    }

    /// The sha256 of the version currently serving a file.
    pub fn digest_of(&self, path: &Path) -> Option<String> {
        self.current.load().by_file.get(path).map(|v| v.digest.clone())
    }
}
