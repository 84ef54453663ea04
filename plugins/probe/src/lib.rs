//! Celeriac's sandbox probe. Each task tries something a plugin is only allowed with a
//! grant in its manifest, or never: the tests run them with and without grants and check
//! that each attempt fails cleanly (or succeeds exactly as far as granted) and that the
//! worker carries on.

use celeriac_sdk::{task, TaskError};
use serde_json::Value;

fn os_error(what: &str, err: std::io::Error) -> TaskError {
    TaskError::new("PermissionError", format!("{what}: {err}"))
}

/// Read a file.
#[task]
fn read_file(path: String) -> Result<String, TaskError> {
    std::fs::read_to_string(&path).map_err(|e| os_error(&path, e))
}

/// Write a file.
#[task]
fn write_file(path: String, text: String) -> Result<usize, TaskError> {
    std::fs::write(&path, &text).map_err(|e| os_error(&path, e))?;
    Ok(text.len())
}

/// List a directory.
#[task]
fn list_dir(path: String) -> Result<Vec<String>, TaskError> {
    let entries = std::fs::read_dir(&path).map_err(|e| os_error(&path, e))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// Every environment variable the plugin sees.
#[task]
fn environment() -> Value {
    std::env::vars().map(|(k, v)| (k, Value::String(v))).collect()
}

/// Open a TCP connection to host:port.
#[task]
fn connect(address: String) -> Result<String, TaskError> {
    std::net::TcpStream::connect(&address).map_err(|e| os_error(&address, e))?;
    Ok(format!("connected to {address}"))
}

/// Loop forever.
#[task]
fn spin_forever() -> u64 {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Allocate 1 MiB blocks until the allocator gives up.
#[task]
fn hog_memory() -> usize {
    let mut blocks = Vec::new();
    loop {
        blocks.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&blocks);
    }
}

/// Recurse until the stack runs out.
#[task]
fn recurse(depth: u64) -> u64 {
    fn down(n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            std::hint::black_box(down(n - 1)) + 1
        }
    }
    down(depth)
}

/// Return a string of `megabytes` MiB.
#[task]
fn big_result(megabytes: usize) -> String {
    "x".repeat(megabytes << 20)
}

/// Write `lines` log lines of `size` bytes each.
#[task]
fn flood_log(lines: usize, size: usize) -> usize {
    let line = "y".repeat(size);
    for _ in 0..lines {
        celeriac_sdk::log(celeriac_sdk::LogLevel::Info, &line);
    }
    lines
}

/// Call the host with garbage: a state with no name, and progress that is not JSON.
#[task]
fn garbage_to_host() -> bool {
    celeriac_sdk::update_state("", &Value::Null);
    celeriac_sdk::update_state(&"S".repeat(1 << 20), &"z".repeat(1 << 20));
    true
}

celeriac_sdk::export!(
    read_file,
    write_file,
    list_dir,
    environment,
    connect,
    spin_forever,
    hog_memory,
    recurse,
    big_result,
    flood_log,
    garbage_to_host
);
