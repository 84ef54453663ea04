//! Celery's wire formats: task messages (protocol v2, and v1 on decode), the kombu
//! envelope used by virtual transports, result meta and exception encoding.
//! `../shared/research/celery-wire.md` is the field-level reference.

pub mod amqp_table;
mod body;
pub mod envelope;
pub mod headers;
mod lenient;
pub mod repr;
pub mod result;
pub mod task;
pub mod time;

pub use envelope::{DeliveryInfo, Message, Properties};
pub use headers::Headers;
pub use result::{ExceptionInfo, State, TaskResult};
pub use task::{Embed, ProtocolError, TaskRequest};
