//! Instances kept between tasks, for plugins whose manifest asks for it
//! (`reuse_instance = true`). A fresh instance per task is the default and the safe
//! choice: nothing a task leaves in memory reaches the next one. Heavy guests pay for it,
//! though (a Python or JavaScript instance carries an interpreter), so a plugin may opt
//! to have each executor thread keep its instance and call it again. An instance that
//! trapped, hit a limit or was stopped is never kept.

use std::cell::RefCell;
use std::collections::HashMap;

use wasmtime::Store;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::bindings::Plugin;
use super::state::TaskState;

/// Most kept instances per executor thread (old plugin versions age out).
const MAX_KEPT: usize = 16;

pub struct Kept {
    pub store: Store<TaskState>,
    pub instance: Plugin,
    pub stdout: MemoryOutputPipe,
    pub stderr: MemoryOutputPipe,
}

thread_local! {
    /// This executor thread's kept instances, by the load of the plugin they serve
    /// ([`super::plugin::PluginVersion::load_id`]).
    static KEPT: RefCell<HashMap<u64, Kept>> = RefCell::new(HashMap::new());
}

/// The kept instance of a plugin version, if this thread has one.
pub fn take(load_id: u64) -> Option<Kept> {
    KEPT.with(|kept| kept.borrow_mut().remove(&load_id))
}

/// Keep an instance for this thread's next task of the same plugin version.
pub fn keep(load_id: u64, instance: Kept) {
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        kept.insert(load_id, instance);
    });
}

#[cfg(test)]
mod tests {
    use crate::runtime::execute::Outcome;
    use crate::runtime::testing::{load_math, run, TestFolder};
    use crate::runtime::Runtime;

    #[test]
    fn a_kept_instance_serves_only_the_version_it_was_kept_for() {
        let runtime = Runtime::new(1, None).expect("wasmtime engine");
        let folder = TestFolder::new("reuse");
        let reuse = "reuse_instance = true\n";
        let first = load_math(&runtime, &folder.join("first"), Some(reuse));
        let count = |plugin| run(&runtime, plugin, "math.counter", vec![]);
        assert_eq!(count(&first), Outcome::Success("1".into()));
        assert_eq!(count(&first), Outcome::Success("2".into()), "the instance was not kept");
        // The same bytes with a changed manifest: a new version, which starts afresh
        // rather than inherit the old one's instance (and its grants and limits).
        let second = load_math(
            &runtime,
            &folder.join("second"),
            Some("reuse_instance = true\n[limits]\nmemory_mb = 8\n"),
        );
        assert_eq!(first.digest, second.digest);
        assert_eq!(
            count(&second),
            Outcome::Success("1".into()),
            "another version's instance was reused"
        );
        assert_eq!(count(&second), Outcome::Success("2".into()));
    }
}
