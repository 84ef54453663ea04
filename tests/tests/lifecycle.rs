//! Shutdown and crashes: nothing acknowledged late is lost.

use std::time::Duration;

use celeriac_tests::{plugin, stderr, stdout, Sandbox};

#[test]
fn sigterm_finishes_the_running_task_then_exits_cleanly() {
    let sandbox = Sandbox::new();
    sandbox.install(&plugin("math"), "math.wasm");
    let mut worker = sandbox.worker(&[]);
    let id = stdout(&sandbox.run(&["call", "math.spin", "1500"]));
    worker.wait_for_log(&format!("Task math.spin[{id}] received"), Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(30)).expect("worker did not exit");
    assert!(status.success(), "exit status {status:?}; log:\n{}", worker.log());
    let out = sandbox.run(&["result", &id]);
    assert_eq!(stdout(&out), "1500", "{}", stderr(&out));
}

#[test]
fn a_killed_worker_loses_nothing() {
    let sandbox = Sandbox::new();
    sandbox.install(&plugin("math"), "math.wasm");
    // A short lease, so the restore happens within the test.
    let lease = ["--broker-transport-option", "visibility_timeout=2"];
    let mut worker = sandbox.worker(&lease);
    let id = stdout(&sandbox.run(&["call", "math.spin", "3000"]));
    worker.wait_for_log(&format!("Task math.spin[{id}] received"), Duration::from_secs(20));
    worker.signal("KILL");
    worker
        .wait_exit(Duration::from_secs(10))
        .expect("worker survived SIGKILL");
    assert_eq!(stdout(&sandbox.run(&["result", &id])), "PENDING");

    let _second = sandbox.worker(&lease);
    let out = sandbox.run(&["result", &id, "--wait", "--timeout", "60"]);
    assert_eq!(stdout(&out), "3000", "{}", stderr(&out));
}

#[test]
fn a_second_signal_stops_at_once_and_loses_nothing() {
    let sandbox = Sandbox::new();
    sandbox.install(&plugin("math"), "math.wasm");
    let lease = ["--broker-transport-option", "visibility_timeout=2"];
    let mut worker = sandbox.worker(&lease);
    let id = stdout(&sandbox.run(&["call", "math.spin", "6000"]));
    worker.wait_for_log(&format!("Task math.spin[{id}] received"), Duration::from_secs(20));
    worker.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        worker.wait_exit(Duration::from_millis(200)).is_none(),
        "a warm shutdown waits for the task"
    );
    worker.signal("INT");
    let status = worker
        .wait_exit(Duration::from_secs(3))
        .expect("a second signal stops the worker at once");
    assert!(!status.success(), "a cold stop exits non-zero; log:\n{}", worker.log());
    assert_eq!(stdout(&sandbox.run(&["result", &id])), "PENDING");

    let _second = sandbox.worker(&lease);
    let out = sandbox.run(&["result", &id, "--wait", "--timeout", "60"]);
    assert_eq!(stdout(&out), "6000", "{}", stderr(&out));
}
