//! `celeriac call` and `celeriac result` against the real Redis, with a worker on it.

use celeriac_tests::{plugin, stderr, stdout, Sandbox};

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
