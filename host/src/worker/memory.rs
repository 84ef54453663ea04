//! Memory a burst of tasks used goes back to the operating system once the worker is idle.
//!
//! glibc's allocator keeps freed memory for reuse, and a burst leaves it fragmented, so a
//! worker's RSS after draining a queue stays near its peak. After a RabbitMQ drain of
//! 20,000 `math.add` with a window of 256 messages, the worker sat idle at 33.7–34.4 MiB;
//! `malloc_trim`, called from gdb or by this module, took it to 30.0–31.1 MiB
//! (2026-12-05). Most of the rest is the executable's own pages (17–22 MiB, varying
//! from build to build with the code's layout).
//!
//! The check runs four times a second, so memory goes back between a quarter and half a
//! second after the last task: a worker that is read idle a second after its last task
//! (as `make bench` does) is seen trimmed. A trim took 29–76 µs after a burst, and a
//! worker busy at least once every quarter second never trims.

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

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own arenas, under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
