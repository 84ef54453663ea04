//! A fresh instance made ahead of time. After a task, its executor thread instantiates
//! the same plugin version again, before the next task of it arrives, so that task finds
//! its instance ready and pays only for the call. The instance is as fresh as one made
//! on demand (no task has run in it), so isolation between tasks is unchanged; what moves
//! is the instantiation, off the time between a message's arrival and its result. Each
//! thread holds at most one, and drops it when its next task is of another plugin, so it
//! never holds a pooled slot that task needs.

use std::cell::RefCell;

use super::plugin::PluginVersion;
use super::reuse::Kept;

thread_local! {
    /// This executor thread's ready instance and the load it was made for
    /// ([`PluginVersion::load_id`]).
    static READY: RefCell<Option<(u64, Kept)>> = const { RefCell::new(None) };
}

/// The ready instance of this very plugin version, if this thread has one; one made for
/// another is dropped.
pub fn take(plugin: &PluginVersion) -> Option<Kept> {
    READY.with(|ready| {
        let (made_for, kept) = ready.borrow_mut().take()?;
        (made_for == plugin.load_id).then_some(kept)
    })
}

/// Whether this thread already holds a ready instance of this plugin version.
pub fn holds(plugin: &PluginVersion) -> bool {
    READY.with(|ready| {
        ready
            .borrow()
            .as_ref()
            .is_some_and(|(made_for, _)| *made_for == plugin.load_id)
    })
}

/// Hold `kept` for this thread's next task of the same plugin version.
pub fn put(load_id: u64, kept: Kept) {
    READY.with(|ready| *ready.borrow_mut() = Some((load_id, kept)));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::runtime::execute::Outcome;
    use crate::runtime::testing::{load_math, run, TestFolder};
    use crate::runtime::Runtime;

    #[test]
    fn a_ready_instance_is_fresh_and_only_for_the_version_it_was_made_for() {
        let runtime = Runtime::new(1, None).expect("wasmtime engine");
        let folder = TestFolder::new("standby");
        // The same bytes twice, the second capped at 8 MB: as after a manifest change.
        let open = load_math(&runtime, &folder.join("open"), None);
        let capped = load_math(&runtime, &folder.join("capped"), Some("[limits]\nmemory_mb = 8\n"));
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
    }
}
