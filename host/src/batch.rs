//! Coalescing many small writes into one round trip.
//!
//! Callers submit one item and wait for its outcome as if they had written it alone.
//! A single flusher takes whatever has queued up meanwhile (up to a limit) and writes it
//! in one call. When items arrive one at a time nothing waits: the flusher writes each at
//! once. Under load a batch forms while the previous write is in flight, so acks and
//! result writes cost one round trip per batch instead of one per task.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

type Reply<E> = oneshot::Sender<Result<(), Arc<E>>>;

pub struct Batcher<T, E> {
    queue: mpsc::UnboundedSender<(T, Reply<E>)>,
}

impl<T: Send + 'static, E: Send + Sync + 'static> Batcher<T, E> {
    /// Start the flusher: `flush` writes a batch of at most `limit` items.
    pub fn start<F, Fut>(limit: usize, flush: F) -> Batcher<T, E>
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send,
    {
        let (queue, mut pending) = mpsc::unbounded_channel::<(T, Reply<E>)>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(limit);
            // Ends when every Batcher handle is gone.
            while pending.recv_many(&mut batch, limit).await > 0 {
                // Let the tasks that are ready to run now add theirs first: two tasks that
                // finish together share a write, at the cost of one pass of the scheduler.
                tokio::task::yield_now().await;
                while batch.len() < limit {
                    match pending.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<T>, Vec<Reply<E>>) = batch.drain(..).unzip();
                let outcome = flush(items).await.map_err(Arc::new);
                for reply in replies {
                    // A caller that stopped waiting needs no answer.
                    let _ = reply.send(outcome.clone());
                }
            }
        });
        Batcher { queue }
    }

    /// Submit one item and wait until the batch holding it is written.
    pub async fn submit(&self, item: T) -> Result<(), Arc<E>>
    where
        E: From<Closed>,
    {
        let (reply, outcome) = oneshot::channel();
        self.queue.send((item, reply)).map_err(|_| Arc::new(E::from(Closed)))?;
        outcome.await.map_err(|_| Arc::new(E::from(Closed)))?
    }
}

/// The flusher is gone (the process is shutting down).
#[derive(Debug)]
pub struct Closed;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, PartialEq)]
    enum Error {
        Closed,
        Refused,
    }

    impl From<Closed> for Error {
        fn from(_: Closed) -> Self {
            Error::Closed
        }
    }

    #[tokio::test]
    async fn concurrent_items_share_a_flush_and_an_error_reaches_its_batch_only() {
        // (batch size, whether it held the poisoned item 13), per flush.
        let flushes = Arc::new(Mutex::new(Vec::new()));
        let seen = flushes.clone();
        let batcher = Arc::new(Batcher::start(100, move |items: Vec<u32>| {
            let seen = seen.clone();
            async move {
                let poisoned = items.contains(&13);
                seen.lock().unwrap().push((items.len(), poisoned));
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                if poisoned {
                    Err(Error::Refused)
                } else {
                    Ok(())
                }
            }
        }));
        // Alone, an item is written at once, in a batch of its own.
        assert!(batcher.submit(0).await.is_ok());
        let calls: Vec<_> = (1..50)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(i).await })
            })
            .collect();
        let mut failed = 0;
        for call in calls {
            if let Err(e) = call.await.unwrap() {
                assert_eq!(*e, Error::Refused);
                failed += 1;
            }
        }
        let flushes = flushes.lock().unwrap().clone();
        assert_eq!(flushes[0], (1, false));
        assert_eq!(flushes.iter().map(|f| f.0).sum::<usize>(), 50);
        assert!(flushes.len() < 50, "items were not batched: {flushes:?}");
        let poisoned: usize = flushes.iter().filter(|f| f.1).map(|f| f.0).sum();
        assert_eq!(failed, poisoned, "exactly the items flushed with 13 fail");
    }
}
