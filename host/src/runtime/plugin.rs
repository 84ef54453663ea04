//! Loading one plugin file: read, compile (or take from the cache), check it against the
//! WIT, resolve its imports once (`InstancePre`), and ask it which tasks it serves.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::Component;
use wasmtime::Engine;

use super::bindings::{PluginPre, TaskInfo, HANDLER_INTERFACE, WIT_PACKAGE, WIT_VERSION};
use super::inline::ShortTasks;
use super::limits::Deadline;
use super::manifest::Manifest;
use super::{Runtime, RuntimeError};

/// One loaded version of a plugin file. Running tasks hold an `Arc` of it, so a reload
/// lets them finish on the version they started with.
#[derive(Clone)]
pub struct PluginVersion {
    /// The file stem: `math` for `math.wasm`.
    pub name: String,
    pub path: PathBuf,
    /// sha256 of the `.wasm` bytes.
    pub digest: String,
    /// Unique to this load. Instances kept or made ahead serve only the load they were
    /// made for: a changed manifest (grants, limits) loads the same bytes anew.
    pub load_id: u64,
    /// The `celeriac:task/handler@X.Y.Z` version the component exports.
    pub wit_version: String,
    pub tasks: Vec<TaskInfo>,
    pub manifest: Manifest,
    /// Its tasks that run on the I/O thread (`inline.rs`); shared by clones of this load.
    pub short_tasks: Arc<ShortTasks>,
    pub(crate) pre: PluginPre<super::state::TaskState>,
}

impl std::fmt::Debug for PluginVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginVersion")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("digest", &self.digest)
            .field("tasks", &self.tasks.iter().map(|t| &t.name).collect::<Vec<_>>())
            .finish()
    }
}

/// Source of [`PluginVersion::load_id`].
static NEXT_LOAD_ID: AtomicU64 = AtomicU64::new(1);

/// The plugin name for a file: its stem.
pub fn plugin_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Load and validate a plugin file. Errors say what is wrong in words a plugin author
/// can act on.
pub fn load(runtime: &Runtime, path: &Path) -> Result<PluginVersion, RuntimeError> {
    let invalid = |reason: String| RuntimeError::InvalidPlugin {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let component = runtime
        .cache
        .load(&runtime.engine, &bytes)
        .map_err(|e| invalid(format!("not a valid WebAssembly component: {e:#}")))?;
    let wit_version = check_wit_version(&runtime.engine, &component).map_err(invalid)?;
    let manifest = Manifest::for_component(path)?;
    let pre = runtime
        .linker
        .instantiate_pre(&component)
        .map_err(|e| invalid(explain_link_error(&format!("{e:#}"))))?;
    let pre = PluginPre::new(pre).map_err(|e| invalid(format!("does not match the plugin world: {e:#}")))?;
    let mut version = PluginVersion {
        name: plugin_name(path),
        path: path.to_owned(),
        digest,
        load_id: NEXT_LOAD_ID.fetch_add(1, Ordering::Relaxed),
        wit_version,
        tasks: Vec::new(),
        manifest,
        short_tasks: Arc::default(),
        pre,
    };
    version.tasks = list_tasks(runtime, &version).map_err(invalid)?;
    if version.tasks.is_empty() {
        return Err(invalid("it exports no tasks".into()));
    }
    version.short_tasks = Arc::new(ShortTasks::for_tasks(version.tasks.iter().map(|t| t.name.as_str())));
    Ok(version)
}

/// Find `celeriac:task/handler@V` among the exports and check V against ours (semver:
/// same major, and for 0.x the same minor).
fn check_wit_version(engine: &Engine, component: &Component) -> Result<String, String> {
    let ty = component.component_type();
    let exported: Vec<String> = ty
        .exports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name.to_owned())
        .collect();
    let Some(found) = exported.iter().find(|n| n.starts_with(HANDLER_INTERFACE)) else {
        return Err(format!(
            "it does not export {HANDLER_INTERFACE}@{WIT_VERSION} (its exports: {}); build it against wit/celeriac.wit",
            if exported.is_empty() {
                "none".to_owned()
            } else {
                exported.join(", ")
            }
        ));
    };
    let version = found.split_once('@').map(|(_, v)| v).unwrap_or("");
    if !semver_compatible(version, WIT_VERSION) {
        return Err(format!(
            "it was built against {WIT_PACKAGE}@{version}, but this host speaks {WIT_PACKAGE}@{WIT_VERSION}; rebuild it with a matching SDK"
        ));
    }
    Ok(version.to_owned())
}

fn semver_compatible(theirs: &str, ours: &str) -> bool {
    let parts = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parts(theirs), parts(ours)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

/// Turn wasmtime's import-resolution errors into a sentence naming the interface.
fn explain_link_error(message: &str) -> String {
    if let Some(rest) = message.split("component imports instance `").nth(1) {
        let interface = rest.split('`').next().unwrap_or(rest);
        return format!(
            "it imports `{interface}`, which Celeriac does not provide (it provides WASI 0.2 and {WIT_PACKAGE}/host@{WIT_VERSION}): {message}"
        );
    }
    format!("its imports cannot be satisfied: {message}")
}

fn list_tasks(runtime: &Runtime, version: &PluginVersion) -> Result<Vec<TaskInfo>, String> {
    let deadline = Deadline::new(Some(Duration::from_secs(10)), None, Arc::new(AtomicBool::new(false)));
    let (mut store, _stdout, _stderr) = runtime
        .new_store(version, "", "tasks", deadline, None)
        .map_err(|e| e.to_string())?;
    let plugin = version
        .pre
        .instantiate(&mut store)
        .map_err(|e| format!("cannot be instantiated: {e:#}"))?;
    plugin
        .celeriac_task_handler()
        .call_tasks(&mut store)
        .map_err(|e| format!("tasks() failed: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_versions_match_semver_wise() {
        assert!(semver_compatible("0.1.0", "0.1.0"));
        assert!(semver_compatible("0.1.3", "0.1.0"));
        assert!(!semver_compatible("0.2.0", "0.1.0"));
        assert!(!semver_compatible("", "0.1.0"));
    }
}
