//! The ledger writer: each engine process collects the versions it committed and writes them as
//! one segment per collection per flush interval (default 1 s) — one PUT per collection per
//! second of writing, however many writes, instead of one more PUT per write.
//!
//! Records are taken only after the commit, so a segment never names a version that did not
//! commit. What it costs: the versions committed in the last interval before a process dies are
//! not in any segment; a rebuild still finds those that a later version names as its predecessor,
//! and reports the rest as unconfirmed (see `docs/design.md`, "Rebuilding from the buckets").
//! A segment whose PUT fails is kept, unchanged, and PUT again at the next flush, so the writer's
//! chain of segments has no hole.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;

use super::record::LedgerRecord;
use super::segment::Segment;
use crate::engine::error::Result;
use crate::engine::model::CollectionName;
use crate::engine::store::PayloadStore;

/// Records waiting beyond this many make the writer flush at once instead of at the interval.
const FLUSH_AT_RECORDS: usize = 10_000;

/// The engine's ledger writer (see the module doc). Cheap to hold; the background flush task
/// starts with the first record and ends when the ledger is dropped.
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    database: String,
    store: Arc<dyn PayloadStore>,
    /// This process's writer id (UUIDv7, so segment keys sort by process start).
    writer: String,
    interval: Duration,
    state: Mutex<State>,
    wake: Arc<Notify>,
    /// One flush at a time, so segments go out in their chain's order.
    flushing: tokio::sync::Mutex<()>,
    /// The copy a dropped ledger leaves to send its last records: it tries once.
    last: bool,
}

#[derive(Default)]
struct State {
    pending: BTreeMap<CollectionName, Vec<LedgerRecord>>,
    pending_count: usize,
    /// Per collection: the next segment's number and the hash of the previous segment.
    chains: BTreeMap<CollectionName, (u64, Option<String>)>,
    /// Segments built but not stored yet (a failed PUT), in chain order.
    unsent: Vec<(String, Bytes)>,
    task_started: bool,
}

impl Ledger {
    pub fn new(database: &str, store: Arc<dyn PayloadStore>, interval: Duration) -> Self {
        Ledger {
            inner: Arc::new(Inner {
                database: database.to_owned(),
                store,
                writer: uuid::Uuid::now_v7().simple().to_string(),
                interval,
                state: Mutex::new(State::default()),
                wake: Arc::new(Notify::new()),
                flushing: tokio::sync::Mutex::new(()),
                last: false,
            }),
        }
    }

    /// Note committed versions of `collection`; they are written with the next flush.
    pub fn record(&self, collection: &CollectionName, records: impl IntoIterator<Item = LedgerRecord>) {
        let (start, wake) = {
            let mut st = self.inner.lock();
            let was_empty = st.pending_count == 0;
            let list = st.pending.entry(collection.clone()).or_default();
            let before = list.len();
            list.extend(records);
            let added = list.len() - before;
            st.pending_count += added;
            let start = !st.task_started && added > 0;
            st.task_started |= start;
            // The task sleeps until records arrive, then gathers for its interval — unless the
            // buffer fills first.
            (start, (was_empty && added > 0) || st.pending_count >= FLUSH_AT_RECORDS)
        };
        if start {
            self.start_task();
        }
        if wake {
            self.inner.wake.notify_one();
        }
    }

    /// Write every record noted so far, now. The engine calls it at shutdown; a rebuild of a
    /// store this process wrote needs it first.
    pub async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    fn start_task(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let wake = self.inner.wake.clone();
        let interval = self.inner.interval;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            loop {
                wake.notified().await;
                // Let the interval's records gather (unless a full buffer asks for more haste).
                let gather = tokio::time::sleep(interval);
                tokio::pin!(gather);
                loop {
                    tokio::select! {
                        () = &mut gather => break,
                        () = wake.notified() => {
                            let Some(inner) = weak.upgrade() else { return };
                            if inner.lock().pending_count >= FLUSH_AT_RECORDS {
                                break;
                            }
                        }
                    }
                }
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = inner.flush().await {
                    tracing::warn!(error = %e, "could not write a ledger segment; it is kept and written again");
                }
            }
        });
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seal what is pending into segments (advancing each collection's chain) and take them, with
    /// any left unsent.
    fn seal(&self) -> Result<Vec<(String, Bytes)>> {
        let mut st = self.lock();
        let pending = std::mem::take(&mut st.pending);
        st.pending_count = 0;
        let mut out = std::mem::take(&mut st.unsent);
        for (collection, records) in pending {
            if records.is_empty() {
                continue;
            }
            let (seq, prev) = st.chains.get(&collection).cloned().unwrap_or((0, None));
            let segment = Segment::new(&self.database, &collection, &self.writer, seq, prev, records);
            let bytes = segment.encode()?;
            st.chains.insert(collection, (seq + 1, Some(segment.seal())));
            out.push((segment.key().key(), Bytes::from(bytes)));
        }
        Ok(out)
    }

    async fn flush(&self) -> Result<()> {
        let _one = self.flushing.lock().await;
        let segments = self.seal()?;
        if segments.is_empty() {
            return Ok(());
        }
        let store = &self.store;
        let results: Vec<((String, Bytes), Result<()>)> = futures::stream::iter(segments)
            .map(|(key, body)| async move {
                let r = store.put(&key, body.clone()).await;
                ((key, body), r)
            })
            .buffered(8)
            .collect()
            .await;
        let mut first_error = None;
        let mut failed = Vec::new();
        for (segment, r) in results {
            if let Err(e) = r {
                failed.push(segment);
                first_error.get_or_insert(e);
            }
        }
        if !failed.is_empty() {
            let mut st = self.lock();
            failed.append(&mut st.unsent);
            st.unsent = failed;
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Wake the task so it sees the ledger is gone and ends.
        self.wake.notify_one();
        // Records still pending go out on their own, when a runtime is there to send them.
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if self.last || (st.pending_count == 0 && st.unsent.is_empty()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let orphan = Inner {
            database: self.database.clone(),
            store: self.store.clone(),
            writer: self.writer.clone(),
            interval: self.interval,
            state: Mutex::new(std::mem::take(st)),
            wake: Arc::new(Notify::new()),
            flushing: tokio::sync::Mutex::new(()),
            last: true,
        };
        runtime.spawn(async move {
            if let Err(e) = orphan.flush().await {
                tracing::warn!(error = %e, "could not write the last ledger segments of a closed engine");
            }
        });
    }
}
