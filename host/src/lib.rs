//! Celeriac: a native worker host for Celery task queues that runs each task inside a
//! sandboxed WebAssembly component. See DESIGN.md for the map; the flow of one task is
//!
//! broker ─Delivery→ protocol::decode ─TaskRequest→ worker ─→ runtime::execute ─Outcome→ backend
//!
//! and each arrow is a plain value defined in the module named at its head.

pub mod backend;
pub mod batch;
pub mod broker;
pub mod cli;
pub mod config;
pub mod cpu_time;
pub mod http;
pub mod metrics;
pub use celeriac_protocol as protocol;
pub mod runtime;
pub mod telemetry;
pub mod worker;
