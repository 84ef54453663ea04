//! A fresh instance made ahead of time. After a task, its executor thread instantiates
//! the same plugin version again, before the next task of it arrives, so that task finds
//! its instance ready and pays only for the call. The instance is as fresh as one made
//! on demand (no task has run in it), so isolation between tasks is unchanged; what moves
//! is the instantiation, off the time between a message's arrival and its result. Each
//! thread holds at most one, and drops it when its next task is of another plugin, so it
//! never holds a pooled slot that task needs.

use std::cell::RefCell;
use std::sync::Arc;

use super::plugin::PluginVersion;
use super::reuse::Kept;

thread_local! {
    /// This executor thread's ready instance and the plugin version it was made for.
    static READY: RefCell<Option<(Arc<PluginVersion>, Kept)>> = const { RefCell::new(None) };
}

/// The ready instance of this very plugin version, if this thread has one; one made for
/// another is dropped. Versions are told apart as loaded, not by their Wasm's digest: a
/// changed manifest (grants, limits) makes a new version of the same bytes.
pub fn take(plugin: &PluginVersion) -> Option<Kept> {
    READY.with(|ready| {
        let (made_for, kept) = ready.borrow_mut().take()?;
        std::ptr::eq(made_for.as_ref(), plugin).then_some(kept)
    })
}

/// Whether this thread already holds a ready instance of this plugin version.
pub fn holds(plugin: &PluginVersion) -> bool {
    READY.with(|ready| {
        ready
            .borrow()
            .as_ref()
            .is_some_and(|(made_for, _)| std::ptr::eq(made_for.as_ref(), plugin))
    })
}

/// Hold `kept` for this thread's next task of the same plugin version.
pub fn put(plugin: Arc<PluginVersion>, kept: Kept) {
    READY.with(|ready| *ready.borrow_mut() = Some((plugin, kept)));
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use serde_json::{json, Map};

    use super::*;
    use crate::protocol::TaskRequest;
    use crate::runtime::execute::{Invocation, Outcome};
    use crate::runtime::Runtime;

    /// `math.wasm` as `make plugins` builds it.
    fn math_wasm() -> PathBuf {
        let dir = std::env::var_os("CELERIAC_PLUGIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
                    .join("plugins")
            });
        dir.join("math.wasm")
    }

    /// `math.wasm` loaded from `dir`, with `manifest` as its `math.toml` if given.
    fn load(runtime: &Runtime, dir: &Path, manifest: Option<&str>) -> Arc<PluginVersion> {
        std::fs::create_dir_all(dir).expect("test folder");
        let path = dir.join("math.wasm");
        std::fs::copy(math_wasm(), &path)
            .unwrap_or_else(|e| panic!("cannot copy {} (run `make plugins`): {e}", math_wasm().display()));
        if let Some(manifest) = manifest {
            std::fs::write(dir.join("math.toml"), manifest).expect("manifest");
        }
        Arc::new(runtime.check_file(&path).expect("math.wasm loads"))
    }

    fn run(runtime: &Runtime, plugin: &PluginVersion, task: &str, args: Vec<serde_json::Value>) -> Outcome {
        let request = TaskRequest::new(task, args, Map::new());
        runtime.execute(plugin, Invocation::for_task(&request, "celeriac@test", "celery"))
    }

    #[test]
    fn a_ready_instance_is_fresh_and_only_for_the_version_it_was_made_for() {
        let runtime = Runtime::new(1, None).expect("wasmtime engine");
        let folder = std::env::temp_dir().join(format!("celeriac-standby-{}", std::process::id()));
        // The same bytes twice, the second capped at 8 MB: as after a manifest change.
        let open = load(&runtime, &folder.join("open"), None);
        let capped = load(&runtime, &folder.join("capped"), Some("[limits]\nmemory_mb = 8\n"));
        assert_eq!(open.digest, capped.digest);

        runtime.prepare_standby(&open);
        assert!(holds(&open) && !holds(&capped));
        // A task of the capped version must not run in the uncapped instance.
        let outcome = run(&runtime, &capped, "math.alloc", vec![json!(32)]);
        assert!(
            matches!(&outcome, Outcome::Failure { exc, .. } if exc.exc_type == "MemoryError"),
            "the cap of the task's own version did not hold: {outcome:?}"
        );
        assert!(!holds(&open), "a ready instance of another version was kept");

        // A task of its own version takes it, and it is unused: the count starts at 1.
        for _ in 0..3 {
            runtime.prepare_standby(&open);
            assert!(holds(&open));
            assert_eq!(
                run(&runtime, &open, "math.counter", vec![]),
                Outcome::Success("1".into())
            );
            assert!(!holds(&open), "the ready instance was not taken");
        }
        let _ = std::fs::remove_dir_all(&folder);
    }
}
