//! Helpers for the runtime's own tests: the first-party `math` plugin, loaded as a
//! worker would load it, and a task run on the calling thread.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::execute::{Invocation, Outcome};
use super::plugin::PluginVersion;
use super::Runtime;
use crate::protocol::TaskRequest;

/// `math.wasm` as `make plugins` builds it.
fn math_wasm() -> PathBuf {
    std::env::var_os("CELERIAC_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
                .join("plugins")
        })
        .join("math.wasm")
}

/// A folder of the test's own under the system's temporary one, removed when dropped.
pub struct TestFolder(PathBuf);

impl TestFolder {
    pub fn new(name: &str) -> TestFolder {
        TestFolder(std::env::temp_dir().join(format!("celeriac-{name}-{}", std::process::id())))
    }

    pub fn join(&self, part: &str) -> PathBuf {
        self.0.join(part)
    }
}

impl Drop for TestFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `math.wasm` loaded from `dir`, with `manifest` as its `math.toml` if given.
pub fn load_math(runtime: &Runtime, dir: &Path, manifest: Option<&str>) -> PluginVersion {
    std::fs::create_dir_all(dir).expect("test folder");
    let path = dir.join("math.wasm");
    std::fs::copy(math_wasm(), &path)
        .unwrap_or_else(|e| panic!("cannot copy {} (run `make plugins`): {e}", math_wasm().display()));
    if let Some(manifest) = manifest {
        std::fs::write(dir.join("math.toml"), manifest).expect("manifest");
    }
    runtime.check_file(&path).expect("math.wasm loads")
}

/// Run `task` of `plugin` on this thread.
pub fn run(runtime: &Runtime, plugin: &PluginVersion, task: &str, args: Vec<Value>) -> Outcome {
    let request = TaskRequest::new(task, args, Map::new());
    runtime.execute(plugin, Invocation::for_task(&request, "celeriac@test", "celery"))
}
