//! Tasks through the real binary on the embedded broker: results, failures, limits.

use std::time::{Duration, Instant};

use celeriac_tests::{plugin, stderr, stdout, Sandbox};

fn sandbox_with_math() -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.install(&plugin("math"), "math.wasm");
    sandbox
}

#[test]
fn call_prints_the_result() {
    let sandbox = sandbox_with_math();
    let _worker = sandbox.worker(&[]);
    let out = sandbox.run(&["call", "math.add", "2", "3", "--wait", "--timeout", "20"]);
    assert_eq!(stdout(&out), "5", "{}", stderr(&out));
    let out = sandbox.run(&[
        "call",
        "math.echo",
        "1",
        "\"x\"",
        "--kwargs",
        r#"{"k": [1, null]}"#,
        "--wait",
    ]);
    assert_eq!(stdout(&out), r#"[[1,"x"],{"k":[1,null]}]"#, "{}", stderr(&out));
    let out = sandbox.run(&["call", "math.fib", "20", "--wait"]);
    assert_eq!(stdout(&out), "6765");
}

#[test]
fn call_without_wait_prints_the_id_and_result_reads_it() {
    let sandbox = sandbox_with_math();
    let _worker = sandbox.worker(&[]);
    let out = sandbox.run(&["call", "math.mul", "6", "7"]);
    let id = stdout(&out);
    assert_eq!(id.len(), 36, "expected a task id, got {id:?}");
    let out = sandbox.run(&["result", &id, "--wait", "--timeout", "20"]);
    assert_eq!(stdout(&out), "42", "{}", stderr(&out));
}

#[test]
fn failures_are_reported_and_the_worker_goes_on() {
    let sandbox = sandbox_with_math();
    let worker = sandbox.worker(&[]);
    let cases: [(&[&str], &str); 6] = [
        (&["math.div", "1", "0"], "ZeroDivisionError: division by zero"),
        (&["math.panic"], "WasmTrap"),
        (&["math.alloc", "512"], "MemoryError"),
        (&["math.nope"], "NotRegistered: math.nope"),
        (&["math.add", "1"], "TypeError: add() missing required argument: 'y'"),
        (&["math.add", "1", "2", "3"], "TypeError"),
    ];
    for (call, expected) in cases {
        let mut args = vec!["call"];
        args.extend_from_slice(call);
        args.extend_from_slice(&["--wait", "--timeout", "20"]);
        let out = sandbox.run(&args);
        assert!(!out.status.success(), "{call:?} should fail");
        assert!(
            stderr(&out).contains(expected),
            "{call:?}: expected {expected:?} in {:?}",
            stderr(&out)
        );
    }
    // The panic message the guest printed reaches the failure, not just "unreachable".
    let out = sandbox.run(&["call", "math.panic", "--wait"]);
    assert!(stderr(&out).contains("panicking on purpose"), "{}", stderr(&out));
    let out = sandbox.run(&["call", "math.add", "2", "2", "--wait"]);
    assert_eq!(stdout(&out), "4");
    assert!(worker
        .log()
        .contains("Received unregistered task of type \"math.nope\""));
}

#[test]
fn hard_time_limit_stops_a_runaway_task() {
    let sandbox = sandbox_with_math();
    let _worker = sandbox.worker(&[]);
    let started = Instant::now();
    let out = sandbox.run(&[
        "call",
        "math.spin",
        "60000",
        "--time-limit",
        "1",
        "--wait",
        "--timeout",
        "30",
    ]);
    let took = started.elapsed();
    assert!(stderr(&out).contains("TimeLimitExceeded"), "{}", stderr(&out));
    assert!(took < Duration::from_secs(30), "the limit did not stop the task");
    let out = sandbox.run(&["call", "math.add", "1", "1", "--wait"]);
    assert_eq!(stdout(&out), "2");
}

#[test]
fn manifest_limits_apply() {
    let sandbox = sandbox_with_math();
    std::fs::write(
        sandbox.plugins().join("math.toml"),
        "[limits]\nmemory_mb = 16\ntime_limit = 1\n",
    )
    .unwrap();
    let _worker = sandbox.worker(&[]);
    let out = sandbox.run(&["call", "math.alloc", "32", "--wait"]);
    assert!(stderr(&out).contains("memory limit of 16 MiB"), "{}", stderr(&out));
    let out = sandbox.run(&["call", "math.spin", "60000", "--wait", "--timeout", "30"]);
    assert!(stderr(&out).contains("TimeLimitExceeded"), "{}", stderr(&out));
    let out = sandbox.run(&["call", "math.alloc", "4", "--wait"]);
    assert_eq!(stdout(&out), "4", "{}", stderr(&out));
}

#[test]
fn countdown_delays_and_expires_discards() {
    let sandbox = sandbox_with_math();
    let _worker = sandbox.worker(&[]);
    let started = Instant::now();
    let out = sandbox.run(&["call", "math.add", "1", "2", "--countdown", "1.5", "--wait"]);
    assert_eq!(stdout(&out), "3");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "ran before its countdown"
    );
    let out = sandbox.run(&[
        "call",
        "math.add",
        "1",
        "2",
        "--countdown",
        "2",
        "--expires",
        "0.5",
        "--wait",
    ]);
    assert!(stderr(&out).contains("TaskRevokedError: expired"), "{}", stderr(&out));
}

/// After a few short, silent runs a task runs on the worker's I/O thread; a run there that
/// turns long, or writes output (a guest's panic or allocation failure message), is
/// abandoned and run again on an executor thread, with the outcome an executor gives.
#[test]
fn a_short_task_that_turns_long_or_loud_gets_its_real_outcome() {
    let sandbox = sandbox_with_math();
    // Short: under 100 ms, so that a loaded machine's slow runs of `spin 0` still count.
    let worker = sandbox.worker(&["--loglevel", "debug", "--inline-below", "100000"]);
    let call = |args: &[&str]| {
        let mut all = vec!["call"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--wait", "--timeout", "20"]);
        sandbox.run(&all)
    };
    for (short, then, expected) in [
        (["math.spin", "0"], ["math.spin", "300"], "300"),
        (["math.alloc", "0"], ["math.alloc", "512"], "MemoryError"),
    ] {
        for _ in 0..8 {
            let out = call(&short);
            assert_eq!(stdout(&out), "0", "{}", stderr(&out));
        }
        let out = call(&then);
        let said = format!("{}{}", stdout(&out), stderr(&out));
        assert!(said.contains(expected), "{then:?}: expected {expected:?} in {said:?}");
    }
    let log = worker.log();
    assert_eq!(
        log.matches("running it again on an executor thread").count(),
        2,
        "{log}"
    );
    assert!(!log.contains("panicked at"), "{log}");
}
