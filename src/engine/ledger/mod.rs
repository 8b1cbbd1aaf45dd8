//! The ledger: what makes the payload bucket self-describing, so the metadata store is an index
//! that can be rebuilt from the buckets alone (`engine::rebuild`), and a history whose changes
//! show (`engine::rebuild::verify`).
//!
//! - [`record`]: a committed version as the ledger and its envelope describe it, with the link
//!   to the item's previous version and its digest.
//! - [`segment`]: the objects the ledger is made of: one per engine process, collection and flush,
//!   with the Merkle root of their records and a chain per writer.
//! - [`writer`]: how an engine process collects what it committed and writes segments.
//! - [`resets`]: counter resets, which only the metadata store knew.
//! - [`erasures`]: erasure records, and the denylist of erased items they make.

pub mod erasures;
pub mod record;
pub mod resets;
pub mod segment;
pub mod writer;

pub use record::{LedgerRecord, PrevLink};
pub use segment::{LEDGER_PREFIX, Redacted, Segment, SegmentKey, SegmentRecord};
pub use writer::Ledger;
