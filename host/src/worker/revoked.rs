//! The ids of revoked tasks, as Celery's worker keeps them: at most [`MAX_REVOKED`] ids,
//! each forgotten [`REVOKED_EXPIRES`] after it was revoked (Celery's `LimitedSet`
//! defaults, `CELERY_WORKER_REVOKES_MAX` / `CELERY_WORKER_REVOKE_EXPIRES`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_REVOKED: usize = 50_000;
pub const REVOKED_EXPIRES: Duration = Duration::from_secs(10_800);

#[derive(Default)]
pub struct Revoked {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// When each id was revoked (the latest time, if revoked twice).
    ids: HashMap<String, Instant>,
    /// Ids in the order they were revoked, oldest first; may hold stale duplicates.
    order: VecDeque<(String, Instant)>,
}

impl Inner {
    /// Drop what has expired and, past the cap, the oldest.
    fn purge(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front() {
            let stale = self.ids.get(id) != Some(at);
            let expired = now.duration_since(*at) >= REVOKED_EXPIRES;
            if !(stale || expired || self.ids.len() > MAX_REVOKED) {
                break;
            }
            if !stale {
                self.ids.remove(id);
            }
            self.order.pop_front();
        }
    }
}

impl Revoked {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, id: &str) {
        let now = Instant::now();
        let mut inner = self.inner();
        inner.ids.insert(id.to_owned(), now);
        inner.order.push_back((id.to_owned(), now));
        inner.purge(now);
    }

    pub fn contains(&self, id: &str) -> bool {
        let mut inner = self.inner();
        inner.purge(Instant::now());
        inner.ids.contains_key(id)
    }

    /// Every id still held, oldest first.
    pub fn list(&self) -> Vec<String> {
        let mut inner = self.inner();
        inner.purge(Instant::now());
        let inner = &*inner;
        inner
            .order
            .iter()
            .filter(|(id, at)| inner.ids.get(id) == Some(at))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_ids_once_and_in_order() {
        let revoked = Revoked::default();
        revoked.add("a");
        revoked.add("b");
        revoked.add("a");
        assert!(revoked.contains("a") && revoked.contains("b") && !revoked.contains("c"));
        assert_eq!(revoked.list(), ["b", "a"]);
    }

    #[test]
    fn forgets_the_oldest_past_the_cap() {
        let revoked = Revoked::default();
        for i in 0..=MAX_REVOKED {
            revoked.add(&i.to_string());
        }
        assert!(!revoked.contains("0"));
        assert!(revoked.contains("1") && revoked.contains(&MAX_REVOKED.to_string()));
    }
}
