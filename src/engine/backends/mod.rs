//! The backends: each implements the store contracts (`engine::store`) and knows nothing above
//! them. One folder per metadata backend, holding its metadata store and its queue; one file per
//! payload backend. The wiring that picks them from the configuration is `crate::connect`.

pub mod local;
pub mod memory;
pub mod mongo;
pub mod s3;
mod s3_error;
mod s3_lock;
pub mod sqlite;

pub use local::LocalPayloadStore;
pub use memory::{MemoryMetaStore, MemoryPayloadStore, MemoryQueue};
pub use mongo::MongoMetaStore;
pub use mongo::queue::MongoQueue;
pub use s3::{S3Connection, S3PayloadStore};
pub use sqlite::SqliteMetaStore;
pub use sqlite::queue::SqliteQueue;
