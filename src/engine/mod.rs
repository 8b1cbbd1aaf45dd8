//! The versioning engine: the core ([`Engine`]), the store traits and their backends.
//!
//! - [`model`]: names, versions, heads, records.
//! - [`store`]: the two narrow traits a backend implements ([`MetaStore`], [`PayloadStore`]).
//! - [`versioning`]: the write protocol and the reads, on top of any pair of stores.
//! - [`envelope`]: the self-describing JSON stored for every version.
//! - backends: [`mongo`], [`s3`], and the in-memory fakes in [`memory`].

pub mod admin;
pub mod content;
pub mod counters;
#[cfg(feature = "testing")]
pub mod decorators;
pub mod envelope;
pub mod error;
pub mod local;
pub mod memory;
pub mod merge;
pub mod model;
pub mod mongo;
pub mod namespace;
pub mod query;
pub mod queue;
pub mod restore;
pub mod retention;
pub mod s3;
pub mod scrub;
pub mod sqlite;
pub mod store;
pub mod tiering;
pub mod versioning;

pub use admin::{Check, StoreStatus};
pub use content::{ContentKind, ContentMode};
pub use counters::{CounterRule, Totals};
pub use error::{Backend, Error, Result};
pub use model::{
    Attribution, CollectionName, ItemId, Op, PayloadRef, Record, RequestKey, State, SystemFields, Timestamp,
    VersionEntry, WriteOutcome,
};
pub use namespace::{DEFAULT_DATABASE, Stores};
pub use queue::{Operation, OperationId, OperationStatus, QueueSettings, QueueStats, Submitted, WriteRequest};
pub use restore::{RestoreCounts, RestorePage};
pub use retention::{ItemPrune, PrunePolicy, PruneReport};
pub use scrub::{Orphan, ScrubOptions, ScrubReport};
pub use store::{HistoryPoint, MetaStore, PayloadStore, RefWrite};
pub use tiering::TieringReport;
pub use versioning::{
    CollectionMap, Engine, EngineSettings, Enrichment, ListOptions, ListPage, ReadOptions, VersionTarget,
};
