//! CPU time used so far, by the calling thread or by the whole process.

use std::time::Duration;

/// CPU time the calling thread has used.
pub fn thread() -> Duration {
    read(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The calling thread's CPU time, read once a lap: each lap is what the thread used since
/// the one before. A loop that wants the cost of each turn reads the clock once a turn,
/// not twice; each read is a system call (0.64 µs on the machine the benchmarks ran on).
pub struct Laps(Duration);

impl Laps {
    /// Start counting on the calling thread.
    pub fn start() -> Laps {
        Laps(thread())
    }

    /// CPU time the calling thread used since the last lap (or the start).
    pub fn lap(&mut self) -> Duration {
        let now = thread();
        let used = now.saturating_sub(self.0);
        self.0 = now;
        used
    }
}

/// CPU time all the process's threads have used.
pub fn process() -> Duration {
    read(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Zero if the clock cannot be read: callers subtract with saturation.
fn read(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we pass.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
