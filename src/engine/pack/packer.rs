//! Writes made together share one PUT: the packer of a collection writes a payload at once when
//! nothing else is being written (one PUT, at the version's own key, as ever), and gathers the
//! payloads that arrive while a PUT is under way into one pack, written as soon as that PUT ends.
//! A write alone never waits, so it keeps its latency. The members of a group commit (the store
//! says how many were opened together) are gathered from the first: the pack goes out when all
//! of them have arrived, or [`GATHER`] after the first did — so a group's payloads become one
//! object (see docs/design.md "Write packing").
//!
//! One PUT at a time would tie a collection's writes to the slowest PUT and to [`MAX_MEMBERS`]
//! per PUT's latency (640 writes/s at 100 ms). So another PUT starts, up to [`MAX_IN_FLIGHT`],
//! when a full pack is waiting, or when payloads have waited [`STRAGGLER`] times as long as PUTs
//! have been taking (an S3 server stalls a PUT now and then: SeaweedFS here for 0.2–1 s).
//!
//! Every member is told where its payload is only once the pack is stored; a failed pack PUT is
//! reported to each member, which then writes its own payload alone. A pack's key is unique per
//! pack written, so nothing ever overwrites one, and no write removes one: a member whose commit
//! fails leaves its bytes in the pack, and scrub removes a pack none of whose members is
//! referenced any more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
// Tokio's clock, so that tests can pause it.
use tokio::time::Instant;

use super::format::{self, Entry, Footer};
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, ItemId, PackSlot, payload_key};
use crate::engine::settings::PackWrites;
use crate::engine::store::PayloadStore;

/// At most this many payloads per pack.
const MAX_MEMBERS: usize = 64;
/// A pack is closed once it holds this many bytes (a member larger than this is written alone).
const MAX_PACK_BYTES: usize = 8 * 1024 * 1024;
/// How long the first payload of a group waits for the rest of its group.
const GATHER: Duration = Duration::from_millis(5);
/// At most this many PUTs of one collection's packer under way at once.
const MAX_IN_FLIGHT: usize = 8;
/// Payloads that have waited this many times as long as PUTs have recently taken get a PUT of
/// their own rather than wait longer for the one under way.
const STRAGGLER: u32 = 3;
/// Bounds of that wait, whatever PUTs have been taking.
const STRAGGLER_WAIT: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Where a payload was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// At the version's own key ([`payload_key`]).
    Own,
    /// Inside a pack.
    Packed(PackSlot),
}

/// One payload on its way to storage.
pub struct Payload<'a> {
    pub collection: &'a CollectionName,
    pub id: &'a ItemId,
    pub ov: u64,
    pub write_id: &'a str,
    pub body: Bytes,
    /// How many writes were opened together with this one (see `store::Held::together`).
    pub together: usize,
}

/// The packers of one database's collections.
#[derive(Clone)]
pub struct Packer {
    inner: Arc<Inner>,
}

struct Inner {
    database: String,
    /// Whether a payload alone goes into a pack of one (`Always`) or to its own key.
    alone_in_pack: bool,
    payloads: Arc<dyn PayloadStore>,
    lanes: Mutex<HashMap<CollectionName, Arc<LaneCell>>>,
    /// How long PUTs have recently taken, in µs (a moving average), for [`STRAGGLER`].
    put_micros: AtomicU64,
}

/// A lane, and the signal that a payload joined it (for a group's first payload, gathering).
#[derive(Default)]
struct LaneCell {
    state: Mutex<Lane>,
    joined: tokio::sync::Notify,
}

/// One collection's packer: how many PUTs are under way, and who waits for the next one.
#[derive(Default)]
struct Lane {
    in_flight: usize,
    waiting: Vec<Waiting>,
    /// Whether a task watches the waiting payloads for stragglers ([`Inner::watch`]).
    watching: bool,
}

struct Waiting {
    since: Instant,
    id: ItemId,
    ov: u64,
    write_id: String,
    body: Bytes,
    done: oneshot::Sender<Outcome>,
}

/// What the pack writer tells a waiting payload.
enum Outcome {
    Packed(PackSlot),
    /// It was the only one left: stored at its own key.
    Alone,
    /// The PUT failed (why): the payload is not stored.
    Failed(String),
}

impl Packer {
    pub fn new(database: &str, payloads: Arc<dyn PayloadStore>, mode: PackWrites) -> Self {
        Packer {
            inner: Arc::new(Inner {
                database: database.to_owned(),
                alone_in_pack: mode == PackWrites::Always,
                payloads,
                lanes: Mutex::new(HashMap::new()),
                put_micros: AtomicU64::new(10_000),
            }),
        }
    }

    /// Store `payload`: alone at its own key, or in the collection's next pack when a PUT is
    /// under way. Returns once the bytes are stored.
    pub async fn put(&self, payload: Payload<'_>) -> Result<Placement> {
        let key = payload_key(payload.collection, payload.id, payload.ov, payload.write_id);
        if payload.body.len() >= MAX_PACK_BYTES {
            self.inner.payloads.put(&key, payload.body).await?;
            return Ok(Placement::Own);
        }
        let lane = self.inner.lane(payload.collection);
        let group = payload.together.clamp(1, MAX_MEMBERS);
        let (waiting, then) = {
            let mut l = lock(&lane.state);
            if l.in_flight == 0 && group == 1 {
                l.in_flight = 1;
                (None, Then::Nothing)
            } else {
                let (done, rx) = oneshot::channel();
                l.waiting.push(Waiting {
                    since: Instant::now(),
                    id: payload.id.clone(),
                    ov: payload.ov,
                    write_id: payload.write_id.to_owned(),
                    body: payload.body.clone(),
                    done,
                });
                let then = if l.in_flight == 0 {
                    // The first of a group at an idle lane gathers the rest before packing.
                    l.in_flight = 1;
                    Then::Gather
                } else if l.waiting.len().is_multiple_of(MAX_MEMBERS) && l.in_flight < MAX_IN_FLIGHT {
                    // Another full pack is waiting: no reason to wait for the PUTs under way.
                    l.in_flight += 1;
                    Then::Drain
                } else if !l.watching {
                    l.watching = true;
                    Then::Watch
                } else {
                    Then::Nothing
                };
                (Some(rx), then)
            }
        };
        lane.joined.notify_one();
        // Cloned only for a task to start: most payloads start none.
        let task = || (self.inner.clone(), payload.collection.clone(), lane.clone());
        match then {
            Then::Gather => {
                let (inner, collection, lane) = task();
                drop(tokio::spawn(inner.gather(collection, lane, group)));
            }
            Then::Drain => {
                let (inner, collection, lane) = task();
                inner.extra_put("full");
                drop(tokio::spawn(inner.drain(collection, lane)));
            }
            Then::Watch => {
                let (inner, collection, lane) = task();
                drop(tokio::spawn(inner.watch(collection, lane)));
            }
            Then::Nothing => {}
        }
        match waiting {
            None => {
                // Whatever happens to this call (an error, or its caller going away), the payloads
                // that gathered meanwhile are written when it ends.
                let _next = HandOver {
                    inner: self.inner.clone(),
                    collection: payload.collection.clone(),
                    lane,
                };
                self.inner.store_alone(payload).await
            }
            Some(rx) => match rx.await {
                Ok(Outcome::Packed(slot)) => Ok(Placement::Packed(slot)),
                Ok(Outcome::Alone) => Ok(Placement::Own),
                // The pack was not stored: this payload is written alone, like any other.
                Ok(Outcome::Failed(e)) => {
                    tracing::debug!(error = %e, "a pack could not be stored; writing its member alone");
                    self.inner.payloads.put(&key, payload.body).await?;
                    Ok(Placement::Own)
                }
                Err(_) => Err(Error::payload("the pack writer stopped before storing the pack")),
            },
        }
    }
}

impl Inner {
    /// A payload written on its own: at its own key, or (`Always`) in a pack of one.
    async fn store_alone(&self, p: Payload<'_>) -> Result<Placement> {
        if !self.alone_in_pack {
            let key = payload_key(p.collection, p.id, p.ov, p.write_id);
            self.timed_put(&key, p.body).await?;
            self.stored(1);
            return Ok(Placement::Own);
        }
        let entry = Entry {
            id: p.id,
            ov: p.ov,
            write_id: p.write_id,
            envelope: &p.body,
        };
        let key = format::new_key(p.collection, [p.id].into_iter());
        let (body, footer) = format::encode(&self.database, p.collection, &[entry])?;
        self.timed_put(&key, body).await?;
        self.stored(1);
        let m = footer
            .members
            .first()
            .ok_or_else(|| Error::Corrupt("an empty pack".into()))?;
        Ok(Placement::Packed(Footer::slot(&key, m)))
    }

    /// For /metrics: a PUT of the packer stored `members` payloads (its sum over its count is
    /// writes per PUT).
    fn stored(&self, members: usize) {
        metrics::histogram!("chronos_pack_members", "db" => self.database.clone()).record(members as f64);
    }

    /// For /metrics: another PUT started beside those under way, and why (`full`, `straggler`).
    fn extra_put(&self, why: &'static str) {
        metrics::counter!("chronos_pack_extra_puts_total", "db" => self.database.clone(), "why" => why).increment(1);
    }

    /// A PUT, its time kept in the moving average [`Inner::watch`] measures stragglers by.
    async fn timed_put(&self, key: &str, body: Bytes) -> Result<()> {
        let started = Instant::now();
        let stored = self.payloads.put(key, body).await;
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _ = self
            .put_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(avg - avg / 8 + took / 8)
            });
        stored
    }

    fn lane(&self, collection: &CollectionName) -> Arc<LaneCell> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes.entry(collection.clone()).or_default().clone()
    }

    /// The next pack of a lane, taken from its waiting payloads; `None` (and one PUT fewer under
    /// way) when nobody waits.
    fn next_batch(lane: &LaneCell) -> Option<Vec<Waiting>> {
        let mut l = lock(&lane.state);
        if l.waiting.is_empty() {
            l.in_flight = l.in_flight.saturating_sub(1);
            return None;
        }
        let mut bytes = 0;
        let mut take = 0;
        for w in &l.waiting {
            if take == MAX_MEMBERS || (take > 0 && bytes + w.body.len() > MAX_PACK_BYTES) {
                break;
            }
            bytes += w.body.len();
            take += 1;
        }
        Some(l.waiting.drain(..take).collect())
    }

    /// Wait until `group` payloads have joined the lane (or [`GATHER`] has passed), then pack.
    async fn gather(self: Arc<Self>, collection: CollectionName, lane: Arc<LaneCell>, group: usize) {
        let deadline = tokio::time::Instant::now() + GATHER;
        loop {
            let joined = lane.joined.notified();
            if lock(&lane.state).waiting.len() >= group {
                break;
            }
            if tokio::time::timeout_at(deadline, joined).await.is_err() {
                break;
            }
        }
        self.drain(collection, lane).await;
    }

    /// While payloads wait behind the PUTs under way: any that has waited [`STRAGGLER`] times as
    /// long as PUTs take gets a PUT of its own (checked every such wait, so none waits twice that).
    async fn watch(self: Arc<Self>, collection: CollectionName, lane: Arc<LaneCell>) {
        loop {
            let usual = Duration::from_micros(self.put_micros.load(Ordering::Relaxed));
            let patience = usual
                .saturating_mul(STRAGGLER)
                .clamp(STRAGGLER_WAIT.0, STRAGGLER_WAIT.1);
            tokio::time::sleep(patience).await;
            {
                let mut l = lock(&lane.state);
                let Some(first) = l.waiting.first() else {
                    l.watching = false;
                    return;
                };
                if first.since.elapsed() < patience || l.in_flight >= MAX_IN_FLIGHT {
                    continue;
                }
                l.in_flight += 1;
            }
            self.extra_put("straggler");
            tokio::spawn(self.clone().drain(collection.clone(), lane.clone()));
        }
    }

    /// Write the lane's waiting payloads, pack after pack, until none wait.
    async fn drain(self: Arc<Self>, collection: CollectionName, lane: Arc<LaneCell>) {
        while let Some(batch) = Self::next_batch(&lane) {
            self.write_pack(&collection, batch).await;
        }
    }

    async fn write_pack(&self, collection: &CollectionName, batch: Vec<Waiting>) {
        // A caller that went away needs no bytes stored.
        let batch: Vec<Waiting> = batch.into_iter().filter(|w| !w.done.is_closed()).collect();
        if let [one] = &batch[..] {
            // Alone after all.
            let alone = Payload {
                collection,
                id: &one.id,
                ov: one.ov,
                write_id: &one.write_id,
                body: one.body.clone(),
                together: 1,
            };
            let outcome = match self.store_alone(alone).await {
                Ok(Placement::Own) => Outcome::Alone,
                Ok(Placement::Packed(slot)) => Outcome::Packed(slot),
                Err(e) => Outcome::Failed(e.to_string()),
            };
            if let Some(w) = batch.into_iter().next() {
                let _ = w.done.send(outcome);
            }
            return;
        }
        if batch.is_empty() {
            return;
        }
        let key = format::new_key(collection, batch.iter().map(|w| &w.id));
        let entries: Vec<Entry<'_>> = batch
            .iter()
            .map(|w| Entry {
                id: &w.id,
                ov: w.ov,
                write_id: &w.write_id,
                envelope: &w.body,
            })
            .collect();
        let stored = match format::encode(&self.database, collection, &entries) {
            Ok((body, footer)) => self.timed_put(&key, body).await.map(|()| footer),
            Err(e) => Err(e),
        };
        match stored {
            Ok(footer) => {
                self.stored(batch.len());
                for (w, m) in batch.into_iter().zip(&footer.members) {
                    let _ = w.done.send(Outcome::Packed(Footer::slot(&key, m)));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for w in batch {
                    let _ = w.done.send(Outcome::Failed(why.clone()));
                }
            }
        }
    }
}

/// Hands a lane's waiting payloads to a task that packs them, when the PUT that made them wait
/// ends (or its caller goes away).
struct HandOver {
    inner: Arc<Inner>,
    collection: CollectionName,
    lane: Arc<LaneCell>,
}

impl Drop for HandOver {
    fn drop(&mut self) {
        let (inner, collection, lane) = (self.inner.clone(), self.collection.clone(), self.lane.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(inner.drain(collection, lane));
            }
            // No runtime (the process is ending): nobody is left to wait.
            Err(_) => {
                let mut l = lock(&lane.state);
                (l.in_flight, l.watching) = (0, false);
            }
        }
    }
}

/// What a payload that joined a lane sets going.
enum Then {
    Nothing,
    /// Gather the rest of its group, then pack.
    Gather,
    /// Another PUT, now.
    Drain,
    /// Another PUT, if it waits too long.
    Watch,
}

fn lock(lane: &Mutex<Lane>) -> MutexGuard<'_, Lane> {
    lane.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::backends::MemoryPayloadStore;
    use crate::engine::store::decorators::{Counting, Faults, Faulty, RequestCounter};

    /// On a paused clock: without the full-pack rule the 64 would go out only when the straggler
    /// watch gives up waiting (a second of this clock), not at once.
    #[tokio::test(start_paused = true)]
    async fn a_full_pack_waiting_behind_a_put_goes_out_at_once() {
        let started = Instant::now();
        // A paused clock runs every task on this thread: the recorder sees what they record.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let _recording = metrics::set_default_local_recorder(&recorder);
        // The lone first payload's PUT (its own key, "c/item-0/…") waits until released.
        let faults = Arc::new(Faults::default());
        faults.hold_puts_containing.lock().unwrap().push("/item-0/".into());
        let puts = Arc::new(RequestCounter::default());
        let memory = Arc::new(MemoryPayloadStore::new());
        let store = Arc::new(Counting::new(
            Arc::new(Faulty::new(memory, faults.clone())),
            puts.clone(),
        ));
        let packer = Packer::new("db", store, PackWrites::Together);
        // No straggler watch within this test: PUTs "take" far longer than it runs.
        packer.inner.put_micros.store(u64::MAX / 4, Ordering::Relaxed);
        let c: CollectionName = "c".parse().unwrap();
        let put = |n: usize| {
            let (packer, c) = (packer.clone(), c.clone());
            tokio::spawn(async move {
                let id: ItemId = format!("item-{n}").parse().unwrap();
                let payload = Payload {
                    collection: &c,
                    id: &id,
                    ov: 0,
                    write_id: "w",
                    body: Bytes::from(format!("{{\"n\":{n}}}")),
                    together: 1,
                };
                packer.put(payload).await
            })
        };
        let lone = put(0);
        faults.until_holding(1).await;
        let behind: Vec<_> = (1..=MAX_MEMBERS).map(put).collect();
        // The 64 behind the held PUT fill a pack, which is written while that PUT still waits.
        for w in behind {
            let stored = tokio::time::timeout(Duration::from_secs(20), w).await;
            let stored = stored.expect("the full pack is written without waiting for the held PUT");
            assert!(matches!(stored.unwrap().unwrap(), Placement::Packed(_)));
        }
        assert!(
            started.elapsed() < STRAGGLER_WAIT.1,
            "written at once, not by the watch"
        );
        // Counted when they end: the pack so far, the held PUT once released.
        assert_eq!(puts.snapshot().0, 1, "the pack, while the first PUT is held");
        assert!(!lone.is_finished());
        faults.release_one();
        assert_eq!(lone.await.unwrap().unwrap(), Placement::Own);
        let text = metrics.render();
        for series in [
            "chronos_pack_extra_puts_total{db=\"db\",why=\"full\"} 1",
            "chronos_pack_members_sum{db=\"db\"} 65",
            "chronos_pack_members_count{db=\"db\"} 2",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
    }
}
