//! Celery's task message itself, whatever the broker: headers (a JSON object) and body
//! (JSON, protocol v2 or v1), split at the first zero byte of the input.
#![no_main]

use celeriac_protocol::Headers;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (headers, body) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"{}"[..], data),
    };
    let Ok(headers) = serde_json::from_slice::<Headers>(headers) else {
        return;
    };
    celeriac_fuzz::check_task_message(&celeriac_fuzz::json_message(headers, body));
});
