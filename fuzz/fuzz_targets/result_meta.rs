//! A stored result meta, as the worker reads it back (chord_unlock polling, a
//! redelivered task's check, `celeriac result`).
#![no_main]

use celeriac_protocol::TaskResult;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(meta) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Some(result) = TaskResult::from_meta(&meta) {
        let stored = result.to_meta();
        let again = TaskResult::from_meta(&stored).expect("the worker's own meta reads back");
        assert_eq!(again.to_meta(), stored);
    }
});
