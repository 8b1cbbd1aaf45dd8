//! Group commit: concurrent single writes to one collection share their MongoDB round trips.
//!
//! Writes that arrive while the collection's previous group is being opened wait in the
//! collection's *lane*; the lane's worker then opens them together as one group: one `$inc`
//! takes their cvs, one transaction holds all their heads (a `find` of the heads and one
//! `update` command with a statement per item, or one `insert` of all heads for creates), each
//! write uploads its own payload while its item is held, and once every member has committed
//! or given up, one `insert` of all version entries and one `commitTransaction` make them
//! visible together. A group of `k` costs 5 commands (creates: 4) instead of `4·k`.
//!
//! Nothing about a write's guarantees changes: each member holds its item in the group's
//! transaction exactly as a lone write holds it in its own (same filter, same precondition, same
//! `WriteConflict` for contenders, same fencing by the commit), and is acknowledged only after
//! that transaction committed with write concern majority. A member that gives up (its PUT
//! failed, its caller went away) has its head put back inside the transaction, so the others
//! still commit. Anything unusual — a precondition that fails, a stale cv, another transaction
//! holding one of the items, a duplicate id — sends the member (or the whole group) back to the
//! lone-write protocol, which knows how to report or retry it: the group path only ever takes
//! the case where everything is as expected.
//!
//! A write arriving at an idle lane is opened at once, alone: group commit costs a lone write
//! nothing, and groups form by themselves while the lane is busy. A member whose PUT is much
//! slower than the rest's is left behind (its head put back) and commits on its own later, so
//! one slow upload does not hold up its group.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bson::{Bson, RawDocumentBuf, doc};
use futures::TryStreamExt;
use tokio::sync::{Notify, oneshot, watch};

use super::docs::{head_from_raw, head_update, packed_head_update, version_doc};
use super::{MongoMetaStore, code, is_transient, lock, map_err};
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, Head, Op, Timestamp, VersionEntry};
use crate::engine::store::{CommitError, HeadChange, Held, PendingWrite, in_time};

/// At most this many writes share one transaction.
const MAX_GROUP: usize = 64;

/// Whether a write can join a group: creates, updates (enrichments among them: they arrive with
/// their merged data) and deletes.
pub(super) fn groupable(change: &HeadChange) -> bool {
    match change.op {
        Op::Create | Op::Update => change.data.is_some(),
        Op::Delete => true,
        Op::Restore | Op::Erased => false,
    }
}

/// What a lane answers a write that joined it.
pub(super) enum Answer {
    /// The write holds its item, or failed for good.
    Held(Result<Box<Held>>),
    /// Run the lone-write protocol from the start: something needs its retries or its diagnosis.
    Alone,
}

struct Request {
    change: HeadChange,
    reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Request>,
    /// Whether a worker is draining this lane.
    draining: bool,
}

/// The lanes of one metadata store: one per collection written to.
#[derive(Default)]
pub(super) struct Lanes {
    lanes: Mutex<HashMap<CollectionName, Arc<Mutex<Queue>>>>,
}

impl Lanes {
    /// Queue a write on its collection's lane, starting the lane's worker if it is idle.
    pub(super) async fn join(&self, store: &MongoMetaStore, change: &HeadChange) -> Answer {
        let lane = lock(&self.lanes).entry(change.collection.clone()).or_default().clone();
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut q = lock(&lane);
            q.waiting.push_back(Request {
                change: change.clone(),
                reply,
            });
            !std::mem::replace(&mut q.draining, true)
        };
        if start {
            tokio::spawn(drain(store.clone(), lane));
        }
        // The worker answers every request it takes; if it died, the write goes alone.
        answer.await.unwrap_or(Answer::Alone)
    }
}

/// Open groups until the lane is empty. Each round takes every waiting write (up to
/// [`MAX_GROUP`]) but one per item and one per idempotency key: a second write of an item, or
/// with a key already in the round, waits for the next round. So the members of a group never
/// clash with each other: a key that clashes in its version `insert` was taken by a write
/// outside the group.
async fn drain(store: MongoMetaStore, lane: Arc<Mutex<Queue>>) {
    loop {
        let batch = {
            let mut q = lock(&lane);
            if q.waiting.is_empty() {
                q.draining = false;
                return;
            }
            let mut ids = HashSet::new();
            let mut keys = HashSet::new();
            let mut batch = Vec::new();
            let mut later = VecDeque::new();
            while let Some(r) = q.waiting.pop_front() {
                let distinct =
                    !ids.contains(&r.change.id) && r.change.request_key.as_ref().is_none_or(|k| !keys.contains(k));
                if batch.len() < MAX_GROUP && distinct {
                    ids.insert(r.change.id.clone());
                    keys.extend(r.change.request_key.clone());
                    batch.push(r);
                } else {
                    later.push_back(r);
                }
            }
            q.waiting = later;
            batch
        };
        let (creates, changes): (Vec<_>, Vec<_>) = batch.into_iter().partition(|r| r.change.op == Op::Create);
        futures::join!(store.open_group(creates), store.open_group(changes));
    }
}

impl MongoMetaStore {
    /// Open one group of writes of the same kind (creates, or changes of existing items).
    async fn open_group(&self, mut requests: Vec<Request>) {
        match requests.len() {
            0 => {}
            1 => {
                let Some(r) = requests.pop() else { return };
                let answer = self.first_attempt(&r.change).await;
                let _ = r.reply.send(answer);
            }
            _ => {
                let (changes, replies): (Vec<_>, Vec<_>) = requests.into_iter().map(|r| (r.change, r.reply)).unzip();
                let answers = match self.hold_group(changes).await {
                    Some(answers) => answers,
                    None => replies.iter().map(|_| Answer::Alone).collect(),
                };
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            }
        }
    }

    /// Take cvs for the group, open its transaction and hold every member's head. The answers
    /// are in the order of `changes`; `None` when the group could not form (all go alone).
    async fn hold_group(&self, changes: Vec<HeadChange>) -> Option<Vec<Answer>> {
        let c = changes[0].collection.clone();
        let last = self.take_cvs(&c, changes.len() as u64).await.ok()?;
        let first = last + 1 - changes.len() as u64;
        let mut session = self.start().await.ok()?;
        let heads = self.heads(&c);
        let mut members = Vec::new();
        let mut answers: Vec<Option<Answer>> = Vec::new();
        if changes[0].op == Op::Create {
            let mut docs = Vec::new();
            for (cv, change) in (first..).zip(&changes) {
                match super::docs::create_head(change, cv) {
                    Ok(d) => docs.push(d),
                    Err(_) => {
                        let _ = session.abort_transaction().await;
                        return None;
                    }
                }
            }
            // A taken id aborts the whole insert: the lone protocol tells which one it was.
            if heads.insert_many(docs).session(&mut session).await.is_err() {
                let _ = session.abort_transaction().await;
                return None;
            }
            for (cv, change) in (first..).zip(changes) {
                members.push(Member::new(change, cv, None, Revert::Remove));
                answers.push(None);
            }
        } else {
            let ids: Vec<&str> = changes.iter().map(|c| c.id.as_str()).collect();
            // The transaction's snapshot: every member's head before the group changes it.
            let raw_heads = self.raw_heads(&c);
            let found: std::result::Result<Vec<RawDocumentBuf>, _> =
                match raw_heads.find(doc! {"_id": {"$in": ids}}).session(&mut session).await {
                    Ok(mut cursor) => cursor.stream(&mut session).try_collect().await,
                    Err(e) => Err(e),
                };
            let Ok(found) = found else {
                let _ = session.abort_transaction().await;
                return None;
            };
            let mut before: HashMap<String, RawDocumentBuf> = found
                .into_iter()
                .filter_map(|d| Some((d.get_str("_id").ok()?.to_owned(), d)))
                .collect();
            let mut statements = Vec::new();
            for (cv, change) in (first..).zip(changes) {
                let previous = before
                    .remove(change.id.as_str())
                    .and_then(|d| head_from_raw(&change.id, &d).ok().map(|h| (h, d)));
                match previous {
                    // Exactly the lone protocol's filter: the snapshot says it matches, so the
                    // statement either matches or meets a `WriteConflict`.
                    Some((h, d))
                        if crate::engine::store::rules::check_precondition(&change, Some(&h)).is_ok() && h.cv < cv =>
                    {
                        let (q, u) = head_update(&change, cv);
                        statements.push(doc! {"q": q, "u": u});
                        members.push(Member::new(change, cv, Some(h), Revert::Restore(d)));
                        answers.push(None);
                    }
                    // Missing, deleted, stale ov or cv: the lone protocol reports or retries it.
                    _ => answers.push(Some(Answer::Alone)),
                }
            }
            if !statements.is_empty() {
                let expected = statements.len() as i64;
                let reply = self
                    .db
                    .run_command(doc! {"update": format!("{c}_head"), "updates": statements, "ordered": true})
                    .session(&mut session)
                    .await;
                let held = matches!(&reply, Ok(r) if r.get_array("writeErrors").is_err()
                    && matches!(r.get("n"), Some(Bson::Int32(n)) if i64::from(*n) == expected));
                if !held {
                    let _ = session.abort_transaction().await;
                    return None;
                }
            }
        }
        if members.is_empty() {
            let _ = session.abort_transaction().await;
            return Some(answers.into_iter().flatten().collect());
        }
        let group = Arc::new(Group {
            slots: Mutex::new(members.iter().map(|_| Slot::Waiting).collect()),
            changed: Notify::new(),
            ended: watch::Sender::new(false),
        });
        let mut reverts = Vec::new();
        let mut pending = Vec::new();
        let together = members.len();
        for (slot, m) in members.into_iter().enumerate() {
            reverts.push((m.revert, m.change.id.clone(), m.change.commit_by));
            pending.push(Held {
                previous: m.previous.clone(),
                ov: m.ov,
                cv: m.cv,
                together,
                write: Box::new(GroupMember {
                    previous: m.previous,
                    ov: m.ov,
                    cv: m.cv,
                    group: group.clone(),
                    slot,
                    store: self.clone(),
                    change: m.change,
                }),
            });
        }
        tokio::spawn(settle(self.clone(), c, session, group, reverts));
        // Members were taken in order, so each placeholder gets its own member.
        let mut pending = pending.into_iter();
        Some(
            answers
                .into_iter()
                .map(|a| a.unwrap_or_else(|| Answer::Held(pending.next().map(Box::new).ok_or_else(group_broken))))
                .collect(),
        )
    }
}

fn group_broken() -> Error {
    Error::metadata("a write group lost track of a member")
}

/// How to take a member's head change back when it gives up.
enum Revert {
    /// Put the head back as it was (the transaction's snapshot of it).
    Restore(RawDocumentBuf),
    /// Remove the head a create inserted.
    Remove,
}

struct Member {
    change: HeadChange,
    previous: Option<Head>,
    ov: u64,
    cv: u64,
    revert: Revert,
}

impl Member {
    fn new(change: HeadChange, cv: u64, previous: Option<Head>, revert: Revert) -> Self {
        let ov = match (&previous, change.expected_ov) {
            (Some(h), _) => h.ov + 1,
            (None, Some(expected)) => expected + 1,
            (None, None) => 0,
        };
        Member {
            change,
            previous,
            ov,
            cv,
            revert,
        }
    }
}

/// Where each member of a group stands; shared by the members and the task that settles them.
struct Group {
    slots: Mutex<Vec<Slot>>,
    /// Signalled whenever a member settles.
    changed: Notify,
    /// Becomes true when the group's transaction has ended (committed or not).
    ended: watch::Sender<bool>,
}

/// Marks a group ended when its settling ends, however it ends.
struct Ended(Arc<Group>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.ended.send_replace(true);
    }
}

enum Slot {
    /// Still building or uploading its payload.
    Waiting,
    /// Ready: its version entry, and where to tell it how the commit went.
    Commit(Box<VersionEntry>, oneshot::Sender<Result<(), CommitError>>),
    /// Gave up (failed, or its caller went away): its head is put back.
    GaveUp,
    /// Too slow: the group committed without it and put its head back. It holds its item again
    /// on its own when it is ready.
    Left,
}

/// A group waits for a straggler until twice the time its first half took, plus this.
const STRAGGLER_GRACE: Duration = Duration::from_millis(5);

/// One write of a group, as the engine sees it: a [`PendingWrite`] like any other.
struct GroupMember {
    previous: Option<Head>,
    ov: u64,
    cv: u64,
    group: Arc<Group>,
    slot: usize,
    /// To hold the item again on its own if the group left it behind.
    store: MongoMetaStore,
    change: HeadChange,
}

impl GroupMember {
    /// Give this member up, unless it already settled or the group left it behind.
    fn give_up(&self) {
        let mut slots = lock(&self.group.slots);
        if let Some(slot @ Slot::Waiting) = slots.get_mut(self.slot) {
            *slot = Slot::GaveUp;
            drop(slots);
            self.group.changed.notify_one();
        }
    }

    /// Commit on its own, after the group left this write behind: hold the item again and
    /// commit only if it is exactly as the group saw it (same previous version, so the uploaded
    /// payload's ov and `_system` fields are still right); otherwise the engine starts over.
    async fn commit_alone(&self, version: VersionEntry) -> Result<(), CommitError> {
        // The group's transaction still holds the item until it ends: wait for that first.
        let _ = self.group.ended.subscribe().wait_for(|ended| *ended).await;
        let attempt = self.store.try_hold(&self.change, self.cv).await;
        let again = CommitError::NotCommitted {
            error: Error::Contended(format!("{}/{}", self.change.collection, self.change.id)),
            retry: true,
        };
        let pending = match attempt {
            Ok(super::Attempt::Held(pending)) => pending,
            Ok(_) => return Err(again),
            Err(error) => return Err(CommitError::NotCommitted { error, retry: false }),
        };
        let same = |a: Option<&Head>, b: Option<&Head>| a.map(|h| &h.write_id) == b.map(|h| &h.write_id);
        if pending.ov != self.ov || !same(pending.previous.as_ref(), self.previous.as_ref()) {
            pending.write.abort().await;
            return Err(again);
        }
        pending.write.commit(version).await
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        // Gone without settling (its caller went away): the group puts its head back.
        self.give_up();
    }
}

#[async_trait]
impl PendingWrite for GroupMember {
    async fn commit(self: Box<Self>, version: VersionEntry) -> Result<(), CommitError> {
        let (tx, rx) = oneshot::channel();
        // The version is handed over whole or not at all: the group either takes it (and will
        // answer) or has left this write behind (and never changes its item).
        let left_behind = {
            let mut slots = lock(&self.group.slots);
            match slots.get_mut(self.slot) {
                Some(slot @ Slot::Waiting) => {
                    *slot = Slot::Commit(Box::new(version), tx);
                    None
                }
                _ => Some(version),
            }
        };
        match left_behind {
            None => {
                self.group.changed.notify_one();
                // If the group dies after taking the entry, whether it committed is unknown:
                // the payload must stay.
                rx.await.unwrap_or_else(|_| Err(CommitError::Unknown(group_broken())))
            }
            Some(version) => self.commit_alone(version).await,
        }
    }

    async fn abort(self: Box<Self>) {
        self.give_up();
    }
}

/// Wait until every member committed or gave up — or, for a straggler, until the rest have
/// waited long enough — then make the group's writes visible at once: put back the heads of those
/// that gave up, were left behind or are past their commit deadline, insert the others' version
/// entries, commit.
async fn settle(
    store: MongoMetaStore,
    c: CollectionName,
    mut session: mongodb::ClientSession,
    group: Arc<Group>,
    reverts: Vec<(Revert, crate::engine::model::ItemId, Timestamp)>,
) {
    let _ended = Ended(group.clone());
    let opened = Instant::now();
    let mut deadline: Option<Instant> = None;
    let slots = loop {
        let notified = group.changed.notified();
        {
            let mut slots = lock(&group.slots);
            let waiting = slots.iter().filter(|s| matches!(s, Slot::Waiting)).count();
            if waiting == 0 {
                break std::mem::take(&mut *slots);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                for s in slots.iter_mut().filter(|s| matches!(s, Slot::Waiting)) {
                    *s = Slot::Left;
                }
                break std::mem::take(&mut *slots);
            }
            if deadline.is_none() && 2 * waiting <= slots.len() {
                deadline = Some(opened + 2 * opened.elapsed() + STRAGGLER_GRACE);
            }
        }
        match deadline {
            Some(d) => {
                let _ = tokio::time::timeout_at(d.into(), notified).await;
            }
            None => notified.await,
        }
    };
    let mut entries = Vec::new();
    let mut packed = Vec::new();
    let mut replies = Vec::new();
    let mut undo = Vec::new();
    for (slot, (revert, id, commit_by)) in slots.into_iter().zip(reverts) {
        match slot {
            // A member too late for its commit is put back like one that gave up.
            Slot::Commit(v, reply) => match in_time(commit_by) {
                Ok(()) => {
                    if let Some((q, u)) = packed_head_update(&v) {
                        packed.push(doc! {"q": q, "u": u});
                    }
                    entries.push(version_doc(&v, v.cv));
                    replies.push(reply);
                }
                Err(late) => {
                    let _ = reply.send(Err(late));
                    undo.push((revert, id));
                }
            },
            Slot::Waiting | Slot::GaveUp | Slot::Left => undo.push((revert, id)),
        }
    }
    if replies.is_empty() {
        let _ = session.abort_transaction().await;
        return;
    }
    let (heads, raw_heads) = (store.heads(&c), store.raw_heads(&c));
    for (revert, id) in undo {
        let undone = match revert {
            Revert::Restore(before) => raw_heads
                .replace_one(doc! {"_id": id.as_str()}, before)
                .session(&mut session)
                .await
                .map(drop),
            Revert::Remove => heads
                .delete_one(doc! {"_id": id.as_str()})
                .session(&mut session)
                .await
                .map(drop),
        };
        if let Err(e) = undone {
            let _ = session.abort_transaction().await;
            return answer_all(replies, |_| Err(not_committed(&e)));
        }
    }
    // The packed members' heads name their slots: one command for all of them.
    if !packed.is_empty() {
        let reply = store
            .db
            .run_command(doc! {"update": format!("{c}_head"), "updates": packed, "ordered": true})
            .session(&mut session)
            .await;
        let failed = match reply {
            Ok(r) if r.get_array("writeErrors").is_err() => None,
            Ok(r) => Some(Error::metadata(format!("naming packed payloads in heads: {r}"))),
            Err(e) => Some(map_err(e)),
        };
        if let Some(error) = failed {
            let _ = session.abort_transaction().await;
            return answer_all(replies, |_| {
                Err(CommitError::NotCommitted {
                    error: Error::metadata(error.to_string()),
                    retry: true,
                })
            });
        }
    }
    if let Err(e) = store.versions_coll(&c).insert_many(entries).session(&mut session).await {
        let _ = session.abort_transaction().await;
        // The heads are held, so only an idempotency key can clash: that member's write is
        // refused, the others' are retried by the engine (in a new group or alone).
        let clashed = match (code(&e), e.kind.as_ref()) {
            (Some(super::DUPLICATE_KEY), mongodb::error::ErrorKind::InsertMany(m)) => {
                m.write_errors.as_ref().and_then(|w| w.first()).map(|w| w.index)
            }
            _ => None,
        };
        return answer_all(replies, |i| {
            Err(if Some(i) == clashed {
                CommitError::NotCommitted {
                    error: Error::RequestKeyTaken("a write with this idempotency key".into()),
                    retry: false,
                }
            } else if clashed.is_some() {
                CommitError::NotCommitted {
                    error: Error::metadata("another write of its group was refused"),
                    retry: true,
                }
            } else {
                not_committed(&e)
            })
        });
    }
    let committed = super::commit(&mut session).await;
    answer_all(replies, |_| committed.clone().map_err(|e| super::commit_error(&e)));
}

fn not_committed(e: &mongodb::error::Error) -> CommitError {
    CommitError::NotCommitted {
        error: map_err(e.clone()),
        retry: is_transient(e),
    }
}

/// Tell every committing member (by its position) how its commit went.
fn answer_all(
    replies: Vec<oneshot::Sender<Result<(), CommitError>>>,
    outcome: impl Fn(usize) -> Result<(), CommitError>,
) {
    for (i, reply) in replies.into_iter().enumerate() {
        let _ = reply.send(outcome(i));
    }
}
