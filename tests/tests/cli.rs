//! Errors a person can act on.

use celeriac_tests::{plugin, stderr, stdout, Sandbox};

#[test]
fn a_wrong_url_names_what_is_supported() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .command(&["call", "math.add", "1", "2"])
        .args(["--broker", "kafka://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unsupported broker URL \"kafka://x\""),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("sqlite://"), "{}", stderr(&out));
}

#[test]
fn a_missing_plugin_folder_is_explained() {
    let sandbox = Sandbox::new();
    let out = sandbox.run(&["worker", "--plugins", "no-such-folder"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("plugin folder no-such-folder cannot be read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn plugins_check_explains_a_file_that_is_not_a_component() {
    let sandbox = Sandbox::new();
    let file = sandbox.path().join("core.wasm");
    // A valid *core* module (the 8-byte empty module), not a component.
    std::fs::write(&file, b"\0asm\x01\0\0\0").unwrap();
    let out = sandbox.run(&["plugins", "check", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a valid WebAssembly component"),
        "{}",
        stderr(&out)
    );

    let out = sandbox.run(&["plugins", "check", plugin("math").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("celeriac:task@0.1.0") && stdout(&out).contains("math.div"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn purge_drops_waiting_messages() {
    let sandbox = Sandbox::new();
    for _ in 0..3 {
        sandbox.run(&["call", "math.add", "1", "2"]);
    }
    let out = sandbox.run(&["purge"]);
    assert_eq!(
        stdout(&out),
        "Purged 3 messages from 1 known task queue.",
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_config_file_supplies_the_urls() {
    let sandbox = Sandbox::new();
    let config = sandbox.path().join("celeriac.toml");
    std::fs::write(
        &config,
        format!("broker = \"{}\"\nqueues = [\"from-file\"]\n", sandbox.db_url()),
    )
    .unwrap();
    sandbox.run(&["call", "math.add", "1", "2", "-Q", "from-file"]);
    let out = std::process::Command::new(celeriac_tests::bin())
        .current_dir(sandbox.path())
        .env_remove("CELERY_BROKER_URL")
        .args(["--config", config.to_str().unwrap(), "purge"])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out),
        "Purged 1 message from 1 known task queue.",
        "{}",
        stderr(&out)
    );
    std::fs::write(&config, "brokr = \"typo\"\n").unwrap();
    let out = sandbox
        .command(&["--config", config.to_str().unwrap(), "purge"])
        .output()
        .unwrap();
    assert!(stderr(&out).contains("unknown field `brokr`"), "{}", stderr(&out));
}
