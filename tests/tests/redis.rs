//! `celeriac call` and `celeriac result` against the real Redis, with a worker on it.

use std::time::Duration;

use celeriac_tests::{plugin, stderr, stdout, OldRedis, Sandbox, WorkerProcess};

#[test]
fn call_and_result_over_redis() {
    let sandbox = Sandbox::redis();
    sandbox.install(&plugin("math"), "math.wasm");
    let _worker = sandbox.worker(&[]);
    let out = sandbox.run(&["call", "math.add", "2", "3", "--wait", "--timeout", "20"]);
    assert_eq!(stdout(&out), "5", "{}", stderr(&out));
    let id = stdout(&sandbox.run(&["call", "math.mul", "6", "7", "--countdown", "0.5"]));
    let out = sandbox.run(&["result", &id, "--wait", "--timeout", "20"]);
    assert_eq!(stdout(&out), "42", "{}", stderr(&out));
    let out = sandbox.run(&["call", "math.div", "1", "0", "--wait"]);
    assert!(
        stderr(&out).contains("ZeroDivisionError: division by zero"),
        "{}",
        stderr(&out)
    );
}

/// Redis 6.0 (Debian 11's, Ubuntu 22.04's) has no `RPOP key count`: the worker takes one
/// message a call there. The tasks are queued before the worker starts, so that its first
/// takes find many waiting; the last is sent to an idle worker, which waits in BRPOP.
#[test]
fn takes_tasks_from_redis_6_0() {
    let server = OldRedis::start();
    let sandbox = Sandbox::redis_at(&server.url());
    let worker = run_queued_then_idle(&sandbox, &[]);
    assert!(worker.log().contains("older than 6.2"), "{}", worker.log());
}

/// Queue 30 tasks, start a worker with `extra`, and check that each queued task and one sent
/// to the worker once idle get their results; the worker is handed back still running.
fn run_queued_then_idle(sandbox: &Sandbox, extra: &[&str]) -> WorkerProcess {
    sandbox.install(&plugin("math"), "math.wasm");
    let ids: Vec<String> = (0..30)
        .map(|n| stdout(&sandbox.run(&["call", "math.add", &n.to_string(), "100"])))
        .collect();
    let worker = sandbox.worker(extra);
    for (n, id) in ids.iter().enumerate() {
        let out = sandbox.run(&["result", id, "--wait", "--timeout", "20"]);
        assert_eq!(
            stdout(&out),
            (n + 100).to_string(),
            "{}\n{}",
            stderr(&out),
            worker.log()
        );
    }
    let out = sandbox.run(&["call", "math.add", "2", "3", "--wait", "--timeout", "20"]);
    assert_eq!(stdout(&out), "5", "{}\n{}", stderr(&out), worker.log());
    worker
}

/// `--io-threads 2`: the worker's I/O runs on two threads of its own, and every task, queued
/// before it started or sent to it idle, gets its result; SIGTERM still stops it cleanly.
#[test]
fn a_worker_with_two_io_threads_runs_every_task() {
    let sandbox = Sandbox::redis();
    let mut worker = run_queued_then_idle(&sandbox, &["--io-threads", "2"]);
    assert_eq!(threads_named(worker.child.id(), "celeriac-io"), 2);
    worker.signal("TERM");
    let status = worker
        .wait_exit(Duration::from_secs(20))
        .expect("the worker stops on SIGTERM");
    assert!(status.success(), "{}", worker.log());

    let out = sandbox.run(&["worker", "--io-threads", "0"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--io-threads"), "{}", stderr(&out));

    // The config file's key, checked as the flag is.
    let config = sandbox.path().join("celeriac.toml");
    std::fs::write(&config, "io_threads = 2\n").unwrap();
    let config = config.to_str().unwrap();
    let from_file = sandbox.worker(&["--config", config]);
    assert_eq!(threads_named(from_file.child.id(), "celeriac-io"), 2);
    drop(from_file);
    std::fs::write(config, "io_threads = 0\n").unwrap();
    let out = sandbox.run(&["worker", "--config", config]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("io_threads = 0"), "{}", stderr(&out));
}

/// How many threads of process `pid` bear `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the worker's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == name)
        .count()
}

#[test]
fn a_wrong_redis_address_is_a_clear_error() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .command(&["purge"])
        .args(["--broker", "redis://:secret@127.0.0.1:1/0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("cannot connect to Redis at redis://***@127.0.0.1:1/0"),
        "{message}"
    );
    assert!(
        !message.contains("secret"),
        "the password must not be printed: {message}"
    );
}
