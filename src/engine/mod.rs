//! The versioning engine: the core ([`Engine`]), the store contracts and their backends.
//!
//! Bottom up:
//! - [`model`], [`error`], [`query`], [`settings`]: names and records, errors, the filter
//!   subset, and the settings (shared with the configuration and the operator).
//! - [`store`]: the contracts a backend implements ([`PayloadStore`]; [`MetaStore`] as
//!   [`MetaWrite`], [`MetaRead`], [`MetaRestore`], [`MetaUpkeep`], a rebuild's loads and side
//!   records; the retry queue's store) and the rules every store follows alike.
//! - [`backends`]: MongoDB, S3, SQLite, local files, and the in-memory fakes.
//! - [`ledger`], [`envelope`], [`sealed`]: what the buckets hold about each version (the ledger of
//!   committed versions, the envelope of each version's object, sealed data of encrypted items).
//! - [`versioning`]: the [`Engine`]: the write protocol and the reads, on any set of stores.
//! - Features that call down into it: [`restore`], [`retention`], [`tiering`], [`counters`],
//!   [`content`], [`scrub`], [`admin`], [`retry`] (the retry queue), [`namespace`] (a database's
//!   key prefix in shared buckets), [`rebuild`] (the metadata from the buckets, verify, proofs),
//!   [`feed`] (the change feed), [`erase`] (erasure across all versions), [`hold`] (legal and
//!   retention holds), [`shred`] (data keys of encrypted items).

pub mod admin;
pub mod backends;
pub mod content;
pub mod counters;
pub mod envelope;
pub mod erase;
pub mod error;
pub mod feed;
pub mod hold;
pub mod ledger;
pub mod merge;
pub mod model;
pub mod namespace;
pub mod pack;
pub mod query;
pub mod rebuild;
pub mod restore;
pub mod retention;
pub mod retry;
pub mod scrub;
pub mod sealed;
pub mod settings;
pub mod shred;
pub mod store;
pub mod tiering;
pub mod versioning;

pub use admin::{Check, StoreStatus};
pub use counters::Totals;
pub use erase::{EraseRequest, EraseTarget};
pub use error::{Backend, BoxError, Error, Failure, Result};
pub use feed::{ChangeFilter, ChangesPage, Subscription};
pub use hold::LegalHold;
pub use ledger::erasures::{ErasedItem, ErasedVersion, Erasure, ErasureStatus};
pub use model::{
    Attribution, CollectionName, DEFAULT_DATABASE, Enrichment, ItemId, Op, PackSlot, PayloadLoc, PayloadRef, Record,
    RequestKey, State, SystemFields, Timestamp, VersionEntry, VersionTarget, WriteOutcome,
};
pub use namespace::Stores;
pub use restore::{RestoreCounts, RestorePage};
pub use retention::{ItemPrune, PrunePolicy, PruneReport};
pub use retry::Submitted;
pub use scrub::{Orphan, ScrubOptions, ScrubReport};
pub use settings::{
    CollectionMap, ContentKind, ContentMode, CounterRule, Encryption, EngineSettings, HoldRule, LockMode, QueueSettings,
};
pub use store::queue::{Operation, OperationId, OperationStatus, QueueStats, WriteRequest};
pub use store::{
    HistoryPoint, HistoryStart, MetaRead, MetaRestore, MetaStore, MetaUpkeep, MetaWrite, PayloadStore, RefWrite,
};
pub use tiering::TieringReport;
pub use versioning::{Engine, ListOptions, ListPage, ReadOptions, RecordText};
