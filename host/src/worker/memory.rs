//! Memory a burst of tasks used goes back to the operating system once the worker is idle.
//!
//! glibc's allocator keeps freed memory for reuse, and a burst leaves it fragmented, so a
//! worker's RSS after draining a queue stays near its peak. After a RabbitMQ drain of
//! 20,000 `math.add` with a window of 256 messages, the worker sat idle at 33.7–34.4 MiB;
//! `malloc_trim`, called from gdb or by this module, took it to 30.0–31.1 MiB
//! (2026-12-05). Most of the rest is the executable's own pages (17–22 MiB, varying
//! from build to build with the code's layout).

use std::sync::Arc;
use std::time::Duration;

use super::Shared;

/// How often the worker looks whether it has gone idle.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Trim the allocator each time a whole check passes with no task finishing after some did.
pub async fn return_when_idle(shared: Arc<Shared>) {
    let mut seen = shared.gate.finished_count();
    let mut trimmed_at = seen;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let finished = shared.gate.finished_count();
        if finished == seen && finished != trimmed_at {
            tracing::debug!("idle: returning freed memory to the system");
            trim();
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
