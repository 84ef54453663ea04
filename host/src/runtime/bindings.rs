//! Host-side bindings generated from `wit/celeriac.wit` (synchronous calls: each guest
//! runs on its own executor thread, see `worker::executor`).

wasmtime::component::bindgen!({
    path: "../wit/celeriac.wit",
    world: "plugin",
});

pub use self::celeriac::task::types::{Failure, LogLevel, RetryRequest, TaskContext, TaskError, TaskInfo};

/// The WIT package this host speaks; a plugin must export `celeriac:task/handler` at a
/// semver-compatible version.
pub const WIT_PACKAGE: &str = "celeriac:task";
pub const WIT_VERSION: &str = "0.1.0";
pub const HANDLER_INTERFACE: &str = "celeriac:task/handler";
