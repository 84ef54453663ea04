//! When the worker may take another message from the broker: fair dispatch that still
//! keeps the slots busy.
//!
//! Taking messages only when a slot is free (Celery's `-O fair`) costs a broker round
//! trip between tasks: measured here, a Redis drain of short tasks ran at ~5,200 tasks/s
//! that way against ~8,400 with look-ahead. Look-ahead, though, lets a message wait
//! behind a long task while another worker idles. So look-ahead is allowed only while
//! every running task is young (under [`LOOKAHEAD_WAIT`]); and a message that has waited
//! that long for a slot is handed back to the broker for any worker to take.
//!
//! A slot is a place in the executors' queue: one per executor thread, plus one standby
//! each, so that a thread finishing a task finds the next one already queued instead of
//! idling while the async runtime hands it over (measured on a RabbitMQ drain with
//! results on Redis, `-c 2`, prefetch multiplier 64: 10.4k tasks/s without standbys,
//! the executors mostly idle; 12.4k with them). Standbys are look-ahead too: taken only
//! while every running task is young, and one that cannot start within
//! [`LOOKAHEAD_WAIT`] is handed back.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// How long a reserved message may wait for a slot, and how old a running task may be
/// while the worker still reserves messages ahead of free slots.
pub const LOOKAHEAD_WAIT: Duration = Duration::from_secs(1);

/// What a message holds while it is in the worker: its reservation (bounding how many
/// the worker holds) and, once it has one, its slot (bounding how many run).
pub struct Admission {
    pub reservation: OwnedSemaphorePermit,
    pub slot: Option<OwnedSemaphorePermit>,
}

/// What a message admitted without a slot holds towards one.
pub enum Slot {
    /// A free slot, taken when the message was admitted.
    Free(OwnedSemaphorePermit),
    /// A place in the queue for slots ([`Gate::queue_for_slot`]).
    Queued(Place),
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A place in the queue for slots. The slot semaphore serves its waiters in the order
/// they first asked; a place keeps that order however late its handler first asks.
pub struct Place(PlaceState);

enum PlaceState {
    Waiting(Acquire),
    /// A slot was free when the place was taken.
    Served(OwnedSemaphorePermit),
    /// The semaphore is closed (it never is while the worker runs).
    Closed,
}

impl Place {
    /// `None` if the semaphore is closed.
    async fn slot(self) -> Option<OwnedSemaphorePermit> {
        match self.0 {
            PlaceState::Waiting(acquire) => acquire.await.ok(),
            PlaceState::Served(slot) => Some(slot),
            PlaceState::Closed => None,
        }
    }
}

/// How often a worker whose executors are all held by old tasks looks for an idle one.
const IDLE_POLL: Duration = Duration::from_millis(10);

pub struct Gate {
    reserved: Arc<Semaphore>,
    /// One per executor plus one standby each.
    slots: Arc<Semaphore>,
    concurrency: AtomicUsize,
    /// Reservations in all (`reserved` hands out at most this many).
    capacity: Arc<AtomicUsize>,
    /// Start time of each running task, by delivery tag.
    running: Mutex<HashMap<u64, Instant>>,
    /// Tasks finished so far.
    finished: AtomicU64,
}

impl Gate {
    pub fn new(concurrency: usize, prefetch: usize) -> Gate {
        Gate {
            reserved: Arc::new(Semaphore::new(prefetch)),
            slots: Arc::new(Semaphore::new(concurrency * 2)),
            concurrency: AtomicUsize::new(concurrency),
            capacity: Arc::new(AtomicUsize::new(prefetch)),
            running: Mutex::new(HashMap::new()),
            finished: AtomicU64::new(0),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many running tasks are old: they hold their executors, and no message should
    /// wait for them.
    pub fn old_tasks(&self) -> usize {
        // One clock read, not one per running task: this runs at every admission.
        let now = Instant::now();
        self.running()
            .values()
            .filter(|started| now.saturating_duration_since(**started) >= LOOKAHEAD_WAIT)
            .count()
    }

    /// Look-ahead is fair while no running task is old.
    fn lookahead_allowed(&self) -> bool {
        self.old_tasks() == 0
    }

    /// Free slots that may be taken now: standbys only while look-ahead is allowed.
    fn takeable_slots(&self) -> usize {
        let free = self.slots.available_permits();
        if self.lookahead_allowed() {
            free
        } else {
            free.saturating_sub(self.concurrency())
        }
    }

    fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        if self.takeable_slots() == 0 {
            return None;
        }
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Take a place in the queue for slots now, for a message that will ask for one soon.
    /// The worker loop does this in the order the broker gave the messages: their
    /// handlers may first run in another order (`--io-threads`), and would ask in that one.
    pub fn queue_for_slot(&self) -> Slot {
        let mut acquire: Acquire = Box::pin(self.slots.clone().acquire_owned());
        // Polled once to join the semaphore's queue; the handler polls it again with its
        // own waker, which replaces this one, and finds a slot given meanwhile.
        match acquire.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(slot)) => Slot::Queued(Place(PlaceState::Served(slot))),
            Poll::Ready(Err(_)) => Slot::Queued(Place(PlaceState::Closed)),
            Poll::Pending => Slot::Queued(Place(PlaceState::Waiting(acquire))),
        }
    }

    /// Wait for a slot with an idle executor behind it (not a standby), from `place` on
    /// if the message has one.
    async fn idle_slot(&self, mut place: Option<Place>) -> Option<OwnedSemaphorePermit> {
        loop {
            let slot = match place.take() {
                Some(place) => place.slot().await?,
                None => self.slots.clone().acquire_owned().await.ok()?,
            };
            if self.slots.available_permits() >= self.concurrency() || self.lookahead_allowed() {
                return Some(slot);
            }
            drop(slot);
            tokio::time::sleep(IDLE_POLL).await;
        }
    }

    /// Wait until one more message may be taken.
    pub async fn admit(&self) -> Option<Admission> {
        let reservation = self.reserved.clone().acquire_owned().await.ok()?;
        let slot = match self.try_slot() {
            Some(slot) => Some(slot),
            None if self.lookahead_allowed() => None,
            None => Some(self.idle_slot(None).await?),
        };
        Some(Admission { reservation, slot })
    }

    /// How many messages may be taken now, counting one already admitted.
    pub fn room(&self) -> usize {
        let reservations = self.reserved.available_permits();
        1 + if self.lookahead_allowed() {
            reservations
        } else {
            reservations.min(self.takeable_slots())
        }
    }

    /// Admit one more without waiting (the `room` counted it).
    pub fn try_admit(&self) -> Option<Admission> {
        let reservation = self.reserved.clone().try_acquire_owned().ok()?;
        Some(Admission {
            reservation,
            slot: self.try_slot(),
        })
    }

    /// The message's slot: the free one it holds, or one that frees up within
    /// [`LOOKAHEAD_WAIT`], waited for from its place if it has one; `None` if it waited in
    /// vain (hand the message back).
    pub async fn slot(&self, held: Option<Slot>) -> Option<OwnedSemaphorePermit> {
        let place = match held {
            Some(Slot::Free(slot)) => return Some(slot),
            Some(Slot::Queued(place)) => Some(place),
            None => None,
        };
        tokio::time::timeout(LOOKAHEAD_WAIT, self.idle_slot(place)).await.ok()?
    }

    /// How many messages the worker holds now (waiting, running or being reported).
    pub fn held(&self) -> usize {
        held(&self.capacity, &self.reserved)
    }

    /// [`Gate::held`], as a counter that needs no borrow of the gate.
    pub fn held_count(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let (reserved, capacity) = (self.reserved.clone(), self.capacity.clone());
        move || held(&capacity, &reserved)
    }

    /// A task went to the executors; returns how many they hold now.
    pub fn started(&self, tag: u64) -> usize {
        let mut running = self.running();
        running.insert(tag, Instant::now());
        running.len()
    }

    pub fn finished(&self, tag: u64) {
        self.running().remove(&tag);
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// How many tasks are in the executors' hands (running or queued for a thread).
    pub fn running_count(&self) -> usize {
        self.running().len()
    }

    /// How many tasks have finished since the worker started.
    pub fn finished_count(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency.load(Ordering::Relaxed)
    }

    /// `n` more slots, each with `per_slot` more reservations (`pool_grow`).
    pub fn grow(&self, n: usize, per_slot: usize) {
        self.concurrency.fetch_add(n, Ordering::Relaxed);
        self.capacity.fetch_add(n * per_slot, Ordering::Relaxed);
        self.slots.add_permits(2 * n);
        self.reserved.add_permits(n * per_slot);
    }

    /// `n` fewer slots, keeping at least one (`pool_shrink`); returns how many go. Slots
    /// and reservations in use are taken out of service as they come free.
    pub fn shrink(&self, n: usize, per_slot: usize) -> usize {
        let n = n.min(self.concurrency().saturating_sub(1));
        self.concurrency.fetch_sub(n, Ordering::Relaxed);
        self.capacity.fetch_sub(n * per_slot, Ordering::Relaxed);
        retire(&self.slots, 2 * n);
        retire(&self.reserved, n * per_slot);
        n
    }

    /// Hold at most `capacity` messages from now on. Fewer takes effect as reservations
    /// come free: until then the worker takes no more.
    pub fn set_capacity(&self, capacity: usize) {
        let before = self.capacity.swap(capacity, Ordering::Relaxed);
        match capacity.cmp(&before) {
            std::cmp::Ordering::Greater => self.reserved.add_permits(capacity - before),
            std::cmp::Ordering::Less => retire(&self.reserved, before - capacity),
            std::cmp::Ordering::Equal => {}
        }
    }

    /// How many messages the worker may hold.
    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// How many messages each slot may hold.
    pub fn reservations_per_slot(&self) -> usize {
        self.capacity() / self.concurrency().max(1)
    }

    /// Wait until every admitted message has left (warm shutdown).
    pub async fn drain(&self) {
        let capacity = self.capacity.load(Ordering::Relaxed);
        let _all = self.reserved.acquire_many(capacity as u32).await;
    }
}

/// Take `count` permits out of service as they come free. The semaphore is fair, so
/// whoever waits after this call waits until they are gone.
fn retire(semaphore: &Arc<Semaphore>, count: usize) {
    let semaphore = semaphore.clone();
    tokio::spawn(async move {
        if let Ok(permits) = semaphore.acquire_many_owned(count as u32).await {
            permits.forget();
        }
    });
}

/// Reservations taken out of the current capacity.
fn held(capacity: &AtomicUsize, reserved: &Semaphore) -> usize {
    capacity
        .load(Ordering::Relaxed)
        .saturating_sub(reserved.available_permits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_capacity_holds_from_the_next_admission() {
        let gate = Gate::new(2, 4);
        gate.set_capacity(8);
        assert_eq!((gate.capacity(), gate.reservations_per_slot()), (8, 4));
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(gate.try_admit().expect("room for 8"));
        }
        assert_eq!(gate.held(), 6);

        // Down to 2 while 6 are held: nothing more comes in until 2 or fewer remain.
        gate.set_capacity(2);
        tokio::task::yield_now().await; // the retiring task queues for its permits
        assert!(gate.try_admit().is_none(), "2 free reservations are being retired");
        held.truncate(2);
        tokio::task::yield_now().await;
        assert!(gate.try_admit().is_none(), "2 held fill the new capacity");
        held.pop();
        let third = tokio::time::timeout(Duration::from_secs(5), gate.admit()).await;
        assert!(third.expect("a reservation came free").is_some());
    }

    #[tokio::test]
    async fn places_in_the_queue_for_slots_are_served_in_the_order_taken() {
        let gate = Arc::new(Gate::new(1, 8));
        let mut taken: Vec<_> = (0..2).map(|_| gate.try_admit().expect("room").slot).collect();
        assert!(taken.iter().all(Option::is_some), "both slots were free");
        let places: Vec<Slot> = (0..3).map(|_| gate.queue_for_slot()).collect();
        // Their handlers first ask in the reverse order.
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut handlers = Vec::new();
        for (index, place) in places.into_iter().enumerate().rev() {
            let (gate, served) = (gate.clone(), served.clone());
            handlers.push(tokio::spawn(async move {
                let slot = gate.slot(Some(place)).await.expect("a slot within the wait");
                served.lock().unwrap().push(index);
                drop(slot); // to the next in the queue
            }));
            tokio::task::yield_now().await;
        }
        taken.pop();
        for handler in handlers {
            handler.await.unwrap();
        }
        assert_eq!(*served.lock().unwrap(), [0, 1, 2]);
    }
}
