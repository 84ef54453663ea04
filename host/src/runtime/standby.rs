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
