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
    /// This executor thread's kept instances, by plugin digest.
    static KEPT: RefCell<HashMap<String, Kept>> = RefCell::new(HashMap::new());
}

/// The kept instance of a plugin version, if this thread has one.
pub fn take(digest: &str) -> Option<Kept> {
    KEPT.with(|kept| kept.borrow_mut().remove(digest))
}

/// Keep an instance for this thread's next task of the same plugin version.
pub fn keep(digest: &str, instance: Kept) {
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        kept.insert(digest.to_owned(), instance);
    });
}
