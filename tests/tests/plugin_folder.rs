//! The plugin folder is watched: add, replace, break and remove plugins while the
//! worker runs.

use std::time::{Duration, Instant};

use celeriac_tests::{plugin, stderr, stdout, Sandbox, WorkerProcess};

/// Call `math.add 2 3` until it returns 5 (the plugin is in service), or give up.
fn served_within(sandbox: &Sandbox, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let out = sandbox.run(&["call", "math.add", "2", "3", "--wait", "--timeout", "5"]);
        if stdout(&out) == "5" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

fn wait_log(worker: &WorkerProcess, text: &str) {
    worker.wait_for_log(text, Duration::from_secs(30));
}

#[test]
fn dropping_a_file_in_serves_it_and_removing_it_unregisters() {
    let sandbox = Sandbox::new();
    let worker = sandbox.worker(&[]);
    sandbox.install(&plugin("math"), "math.wasm");
    assert!(
        served_within(&sandbox, Duration::from_secs(20)),
        "log:\n{}",
        worker.log()
    );

    std::fs::remove_file(sandbox.plugins().join("math.wasm")).unwrap();
    wait_log(&worker, "plugin removed");
    let out = sandbox.run(&["call", "math.add", "2", "3", "--wait"]);
    assert!(stderr(&out).contains("NotRegistered"), "{}", stderr(&out));
}

#[test]
fn a_broken_file_keeps_the_previous_version_in_service() {
    let sandbox = Sandbox::new();
    sandbox.install(&plugin("math"), "math.wasm");
    let worker = sandbox.worker(&[]);
    let tmp = sandbox.path().join("broken.wasm");
    std::fs::write(&tmp, b"\0asm but not really a component").unwrap();
    std::fs::rename(&tmp, sandbox.plugins().join("math.wasm")).unwrap();
    wait_log(&worker, "the previous version stays in service");
    let out = sandbox.run(&["call", "math.add", "2", "3", "--wait"]);
    assert_eq!(stdout(&out), "5", "{}", stderr(&out));
}

#[test]
fn two_files_claiming_one_task_is_an_error_naming_both() {
    let sandbox = Sandbox::new();
    sandbox.install(&plugin("math"), "math.wasm");
    let worker = sandbox.worker(&[]);
    sandbox.install(&plugin("math"), "math-copy.wasm");
    wait_log(&worker, "claimed by two plugins");
    let log = worker.log();
    assert!(log.contains("math.wasm") && log.contains("math-copy.wasm"), "{log}");
    let out = sandbox.run(&["call", "math.add", "2", "3", "--wait"]);
    assert_eq!(stdout(&out), "5");
}
