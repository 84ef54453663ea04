//! The host's own cost per task, without a broker: a Celery task message (kombu's JSON
//! envelope, as it arrives from Redis) is decoded, a fresh instance of the math plugin
//! runs `math.add`, and the result meta is encoded, as the worker does for every task.
//! A second case times the fresh instance and call alone. Then, per guest language, a
//! trivial task in a fresh instance and in a kept one (`reuse_instance = true`), for each
//! first-party plugin that is built.
//!
//! Needs the built plugin: `make plugins`, then `make bench` (or `cargo bench -p celeriac
//! --bench host_cost` with CELERIAC_PLUGIN_DIR set, default $CARGO_TARGET_DIR/plugins).

use std::path::PathBuf;

use celeriac::protocol::{Message, State, TaskRequest, TaskResult};
use celeriac::runtime::{Invocation, Outcome, Runtime};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Map, Value};

// The worker's allocator (`main.rs`), so that the figure is the worker's: the first case
// measured 29.6–33.1 µs with the system allocator, 22.7–26.5 with this one (2026-12-06).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn plugin_dir() -> PathBuf {
    std::env::var_os("CELERIAC_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("plugins")
        })
}

fn plugin_path() -> PathBuf {
    plugin_dir().join("math.wasm")
}

fn invocation(request: &TaskRequest) -> Invocation {
    Invocation::for_task(request, "celeriac@bench", "celery")
}

fn host_cost(c: &mut Criterion) {
    let path = plugin_path();
    let runtime = Runtime::new(1, None).expect("wasmtime engine");
    let plugin = runtime
        .load_file(&path)
        .unwrap_or_else(|e| panic!("cannot load {} (run `make plugins`): {e}", path.display()));
    let envelope = TaskRequest::new("math.add", vec![json!(2), json!(3)], Map::new())
        .encode()
        .to_envelope_json();

    let mut cpu = celeriac::cpu_time::Laps::start();
    c.bench_function("decode + fresh instance + math.add + encode result", |b| {
        b.iter(|| {
            let message = Message::from_envelope_json(&envelope).expect("envelope");
            let request = TaskRequest::decode(&message).expect("task message");
            let Outcome::Success(json) = runtime.execute(&plugin, invocation(&request)) else {
                panic!("math.add failed");
            };
            // The executor thread's one read of its CPU clock a task (`worker/executor.rs`).
            cpu.lap();
            // As the worker stores a result (`worker/report.rs`, `backend/redis.rs`).
            let value: Value = serde_json::from_str(&json).expect("result JSON");
            TaskResult::new(&request.id, State::Success, value).meta_json()
        })
    });

    let request = TaskRequest::decode(&Message::from_envelope_json(&envelope).expect("envelope")).expect("task");
    c.bench_function("fresh instance + math.add", |b| {
        b.iter(|| runtime.execute(&plugin, invocation(&request)))
    });
}

/// A trivial task per guest language: (plugin file, task, args).
const TRIVIAL: [(&str, &str, &str); 4] = [
    ("math", "math.add", "[2, 3]"),
    ("hashkit", "hashkit.crc32", "[\"a\"]"),
    ("textkit", "textkit.words", "[\"a\"]"),
    ("jsonkit", "jsonkit.echo", "[1]"),
];

fn per_language(c: &mut Criterion) {
    let runtime = Runtime::new(1, celeriac::runtime::cache::default_cache_dir()).expect("wasmtime engine");
    for (file, task, args) in TRIVIAL {
        let path = plugin_dir().join(format!("{file}.wasm"));
        let Ok(fresh) = runtime.load_file(&path) else {
            eprintln!("skipping {task}: {} is not built", path.display());
            continue;
        };
        let mut kept = (*fresh).clone();
        kept.manifest.reuse_instance = true;
        let args: Vec<Value> = serde_json::from_str(args).expect("args");
        let request = TaskRequest::new(task, args, Map::new());
        for (how, plugin) in [("fresh", &*fresh), ("reused", &kept)] {
            c.bench_function(&format!("{task} ({file}), {how} instance"), |b| {
                b.iter(|| {
                    let outcome = runtime.execute(plugin, invocation(&request));
                    assert!(matches!(outcome, Outcome::Success(_)), "{task}: {outcome:?}");
                })
            });
        }
    }
}

criterion_group!(benches, host_cost, per_language);
criterion_main!(benches);
