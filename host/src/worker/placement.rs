//! Which CPUs the worker's threads run on: one while the worker is lightly loaded, all it
//! was given once it is busy.
//!
//! A task crosses threads twice: the async thread hands it to an executor thread, which
//! hands the outcome back. On a virtual machine, waking a thread whose CPU sits idle means
//! waking that virtual CPU, which costs tens of microseconds each way. With every thread
//! on one CPU, the woken thread runs there as soon as the waker sleeps. Measured on
//! Redis, `-c 2`, 1,000 sequential `send_task(...).get()` from the Python client
//! (2026-12-05): p50 1.09–1.10 ms with the threads free to roam, 0.94–0.99 ms with them
//! all pinned to one CPU (`taskset`-style, the client free).
//!
//! A busy worker needs every CPU, so the threads spread again as soon as a second task is
//! in the executors' hands, or the worker uses most of one CPU. Only the CPUs the process
//! was started with are used (a `taskset` or a cgroup's choice is kept); with one of them,
//! nothing is done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Shared;
use crate::cpu_time;

/// How often the worker's CPU use is read.
const CHECK_EVERY: Duration = Duration::from_millis(50);
/// Below this share of one CPU, with at most one task in the executors' hands, the
/// threads gather on one.
const GATHER_BELOW: f64 = 0.4;
/// Above this share of one CPU, they spread over all. Gathered, a worker can use at most
/// one CPU, so this is reached as soon as load arrives.
const SPREAD_ABOVE: f64 = 0.75;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Spread,
    Gathered,
}

/// The layout called for by the CPU use since the last check and the tasks the
/// executors hold now.
fn next(layout: Layout, busy_cpus: f64, tasks: usize) -> Layout {
    match layout {
        Layout::Spread if busy_cpus < GATHER_BELOW && tasks <= 1 => Layout::Gathered,
        Layout::Gathered if busy_cpus > SPREAD_ABOVE || tasks > 1 => Layout::Spread,
        same => same,
    }
}

/// What the task path tells the placement: it starts tasks, and a second one at once
/// should not wait for the next check to have a second CPU.
#[derive(Default)]
pub struct Placement {
    gathered: AtomicBool,
    spread_now: Notify,
}

impl Placement {
    /// A task went to the executors, which now hold `tasks`.
    pub fn task_started(&self, tasks: usize) {
        if tasks > 1 && self.gathered.load(Ordering::Relaxed) {
            self.spread_now.notify_one();
        }
    }
}

/// Keep the threads placed for the load, for the life of the process.
pub async fn keep(shared: Arc<Shared>) {
    let Some(allowed) = cpus::allowed() else {
        return;
    };
    let mut layout = Layout::Spread;
    let mut last = (Instant::now(), cpu_time::process());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shared.placement.spread_now.notified() => {}
        }
        let now = (Instant::now(), cpu_time::process());
        let busy = now.1.saturating_sub(last.1).as_secs_f64() / (now.0 - last.0).as_secs_f64().max(1e-3);
        last = now;
        let wanted = next(layout, busy, shared.gate.running_count());
        if wanted == layout {
            continue;
        }
        let placed = match wanted {
            Layout::Gathered => cpus::current().and_then(|cpu| cpus::place_all(&allowed.only(cpu))),
            Layout::Spread => cpus::place_all(&allowed),
        };
        match placed {
            Ok(()) => {
                layout = wanted;
                shared
                    .placement
                    .gathered
                    .store(layout == Layout::Gathered, Ordering::Relaxed);
            }
            Err(err) => {
                // Placement is an optimisation: spread out, and stop trying.
                tracing::debug!(error = %err, "cannot place the worker's threads; leaving them to the scheduler");
                let _ = cpus::place_all(&allowed);
                shared.placement.gathered.store(false, Ordering::Relaxed);
                return;
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod cpus {
    use std::io;

    /// A set of CPUs, as the kernel's affinity calls take it.
    pub struct CpuSet(libc::cpu_set_t);

    impl CpuSet {
        /// Just `cpu`.
        pub fn only(&self, cpu: usize) -> CpuSet {
            // SAFETY: cpu_set_t is plain bits; CPU_ZERO/CPU_SET write within it.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_ZERO(&mut set);
                libc::CPU_SET(cpu, &mut set);
                CpuSet(set)
            }
        }
    }

    /// The CPUs this process may run on, when there are at least two.
    pub fn allowed() -> Option<CpuSet> {
        // SAFETY: the kernel fills the set it is given, of the size it is told.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return None;
            }
            (libc::CPU_COUNT(&set) >= 2).then_some(CpuSet(set))
        }
    }

    /// The CPU the calling thread runs on.
    pub fn current() -> io::Result<usize> {
        // SAFETY: no arguments; returns -1 with errno set on failure.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).map_err(|_| io::Error::last_os_error())
    }

    /// Put every thread of the process on `set`. Threads that end meanwhile are skipped.
    pub fn place_all(set: &CpuSet) -> io::Result<()> {
        for entry in std::fs::read_dir("/proc/self/task")? {
            let Some(tid) = entry?
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            // SAFETY: the set outlives the call; the kernel only reads it.
            let done = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set.0) };
            if done != 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::ESRCH) {
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod cpus {
    use std::io;

    pub struct CpuSet;

    impl CpuSet {
        pub fn only(&self, _cpu: usize) -> CpuSet {
            CpuSet
        }
    }

    pub fn allowed() -> Option<CpuSet> {
        None
    }

    pub fn current() -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub fn place_all(_set: &CpuSet) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_light_load_gathers_and_a_busy_one_spreads() {
        assert_eq!(next(Layout::Spread, 0.1, 1), Layout::Gathered);
        assert_eq!(next(Layout::Gathered, 0.9, 0), Layout::Spread);
    }

    #[test]
    fn a_second_task_spreads_whatever_the_cpu_use() {
        assert_eq!(next(Layout::Gathered, 0.1, 2), Layout::Spread);
        assert_eq!(next(Layout::Spread, 0.1, 2), Layout::Spread);
    }

    #[test]
    fn loads_between_the_thresholds_keep_the_placement() {
        assert_eq!(next(Layout::Spread, 0.6, 0), Layout::Spread);
        assert_eq!(next(Layout::Gathered, 0.6, 1), Layout::Gathered);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn threads_gather_on_one_cpu_and_spread_back() {
        let Some(allowed) = cpus::allowed() else {
            return; // one CPU: nothing to place
        };
        let cpu = cpus::current().unwrap();
        cpus::place_all(&allowed.only(cpu)).unwrap();
        assert_eq!(cpus::current().unwrap(), cpu);
        assert!(cpus::allowed().is_none(), "this thread may still run on other CPUs");
        cpus::place_all(&allowed).unwrap();
        assert!(cpus::allowed().is_some(), "this thread was not given its CPUs back");
    }
}
