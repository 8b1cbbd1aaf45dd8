//! In-memory stores: fast fakes for unit tests and the reference the conformance suite is
//! checked against. Not durable; not for production.

mod meta;
mod payload;
mod queue;
mod rebuild;
mod sidecar;

pub use meta::MemoryMetaStore;
pub use payload::MemoryPayloadStore;
pub use queue::MemoryQueue;
