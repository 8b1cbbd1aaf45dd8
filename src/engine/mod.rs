//! The versioning engine: the core ([`Engine`]), the store traits and their backends.
//!
//! - [`model`]: names, versions, heads, records.
//! - [`store`]: the two narrow traits a backend implements ([`MetaStore`], [`PayloadStore`]).
//! - [`versioning`]: the write protocol and the reads, on top of any pair of stores.
//! - [`envelope`]: the self-describing JSON stored for every version.
//! - [`backends`]: MongoDB, S3, SQLite, local files, and the in-memory fakes.

pub mod admin;
pub mod backends;
pub mod content;
pub mod counters;
pub mod envelope;
pub mod error;
pub mod merge;
pub mod model;
pub mod namespace;
pub mod query;
pub mod restore;
pub mod retention;
pub mod retry;
pub mod scrub;
pub mod settings;
pub mod store;
pub mod tiering;
pub mod versioning;

pub use admin::{Check, StoreStatus};
pub use counters::Totals;
pub use error::{Backend, Error, Result};
pub use model::{
    Attribution, CollectionName, DEFAULT_DATABASE, Enrichment, ItemId, Op, PayloadRef, Record, RequestKey, State,
    SystemFields, Timestamp, VersionEntry, VersionTarget, WriteOutcome,
};
pub use namespace::Stores;
pub use restore::{RestoreCounts, RestorePage};
pub use retention::{ItemPrune, PrunePolicy, PruneReport};
pub use retry::Submitted;
pub use scrub::{Orphan, ScrubOptions, ScrubReport};
pub use settings::{CollectionMap, ContentKind, ContentMode, CounterRule, EngineSettings, QueueSettings};
pub use store::queue::{Operation, OperationId, OperationStatus, QueueStats, WriteRequest};
pub use store::{HistoryPoint, MetaRead, MetaRestore, MetaStore, MetaUpkeep, MetaWrite, PayloadStore, RefWrite};
pub use tiering::TieringReport;
pub use versioning::{Engine, ListOptions, ListPage, ReadOptions};
