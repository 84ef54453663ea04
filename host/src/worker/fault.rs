//! Crashes on purpose, for the reliability tests: the environment variable
//! `CELERIAC_FAULT=POINT:TASK` aborts the worker (as kill -9 would) when a `TASK` message
//! reaches `POINT`, the windows a redelivered copy must survive without running twice:
//!
//! - `before-store`: its follow-ups are published, its result is not stored yet;
//! - `before-ack`: its result is stored, its message not acked yet.
//!
//! Read once; unset, each check is one comparison.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Point {
    BeforeStore,
    BeforeAck,
}

fn configured() -> Option<&'static (Point, String)> {
    static FAULT: OnceLock<Option<(Point, String)>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let spec = std::env::var("CELERIAC_FAULT").ok()?;
            let (point, task) = spec.split_once(':')?;
            let point = match point {
                "before-store" => Point::BeforeStore,
                "before-ack" => Point::BeforeAck,
                _ => return None,
            };
            Some((point, task.to_owned()))
        })
        .as_ref()
}

/// Abort here if the fault names this point and task.
pub(super) fn check(point: Point, task: &str) {
    if let Some((at, name)) = configured() {
        if *at == point && name == task {
            tracing::error!(task, ?point, "CELERIAC_FAULT: aborting the worker on purpose");
            std::process::abort();
        }
    }
}
