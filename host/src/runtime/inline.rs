//! Short tasks run on the calling thread, the worker's I/O thread, instead of being handed
//! to an executor thread. Handing a task over and its outcome back costs more than a task
//! like `math.add` (a wake of each thread, and ~1 context switch a task); run in place, a
//! Redis drain took 43–54 µs of worker CPU a task instead of 66–86, and drained 4% faster
//! (`drain_ab.py`, 4 rounds, 2026-12-07). The I/O thread is one thread, though: a drain of
//! a longer task all in place can be slower (README, "Speed").
//!
//! In place, a run makes and drops its own instance: a third of the I/O thread's time in
//! a Redis drain of `math.add` (perf, 2026-12-07: instantiating 19%, dropping the store 15%,
//! the call a few %). Having the idle executor threads make instances ahead for these runs
//! and drop their stores was tried and not kept: the I/O thread went from 75% to 64% busy,
//! but the worker's CPU a task rose by a third (presumably instances made on one core and used on
//! another) and the drain did not change (+0.9% a round, 6 rounds of 40,000): on two cores
//! shared with Redis, the CPU all threads spend is the limit, not the I/O thread's.
//!
//! Such a run is speculative, because a task that ran short may not this time: it must end
//! within [`BUDGET`] and do nothing anyone could see (log, report progress, write output),
//! or it is abandoned, its instance dropped, and the task runs again on an executor thread
//! as if the first run never happened. A guest cannot reach the world but through those calls
//! and its grants, and plugins with network or directory grants never run here. The
//! budget is checked on the engine's epoch tick, so an abandoned run held the I/O thread
//! for at most [`BUDGET`] plus one tick, once: the task is then no longer short.
//!
//! WASI's synchronous streams and polls block on Tokio, which panics on a Tokio thread, so a
//! guest that writes output or waits does so on an executor thread: output counts as an
//! effect, and a run that reaches such a call anyway is caught and abandoned, its panic
//! not printed.
//!
//! A task is short when its last [`SHORT_RUNS`] runs, wherever they ran, each took under
//! the runtime's threshold ([`INLINE_BELOW`] unless told otherwise; a run in an instance
//! made ahead, without its instantiation) and did nothing of the kind; so its first runs are
//! on executor threads, and a task that is long now and then is not tried here again and
//! again.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::Duration;

use super::execute::{Invocation, Outcome, Usage};
use super::plugin::PluginVersion;
use super::Runtime;

/// A run on the I/O thread this long is abandoned (at the next epoch tick).
pub const BUDGET: Duration = Duration::from_millis(1);
/// How short an unheard run must be to count as short, unless the runtime is given another
/// ([`Runtime::with_inline_below`], `celeriac worker --inline-below`). Set well above
/// `math.add`'s (13 µs a fresh instance and call in a warm loop; more inside the worker) so
/// that its runs do not flip between the I/O thread and the executors: at 30 µs they did,
/// and that mix drained 10% slower than no running in place at all (`drain_ab.py`, 6 rounds).
pub const INLINE_BELOW: Duration = Duration::from_micros(100);

/// A task runs on the I/O thread after this many short runs in a row.
const SHORT_RUNS: u32 = 4;

/// How many short runs in a row each task of one plugin version has had (up to
/// [`SHORT_RUNS`]). The names are fixed at load, so a run reads and counts without a lock.
#[derive(Debug, Default)]
pub struct ShortTasks(HashMap<String, AtomicU32>);

impl ShortTasks {
    pub(crate) fn for_tasks<'a>(names: impl IntoIterator<Item = &'a str>) -> ShortTasks {
        ShortTasks(
            names
                .into_iter()
                .map(|name| (name.to_owned(), AtomicU32::new(0)))
                .collect(),
        )
    }

    fn contains(&self, task: &str) -> bool {
        self.0
            .get(task)
            .is_some_and(|runs| runs.load(Ordering::Relaxed) >= SHORT_RUNS)
    }

    /// Note how the task's latest run went: short if under `below` and unheard.
    pub(crate) fn record(&self, task: &str, usage: &Usage, below: Duration) {
        let Some(runs) = self.0.get(task) else {
            return;
        };
        let short = usage.wall < below && !usage.effects;
        if short {
            let _ = runs.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < SHORT_RUNS).then_some(n + 1)
            });
        } else {
            runs.store(0, Ordering::Relaxed);
        }
    }
}

impl Runtime {
    /// Run the task here if it is short and its run stays so; `None` if it was not run
    /// (or was abandoned): run it on an executor thread.
    pub fn run_inline(&self, plugin: &PluginVersion, invocation: &Invocation) -> Option<(Outcome, Usage)> {
        // A kept instance belongs to the executor threads; grants may block on I/O.
        if plugin.manifest.reuse_instance
            || plugin.manifest.grants_io()
            || !plugin.short_tasks.contains(&invocation.context.name)
        {
            return None;
        }
        let ran = speculating(|| self.run_speculative(plugin, invocation)).unwrap_or_else(|| {
            let heard = Usage {
                effects: true,
                ..Usage::default()
            };
            plugin
                .short_tasks
                .record(&invocation.context.name, &heard, self.inline_below);
            None
        });
        if ran.is_none() {
            tracing::debug!(task_id = %invocation.context.id, task = %invocation.context.name,
                "a short task ran long or made itself heard; running it again on an executor thread");
        }
        ran
    }
}

thread_local! {
    /// A speculative run is under way on this thread.
    static SPECULATING: Cell<bool> = const { Cell::new(false) };
}

/// `run()`, or `None` if it panicked (a WASI call that blocks on Tokio); such a panic is
/// expected here and not printed.
fn speculating<T>(run: impl FnOnce() -> T) -> Option<T> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let print = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !SPECULATING.with(Cell::get) {
                print(info);
            }
        }));
    });
    SPECULATING.with(|flag| flag.set(true));
    let ran = std::panic::catch_unwind(AssertUnwindSafe(run));
    SPECULATING.with(|flag| flag.set(false));
    ran.map_err(|panic| {
        let text = (panic.downcast_ref::<&str>().copied())
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("");
        tracing::debug!(panic = %text, "a run on the I/O thread panicked");
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use serde_json::{json, Map, Value};

    use super::*;
    use crate::protocol::TaskRequest;
    use crate::runtime::testing::{load_math, TestFolder};

    /// A call of `task`, its progress reports counted in `heard`.
    fn invocation(task: &str, args: Vec<Value>, heard: &Arc<AtomicUsize>) -> Invocation {
        let request = TaskRequest::new(task, args, Map::new());
        let heard = heard.clone();
        Invocation {
            progress: Some(Arc::new(move |_: &str, _: &str, _: Value| {
                heard.fetch_add(1, Ordering::Relaxed);
            })),
            ..Invocation::for_task(&request, "celeriac@test", "celery")
        }
    }

    /// As if the task's last runs had been short.
    fn seem_short(plugin: &PluginVersion, task: &str) {
        for _ in 0..SHORT_RUNS {
            plugin.short_tasks.record(task, &Usage::default(), INLINE_BELOW);
        }
    }

    /// Run the task on this thread, as an executor does, until its last [`SHORT_RUNS`] runs
    /// were short. The first runs of a fresh load may not be, on a busy machine.
    fn run_until_short(runtime: &Runtime, plugin: &PluginVersion, task: impl Fn() -> Invocation) {
        let mut in_a_row = 0;
        for _ in 0..100 {
            if in_a_row == SHORT_RUNS {
                return;
            }
            assert!(runtime.run_inline(plugin, &task()).is_none(), "not known short yet");
            let (outcome, usage) = runtime.execute_measured(plugin, task());
            assert!(matches!(outcome, Outcome::Success(_)), "{outcome:?}");
            assert!(!usage.effects);
            let short = usage.wall < runtime.inline_below;
            in_a_row = if short { in_a_row + 1 } else { 0 };
        }
        panic!("no {SHORT_RUNS} short runs in a row in 100");
    }

    /// A runtime with `math` loaded in a folder of the test's own (kept while it runs),
    /// and a counter of the progress reports its invocations make.
    fn with_math(test: &str) -> (Runtime, TestFolder, PluginVersion, Arc<AtomicUsize>) {
        let runtime = Runtime::new(1, None).expect("wasmtime engine");
        let folder = TestFolder::new(test);
        let math = load_math(&runtime, &folder.join("math"), None);
        (runtime, folder, math, Arc::new(AtomicUsize::new(0)))
    }

    #[test]
    fn a_long_or_heard_run_starts_the_count_again() {
        let tasks = ShortTasks::for_tasks(["t"]);
        let short = Usage::default();
        let long = Usage {
            wall: INLINE_BELOW,
            ..Usage::default()
        };
        let heard = Usage {
            effects: true,
            ..Usage::default()
        };
        for _ in 1..SHORT_RUNS {
            tasks.record("t", &short, INLINE_BELOW);
        }
        assert!(!tasks.contains("t"));
        tasks.record("t", &short, INLINE_BELOW);
        assert!(tasks.contains("t"));
        for other in [long, heard] {
            tasks.record("t", &other, INLINE_BELOW);
            for _ in 1..SHORT_RUNS {
                tasks.record("t", &short, INLINE_BELOW);
            }
            assert!(!tasks.contains("t"), "long now and then: not short");
            tasks.record("t", &short, INLINE_BELOW);
            assert!(tasks.contains("t"));
        }
        assert!(!tasks.contains("u"));
    }

    #[test]
    fn a_task_runs_inline_after_short_runs_in_a_row() {
        let (runtime, folder, math, heard) = with_math("inline-short");
        let add = || invocation("math.add", vec![json!(2), json!(3)], &heard);

        run_until_short(&runtime, &math, add);
        let (outcome, usage) = runtime.run_inline(&math, &add()).expect("short now: runs inline");
        assert_eq!(outcome, Outcome::Success("5".into()));
        assert!(usage.wall < BUDGET && usage.cpu == usage.wall);

        // A plugin that may reach a network never runs inline.
        let granted = load_math(
            &runtime,
            &folder.join("granted"),
            Some("[grants]\nconnect = [\"127.0.0.1:9\"]\n"),
        );
        run_until_short(&runtime, &granted, add);
        assert!(runtime.run_inline(&granted, &add()).is_none());
    }

    #[test]
    fn a_guest_that_writes_output_on_a_tokio_thread_is_abandoned_not_a_panic() {
        let (runtime, _folder, math, heard) = with_math("inline-output");
        seem_short(&math, "math.panic");
        let panic = || invocation("math.panic", vec![], &heard);

        // The worker's I/O thread: WASI's stderr would block on Tokio there.
        let tokio = tokio::runtime::Builder::new_current_thread().build().expect("tokio");
        let ran = tokio.block_on(async { runtime.run_inline(&math, &panic()) });
        assert!(ran.is_none());
        assert!(!math.short_tasks.contains("math.panic"));

        let (outcome, usage) = runtime.execute_measured(&math, panic());
        let Outcome::Failure { exc, .. } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(exc.exc_type, "WasmTrap");
        assert!(usage.effects, "it wrote to stderr");
    }

    #[test]
    fn a_run_past_the_budget_is_abandoned_and_the_task_is_no_longer_short() {
        let (runtime, _folder, math, heard) = with_math("inline-long");
        seem_short(&math, "math.spin");

        let started = Instant::now();
        assert!(runtime
            .run_inline(&math, &invocation("math.spin", vec![json!(2000)], &heard))
            .is_none());
        // Stopped at the first tick past the budget, long before its 2 s.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert!(!math.short_tasks.contains("math.spin"));
    }

    #[test]
    fn a_task_that_would_be_heard_is_abandoned_unheard_and_heard_on_its_real_run() {
        let (runtime, _folder, math, heard) = with_math("inline-heard");
        seem_short(&math, "math.progress");
        let progress = || invocation("math.progress", vec![json!(3), json!(0)], &heard);

        assert!(runtime.run_inline(&math, &progress()).is_none());
        assert_eq!(heard.load(Ordering::Relaxed), 0, "an abandoned run reports nothing");
        assert!(!math.short_tasks.contains("math.progress"));

        let (outcome, usage) = runtime.execute_measured(&math, progress());
        assert_eq!(outcome, Outcome::Success("3".into()));
        assert_eq!(heard.load(Ordering::Relaxed), 3);
        assert!(usage.effects);
        assert!(
            runtime.run_inline(&math, &progress()).is_none(),
            "it reports progress: never inline"
        );
    }
}
