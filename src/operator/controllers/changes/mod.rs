//! The operator follows each `ChronosCollection`'s change feed and shows where it is in
//! `status.changes` (`lastCv`, `lastChangeAt`, `lastItem`, `lastOp`, `versionsSeen`) and in the
//! gauge `chronos_collection_last_cv{namespace,collection}`.
//!
//! Why the feed, not reading heads now and then: the feed is resumable from a cv — a restarted
//! operator continues after the `lastCv` its status records, counting nothing twice and missing
//! nothing, and when retention pruned past that point the feed says so (`history_pruned`), so the
//! jump is reported, never silent. It is pushed (the store's commit signal: one MongoDB change
//! stream per collection, shared by every reader of the engine's feed hub), so an idle collection
//! costs no query at all, where polling heads costs a query per collection per tick and still
//! can't tell which versions came in between.
//!
//! - `registry.rs`: which followers run (one per collection), started and stopped as a unit.
//! - `progress.rs`: what a follower reports and when (pure).
//! - `follow.rs`: the follower task.
//!
//! The collection reconcile starts a follower once the collection's indexes are in place and
//! stops it when the collection can't be followed (invalid spec, database missing or being
//! deleted); [`forget_deleted`] stops those of deleted collections.

mod follow;
pub mod progress;
pub mod registry;

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use crate::engine::{CollectionName, Engine};
use crate::operator::context::Context;
use crate::operator::crd::collection::ChronosCollection;
use crate::operator::crd::database::ChronosDatabase;
use registry::{FollowerKey, Target};

/// The registry key of a collection resource.
fn key(c: &ChronosCollection) -> FollowerKey {
    (c.namespace().unwrap_or_default(), c.name_any())
}

/// Make sure a follower of `c`'s feed runs, over `engine` (an engine of `db`); a follower of an
/// older target (the resource recreated, the database's spec changed) is replaced.
pub async fn ensure(
    ctx: &Context,
    c: &ChronosCollection,
    collection: &CollectionName,
    db: &ChronosDatabase,
    engine: Arc<Engine>,
) {
    let target = Target {
        uid: uid(c),
        collection: collection.as_str().to_owned(),
        database_uid: db.metadata.uid.clone().unwrap_or_default(),
        database_generation: db.metadata.generation,
    };
    let key = key(c);
    if ctx.followers.follows(&key, &target) {
        return;
    }
    let (namespace, name) = key.clone();
    tracing::info!(%namespace, %name, collection = %collection, "following the change feed");
    let follower = follow::Follower {
        api: Api::namespaced(ctx.client.clone(), &namespace),
        recorder: ctx.recorder.clone(),
        uid: target.uid.clone(),
        namespace,
        name,
        engine,
        database: c.spec.database.clone(),
        collection: collection.clone(),
    };
    ctx.followers
        .start(key, target, |stop| tokio::spawn(follower.run(stop)))
        .await;
}

/// Stop following `c` (it can't be followed now); nothing when no follower runs.
pub async fn stop(ctx: &Context, c: &ChronosCollection) {
    ctx.followers.stop(&key(c)).await;
}

/// Stop the followers of collections deleted from `api` (one namespace's, or every namespace's:
/// `namespace`), for as long as the watch runs. Without a finalizer nothing else learns of a
/// deletion; after a re-list, a follower whose collection was not listed is stopped once a
/// fresh read confirms it is gone (a list may come from the API server's cache, older than the
/// follower).
pub async fn forget_deleted(ctx: Arc<Context>, api: Api<ChronosCollection>, namespace: Option<String>) {
    let mut listed: HashSet<FollowerKey> = HashSet::new();
    let events = watcher(api, watcher::Config::default().any_semantic()).default_backoff();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Delete(c)) => ctx.followers.stop_uid(&key(&c), &uid(&c)).await,
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(c)) => {
                listed.insert(key(&c));
            }
            Ok(watcher::Event::InitDone) => forget_unlisted(&ctx, namespace.as_deref(), &listed).await,
            Ok(watcher::Event::Apply(_)) => {}
            Err(error) => tracing::debug!(%error, "change feed followers: watching collections"),
        }
    }
}

/// Stop the followers not in `listed` whose collection a fresh read finds gone (or recreated).
async fn forget_unlisted(ctx: &Context, namespace: Option<&str>, listed: &HashSet<FollowerKey>) {
    for (key, followed) in ctx.followers.followed_in(namespace) {
        if listed.contains(&key) {
            continue;
        }
        let api: Api<ChronosCollection> = Api::namespaced(ctx.client.clone(), &key.0);
        match api.get_opt(&key.1).await {
            Ok(Some(c)) if uid(&c) == followed => {}
            Ok(_) => ctx.followers.stop_uid(&key, &followed).await,
            Err(error) => {
                tracing::debug!(%error, namespace = %key.0, name = %key.1, "change feed followers: checking a collection")
            }
        }
    }
}

fn uid(c: &ChronosCollection) -> String {
    c.metadata.uid.clone().unwrap_or_default()
}
