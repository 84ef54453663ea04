//! The one wasmtime `Engine` of the process, its `Linker`, and the epoch ticker.
//!
//! Settings follow research/wasm-host.md §6: pooling allocator with keep-resident memory
//! and `pagemap_scan` (a fresh instance costs ~10 µs), copy-on-write images, epoch
//! interruption for wall-clock limits, and `concurrency_support(false)` (WASIp2 guests
//! do not need it and it doubles the per-task cost).

use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::Plugin;
use super::state::TaskState;
use super::RuntimeError;

/// How often the epoch advances: the resolution of time limits and terminate.
pub const TICK: Duration = Duration::from_millis(10);

/// Largest linear memory any plugin may have; per-plugin caps sit below it.
pub const ENGINE_MEMORY_CEILING: usize = 4 << 30;

fn base_config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.concurrency_support(false);
    config.memory_init_cow(true);
    config.wasm_backtrace_details(if std::env::var_os("CELERIAC_WASM_DEBUG").is_some() {
        wasmtime::WasmBacktraceDetails::Enable
    } else {
        wasmtime::WasmBacktraceDetails::Disable
    });
    config
}

fn pooling(slots: usize) -> PoolingAllocationConfig {
    // Each running task holds one instance; loading and checking plugins take a few more.
    let instances = (slots * 2 + 8).max(64) as u32;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances * 16)
        .max_core_instances_per_component(32)
        .total_memories(instances * 2)
        .total_tables(instances * 4)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .table_elements(100_000)
        .max_component_instance_size(10 << 20)
        .max_core_instance_size(10 << 20)
        .max_memory_size(ENGINE_MEMORY_CEILING)
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(256 << 10)
        .pagemap_scan(Enabled::Auto);
    pool
}

/// Build the engine: pooled if the machine allows it, on-demand otherwise.
pub fn build_engine(slots: usize) -> Result<Engine, RuntimeError> {
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(slots)));
    match Engine::new(&config) {
        Ok(engine) => Ok(engine),
        Err(err) => {
            // Pooling reserves a lot of address space; some machines (ulimit -v, 39-bit
            // address spaces) refuse it. On-demand allocation is slower but works.
            tracing::warn!(error = %err, "pooling allocator unavailable, using on-demand allocation");
            Engine::new(&base_config()).map_err(|e| RuntimeError::Engine(e.to_string()))
        }
    }
}

/// WASI preview 2 (everything denied unless a manifest grants it) and the host interface.
pub fn build_linker(engine: &Engine) -> Result<Linker<TaskState>, RuntimeError> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| RuntimeError::Engine(e.to_string()))?;
    Plugin::add_to_linker::<TaskState, HasSelf<TaskState>>(&mut linker, |state| state)
        .map_err(|e| RuntimeError::Engine(e.to_string()))?;
    Ok(linker)
}

/// Advance the epoch every [`TICK`] for as long as the engine lives.
pub fn start_ticker(engine: &Engine) -> Result<(), RuntimeError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("celeriac-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .map(|_| ())
        .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))
}
