//! Memory a burst of tasks used goes back to the operating system once the worker is idle.
//!
//! An allocator keeps freed memory for reuse, so a worker's RSS after draining a queue
//! stays near its peak. The worker allocates with mimalloc (`main.rs`), whose
//! `mi_collect(true)` hands back what it holds free: after RabbitMQ drains of 20,000
//! `math.add`, the idle worker sat at 29.3 MiB with it and 32.9 without (medians of 3,
//! 2026-12-05). With glibc's allocator, `malloc_trim` did the same (33.7–34.4 → 30.0–31.1
//! MiB, 2026-12-05). Most of the rest is the executable's own pages.
//!
//! The check runs four times a second, so memory goes back between a quarter and half a
//! second after the last task: a worker that is read idle a second after its last task
//! (as `make bench` does) is seen trimmed. A worker busy at least once every quarter
//! second never trims.

use std::sync::Arc;
use std::time::Duration;

use super::Shared;

/// How often the worker looks whether it has gone idle.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Trim the allocator each time a whole check passes with no task finishing after some did.
pub async fn return_when_idle(shared: Arc<Shared>) {
    let mut seen = shared.gate.finished_count();
    let mut trimmed_at = seen;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let finished = shared.gate.finished_count();
        if finished == seen && finished != trimmed_at {
            let began = std::time::Instant::now();
            trim();
            tracing::debug!(
                took_us = began.elapsed().as_micros() as u64,
                "idle: returned freed memory to the system"
            );
            trimmed_at = finished;
        }
        seen = finished;
    }
}

fn trim() {
    // SAFETY: mi_collect only walks mimalloc's own heaps, under their own locks; a
    // program built on another global allocator (the tests) has nothing there to free.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}
