//! Celeriac's first-party arithmetic plugin. Besides arithmetic it carries the tasks the
//! host's own tests need: a busy loop (time limits), an allocator (memory caps), an echo
//! (argument passing) and a panic (guest crashes).

use celeriac_sdk::{task, Args, Kwargs, TaskError};
use serde_json::{json, Value};

/// Add two integers.
#[task]
fn add(x: i64, y: i64) -> i64 {
    x.wrapping_add(y)
}

/// Multiply two integers.
#[task]
fn mul(x: i64, y: i64) -> i64 {
    x.wrapping_mul(y)
}

/// Sum a list of integers: a chord body that adds up its header's results.
#[task]
fn tsum(numbers: Vec<i64>) -> i64 {
    numbers.iter().fold(0, |sum, n| sum.wrapping_add(*n))
}

/// Divide x by y; raises ZeroDivisionError when y is 0.
#[task]
fn div(x: f64, y: f64) -> Result<f64, TaskError> {
    if y == 0.0 {
        return Err(TaskError::new("ZeroDivisionError", "division by zero"));
    }
    Ok(x / y)
}

/// The n-th Fibonacci number (naive recursion: a CPU-bound task).
#[task]
fn fib(n: u32) -> Result<u64, TaskError> {
    if n > 92 {
        return Err(TaskError::new(
            "ValueError",
            format!("fib({n}) does not fit in 64 bits"),
        ));
    }
    fn go(n: u32) -> u64 {
        if n < 2 {
            n as u64
        } else {
            go(n - 1) + go(n - 2)
        }
    }
    Ok(go(n))
}

/// Busy-loop for ms milliseconds of wall time, then return ms.
#[task]
fn spin(ms: u64) -> u64 {
    let start = std::time::Instant::now();
    let mut x: u64 = 0;
    while start.elapsed().as_millis() < u128::from(ms) {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    ms
}

/// Count to `steps`, spending `ms` milliseconds on each and reporting a PROGRESS state
/// (`{"current": i, "total": steps}`) before each, as Celery's `update_state` does.
#[task]
fn progress(steps: u32, ms: u64) -> u32 {
    for current in 0..steps {
        celeriac_sdk::update_state("PROGRESS", &json!({"current": current, "total": steps}));
        spin(ms);
    }
    steps
}

/// Return [args, kwargs] exactly as received.
#[task]
fn echo(args: Args, kwargs: Kwargs) -> Value {
    json!([args, kwargs])
}

/// Allocate and touch mb MiB, then return mb.
#[task]
fn alloc(mb: usize) -> usize {
    let mut block = vec![0u8; mb * 1024 * 1024];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&block);
    mb
}

/// How many times this instance has run this task: always 1 in a fresh instance per
/// task (the default), 1, 2, 3… when the manifest asks for `reuse_instance`.
#[task]
fn counter() -> u64 {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

/// Panic on purpose: the worker must report a failure and carry on.
#[task]
fn panic() -> Value {
    panic!("math.panic was called: panicking on purpose")
}

celeriac_sdk::export!(add, mul, tsum, div, fib, spin, progress, echo, alloc, counter, panic);
