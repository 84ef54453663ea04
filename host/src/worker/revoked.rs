//! The ids of revoked tasks, as Celery's worker keeps them: at most [`MAX_REVOKED`] ids,
//! each forgotten [`REVOKED_EXPIRES`] after it was revoked (Celery's `LimitedSet`
//! defaults, `CELERY_WORKER_REVOKES_MAX` / `CELERY_WORKER_REVOKE_EXPIRES`).
//!
//! With a state file (`--statedb`, as Celery's) they survive a restart: the file is
//! rewritten after each revoke (rare, and at most a few MB) through a temporary file, so a
//! crash leaves the old or the new list, never half of one.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const MAX_REVOKED: usize = 50_000;
pub const REVOKED_EXPIRES: Duration = Duration::from_secs(10_800);

#[derive(Default)]
pub struct Revoked {
    inner: Mutex<Inner>,
    state_file: Option<PathBuf>,
}

#[derive(Default)]
struct Inner {
    /// When each id was revoked (the latest time, if revoked twice).
    ids: HashMap<String, SystemTime>,
    /// Ids in the order they were revoked, oldest first; may hold stale duplicates.
    order: VecDeque<(String, SystemTime)>,
}

impl Inner {
    fn insert(&mut self, id: &str, at: SystemTime) {
        self.ids.insert(id.to_owned(), at);
        self.order.push_back((id.to_owned(), at));
    }

    /// Drop what has expired and, past the cap, the oldest.
    fn purge(&mut self, now: SystemTime) {
        while let Some((id, at)) = self.order.front() {
            let stale = self.ids.get(id) != Some(at);
            let expired = now.duration_since(*at).unwrap_or_default() >= REVOKED_EXPIRES;
            if !(stale || expired || self.ids.len() > MAX_REVOKED) {
                break;
            }
            if !stale {
                self.ids.remove(id);
            }
            self.order.pop_front();
        }
    }

    /// Live entries, oldest first.
    fn live(&self) -> impl Iterator<Item = &(String, SystemTime)> {
        self.order.iter().filter(|(id, at)| self.ids.get(id) == Some(at))
    }
}

impl Revoked {
    /// Keep revoked ids in `path` too, starting from what it holds (a missing file is an
    /// empty list; an unreadable one is reported and replaced).
    pub fn with_state_file(path: &Path) -> Revoked {
        let mut inner = Inner::default();
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<(String, f64)>>(&bytes) {
                Ok(entries) => {
                    for (id, at) in entries {
                        let at = UNIX_EPOCH + Duration::try_from_secs_f64(at).unwrap_or_default();
                        inner.insert(&id, at);
                    }
                    inner.purge(SystemTime::now());
                    tracing::info!(state = %path.display(), revoked = inner.ids.len(), "loaded revoked task ids");
                }
                Err(err) => tracing::warn!(state = %path.display(), error = %err,
                    "state file unreadable; starting with no revoked ids"),
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(state = %path.display(), error = %err, "cannot read the state file"),
        }
        Revoked {
            inner: Mutex::new(inner),
            state_file: Some(path.to_owned()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_all(&self, ids: &[String]) {
        let now = SystemTime::now();
        let snapshot = {
            let mut inner = self.inner();
            for id in ids {
                inner.insert(id, now);
            }
            inner.purge(now);
            self.state_file.as_ref().map(|_| {
                inner
                    .live()
                    .map(|(id, at)| {
                        (
                            id.clone(),
                            at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        };
        if let (Some(path), Some(entries)) = (&self.state_file, snapshot) {
            if let Err(err) = save(path, &entries) {
                tracing::error!(state = %path.display(), error = %err, "cannot save revoked task ids");
            }
        }
    }

    pub fn add(&self, id: &str) {
        self.add_all(&[id.to_owned()]);
    }

    pub fn contains(&self, id: &str) -> bool {
        let mut inner = self.inner();
        if inner.ids.is_empty() {
            return false; // the usual case, asked twice a task: no clock read
        }
        inner.purge(SystemTime::now());
        inner.ids.contains_key(id)
    }

    /// Every id still held, oldest first.
    pub fn list(&self) -> Vec<String> {
        let mut inner = self.inner();
        inner.purge(SystemTime::now());
        inner.live().map(|(id, _)| id.clone()).collect()
    }
}

fn save(path: &Path, entries: &[(String, f64)]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, serde_json::to_vec(entries)?)?;
    std::fs::rename(&temporary, path)
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
        let ids: Vec<String> = (0..=MAX_REVOKED).map(|i| i.to_string()).collect();
        revoked.add_all(&ids);
        assert!(!revoked.contains("0"));
        assert!(revoked.contains("1") && revoked.contains(&MAX_REVOKED.to_string()));
    }

    #[test]
    fn a_state_file_carries_ids_across_restarts() {
        let dir = std::env::temp_dir().join(format!("celeriac-revoked-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("worker.state");
        Revoked::with_state_file(&path).add_all(&["x".into(), "y".into()]);
        let again = Revoked::with_state_file(&path);
        assert_eq!(again.list(), ["x", "y"]);
        std::fs::write(&path, b"garbage").unwrap();
        assert!(
            Revoked::with_state_file(&path).list().is_empty(),
            "a bad file is not fatal"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
