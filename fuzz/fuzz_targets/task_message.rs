//! Celery's task message itself, whatever the broker: headers (a JSON object) and body
//! (JSON, protocol v2 or v1), split at the first zero byte of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let (headers, body) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"{}"[..], data),
    };
    let Ok(headers) = serde_json::from_slice::<Map<String, Value>>(headers) else {
        return;
    };
    celeriac_fuzz::check_task_message(&celeriac_fuzz::json_message(headers, body));
});
