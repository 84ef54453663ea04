//! The `unacked` record of a message taken by BRPOP, written while its task already runs.
//!
//! A message BRPOP hands over is out of its list and in no hash until its record is
//! written; waiting for that write before the task starts puts one more Redis round trip
//! (and a wake-up of the runtime) on every idle worker's latency. Starting the task at
//! once widens no window: a worker dying before the record lands loses the message
//! either way, as kombu's does between its BRPOP and its HSET. An idle worker even puts
//! the write off until its task is done, 1 ms at most (`worker/lone_task.rs`). What must
//! not happen is an ack or a restore reaching Redis before the record, so both wait here
//! for it first.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::task::JoinHandle;

use super::virtual_transport::StoreTag;
use super::BrokerError;

#[derive(Default)]
pub struct Recording {
    writes: Mutex<HashMap<StoreTag, JoinHandle<Result<(), BrokerError>>>>,
}

impl Recording {
    /// Write the record of `tag` in the background.
    pub fn start<F>(&self, tag: StoreTag, write: F)
    where
        F: std::future::Future<Output = Result<(), BrokerError>> + Send + 'static,
    {
        let handle = tokio::spawn(write);
        self.lock().insert(tag, handle);
    }

    /// Wait until the records of `tags` that are still being written are in Redis (or
    /// failed: the message is then in no list and no hash, which is logged).
    pub async fn settled(&self, tags: &[StoreTag]) {
        let writes: Vec<(StoreTag, JoinHandle<_>)> = {
            let mut map = self.lock();
            tags.iter()
                .filter_map(|t| map.remove(t).map(|h| (t.clone(), h)))
                .collect()
        };
        for (tag, write) in writes {
            let outcome = write
                .await
                .unwrap_or_else(|err| Err(BrokerError::Operation(err.to_string())));
            if let Err(err) = outcome {
                tracing::error!(tag = %tag, error = %err,
                    "cannot record a taken message as unacked; it is lost if this worker dies before acking it");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StoreTag, JoinHandle<Result<(), BrokerError>>>> {
        // The map holds no invariant a panicking holder could break.
        self.writes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
