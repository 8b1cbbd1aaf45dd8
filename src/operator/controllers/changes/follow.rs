//! One follower: a task that subscribes to a collection's change feed in-process (the engine's
//! [`subscribe`](crate::engine::Engine::subscribe), woken by the store's commit signal) from the
//! `lastCv` its status records, and writes `status.changes` and its `ChangesFollowed` condition
//! at most every [`STATUS_EVERY`](super::progress::STATUS_EVERY).
//!
//! Cancellation-safe by construction: progress is updated between awaits, so a stop (or an abort)
//! at any await leaves it consistent, and what was written is always a `lastCv` with the count up
//! to it — a follower that crashed resumes after the written `lastCv` and counts nothing twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::Recorder;
use tokio::sync::oneshot;

use super::progress::{self, Progress, Throttle};
use crate::engine::{ChangeFilter, CollectionName, Engine, Error as EngineError};
use crate::operator::conditions::{self, Observed};
use crate::operator::context::FEED_FIELD_MANAGER;
use crate::operator::crd::collection::{CHANGES_FOLLOWED, ChronosCollection};
use crate::operator::events::{self, Notice};

/// What an Event of the follower says it was doing.
const ACTION: &str = "FollowChanges";
/// The first and the longest pause before trying again after the backends or the API failed.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// A follower of one `ChronosCollection`'s change feed.
pub struct Follower {
    pub api: Api<ChronosCollection>,
    pub recorder: Recorder,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub engine: Arc<Engine>,
    /// The `ChronosDatabase` (`spec.database`) and the collection in it (`spec.name`).
    pub database: String,
    pub collection: CollectionName,
}

/// What the follower knows between status writes.
struct State {
    progress: Progress,
    /// Its own condition, as last computed (with its transition time).
    conditions: Vec<Condition>,
    /// The resource as read at start: what Events are about.
    object: ChronosCollection,
    throttle: Throttle,
}

/// How one subscription ended.
enum Ended {
    /// Subscribe again at once (retention cut in: the resume point moved past the cut).
    Resubscribe,
    /// The backends failed: subscribe again after a pause.
    Failed,
    /// The resource is gone: stop for good.
    Gone,
}

impl Follower {
    /// Follow until asked to stop (then write what was seen since the last write) or until the
    /// resource is gone.
    pub async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut state = tokio::select! {
            _ = &mut stop => return,
            state = self.load() => match state {
                Some(state) => state,
                None => return,
            },
        };
        let mut pause = FIRST_PAUSE;
        loop {
            let ended = tokio::select! {
                _ = &mut stop => {
                    if state.progress.dirty {
                        self.write(&mut state).await;
                    }
                    return;
                }
                ended = self.follow(&mut state) => ended,
            };
            match ended {
                Ended::Gone => return,
                Ended::Resubscribe => pause = FIRST_PAUSE,
                Ended::Failed => {
                    tokio::select! {
                        _ = &mut stop => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
    }

    /// Read the resource afresh (the reconcile's copy may be older than the last status write):
    /// where to resume. `None` when it is gone or was recreated (its own follower takes over).
    async fn load(&self) -> Option<State> {
        let mut pause = FIRST_PAUSE;
        loop {
            match self.api.get_opt(&self.name).await {
                Ok(Some(object)) if object.metadata.uid.as_deref() == Some(self.uid.as_str()) => {
                    let status = object.status.as_ref();
                    let conditions = status
                        .map(|s| {
                            s.conditions
                                .iter()
                                .filter(|c| c.type_ == CHANGES_FOLLOWED)
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default();
                    let resumed = status.and_then(|s| s.changes.as_ref());
                    let progress = Progress::resumed(resumed, &self.database, self.collection.as_str());
                    self.gauge(progress.changes.last_cv);
                    return Some(State {
                        progress,
                        conditions,
                        object,
                        throttle: Throttle::default(),
                    });
                }
                Ok(_) => return None,
                Err(error) => {
                    tracing::warn!(%error, namespace = %self.namespace, name = %self.name, "change feed follower: reading the resource failed");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
    }

    /// One subscription, from the resume point until it fails or must move.
    async fn follow(&self, state: &mut State) -> Ended {
        let resume = state.progress.changes.last_cv;
        let mut feed = match self
            .engine
            .subscribe(&self.collection, resume, ChangeFilter::default())
            .await
        {
            Ok(feed) => feed,
            Err(e) => return self.failed(state, e).await,
        };
        // Following again after a failure (or for the first time); a prune notice stays until
        // the next restart, so nobody misses it.
        if !conditions::is_true(&state.conditions, CHANGES_FOLLOWED) {
            self.set_condition(state, state.progress.following()).await;
        }
        loop {
            let now = Instant::now();
            if state.progress.dirty && state.throttle.next_at(now) <= now && !self.write(state).await {
                return Ended::Gone;
            }
            let write_at = tokio::time::Instant::from_std(state.throttle.next_at(Instant::now()));
            tokio::select! {
                next = feed.next() => match next {
                    Ok(versions) => {
                        state.progress.saw(&versions);
                        self.gauge(state.progress.changes.last_cv);
                    }
                    Err(e) => return self.failed(state, e).await,
                },
                () = tokio::time::sleep_until(write_at), if state.progress.dirty => {}
            }
        }
    }

    /// `chronos_collection_last_cv{namespace,collection}` (the resource's namespace and name):
    /// the feed's progress, between status writes too.
    fn gauge(&self, last_cv: u64) {
        metrics::gauge!(
            "chronos_collection_last_cv",
            "namespace" => self.namespace.clone(),
            "collection" => self.name.clone()
        )
        .set(last_cv as f64);
    }

    /// A subscription ended with `error`: retention cut into the resume point (move past the cut,
    /// saying so), or the backends failed (say so, try again later).
    async fn failed(&self, state: &mut State, error: EngineError) -> Ended {
        let ended = if let EngineError::HistoryPruned {
            pruned_through,
            oldest_cv,
            ..
        } = error
        {
            let observed = state.progress.skip_pruned(pruned_through, oldest_cv);
            self.gauge(state.progress.changes.last_cv);
            let notice = Notice::warning("HistoryPruned", observed.message.clone(), ACTION);
            events::publish(&self.recorder, &state.object, notice).await;
            self.set_condition(state, observed).await;
            Ended::Resubscribe
        } else {
            tracing::warn!(%error, namespace = %self.namespace, name = %self.name, "change feed follower: the feed failed");
            self.set_condition(state, progress::unavailable(&error)).await;
            Ended::Failed
        };
        // A condition that changed is written at once, whatever the throttle says.
        if !self.write(state).await {
            return Ended::Gone;
        }
        ended
    }

    /// Make `observed` the follower's condition, publishing an Event when it changed (except for
    /// a prune, whose Warning the caller publishes each time).
    async fn set_condition(&self, state: &mut State, observed: Observed) {
        if observed.reason != "SkippedPrunedHistory"
            && let Some(notice) = events::transition(&state.conditions, &observed, ACTION)
        {
            events::publish(&self.recorder, &state.object, notice).await;
        }
        let generation = state.object.metadata.generation;
        state.conditions = progress::own_conditions(&state.conditions, &observed, generation, conditions::now());
        state.progress.dirty = true;
    }

    /// Apply `status.changes` and the condition; `false` when the resource is gone. A failed
    /// write stays pending and is tried again after the throttle's interval.
    async fn write(&self, state: &mut State) -> bool {
        let body = progress::status_body(&state.progress.changes, &state.conditions);
        let params = PatchParams::apply(FEED_FIELD_MANAGER).force();
        state.throttle.wrote(Instant::now());
        match self.api.patch_status(&self.name, &params, &Patch::Apply(body)).await {
            Ok(_) => {
                state.progress.dirty = false;
                true
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => false,
            Err(error) => {
                tracing::warn!(%error, namespace = %self.namespace, name = %self.name, "change feed follower: writing status failed");
                true
            }
        }
    }
}
