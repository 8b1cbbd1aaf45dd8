//! Which change-feed followers run in this operator process, one per `ChronosCollection`: the
//! collection reconcile starts one, and stops it when the collection can no longer be followed;
//! the deletion watcher stops the followers of collections that are gone.
//!
//! Kept apart from the follower itself so the shared [`Context`](crate::operator::Context) can
//! hold the registry without importing the code that needs the context.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A collection as the registry knows it: its namespace and resource name.
pub type FollowerKey = (String, String);

/// How long a stopping follower may take to write its last status before it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a running follower follows. A different target (the resource recreated, the database's
/// spec changed, `spec.name` changed) means a new follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The `ChronosCollection`'s uid.
    pub uid: String,
    /// The collection's name in the database (`spec.name`).
    pub collection: String,
    /// The `ChronosDatabase`'s uid and generation: its backends are in its spec.
    pub database_uid: String,
    pub database_generation: Option<i64>,
}

struct Running {
    target: Target,
    /// Asks the follower to write what it saw and end.
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The followers of one operator process. Dropping it aborts them (a crash loses at most the
/// progress since their last status write, which the next follower reads again).
#[derive(Default)]
pub struct Followers {
    running: Mutex<HashMap<FollowerKey, Running>>,
}

impl Followers {
    /// Whether a follower of `target` runs under `key`.
    pub fn follows(&self, key: &FollowerKey, target: &Target) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|r| r.target == *target && !r.task.is_finished())
    }

    /// Run the follower `spawn` starts (given its stop signal) under `key`, after stopping the one
    /// there. The old one writes its progress first, so the new one resumes after it.
    pub async fn start(
        &self,
        key: FollowerKey,
        target: Target,
        spawn: impl FnOnce(oneshot::Receiver<()>) -> JoinHandle<()>,
    ) {
        self.stop(&key).await;
        let (stop, stopped) = oneshot::channel();
        let task = spawn(stopped);
        let old = self.lock().insert(key, Running { target, stop, task });
        if let Some(old) = old {
            // Two reconciles of one object don't overlap; should they, the later one wins.
            old.task.abort();
        }
    }

    /// Stop the follower under `key`, if any, and wait (bounded) until it has ended.
    pub async fn stop(&self, key: &FollowerKey) {
        let running = self.lock().remove(key);
        if let Some(running) = running {
            finish(running).await;
        }
    }

    /// Stop the follower under `key` if it follows the resource with this `uid` (a deletion
    /// seen late must not stop the follower of a resource recreated under the same name).
    pub async fn stop_uid(&self, key: &FollowerKey, uid: &str) {
        let running = {
            let mut running = self.lock();
            match running.get(key) {
                Some(r) if r.target.uid == uid => running.remove(key),
                _ => None,
            }
        };
        if let Some(running) = running {
            finish(running).await;
        }
    }

    /// The followers in `namespace` (all namespaces: `None`): their keys and resource uids.
    pub fn followed_in(&self, namespace: Option<&str>) -> Vec<(FollowerKey, String)> {
        self.lock()
            .iter()
            .filter(|(k, _)| namespace.is_none_or(|ns| k.0 == ns))
            .map(|(k, r)| (k.clone(), r.target.uid.clone()))
            .collect()
    }

    /// Stop the followers of every collection of the database whose uid is `database_uid` (it
    /// is being deleted: its data may be dropped next).
    pub async fn stop_database(&self, database_uid: &str) {
        let gone: Vec<Running> = {
            let mut running = self.lock();
            let keys: Vec<FollowerKey> = running
                .iter()
                .filter(|(_, r)| r.target.database_uid == database_uid)
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| running.remove(k)).collect()
        };
        futures::future::join_all(gone.into_iter().map(finish)).await;
    }

    /// Stop every follower (each writes its progress first) and wait until they have ended.
    pub async fn stop_all(&self) {
        let all: Vec<Running> = self.lock().drain().map(|(_, r)| r).collect();
        futures::future::join_all(all.into_iter().map(finish)).await;
    }

    /// How many followers run.
    pub fn len(&self) -> usize {
        self.lock().values().filter(|r| !r.task.is_finished()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<FollowerKey, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ask a follower to stop and wait for it; abort it if it takes longer than [`STOP_GRACE`].
async fn finish(running: Running) {
    let Running { stop, mut task, .. } = running;
    // A follower that already ended dropped its receiver: nothing to ask.
    let _ = stop.send(());
    if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
        task.abort();
    }
}

impl Drop for Followers {
    fn drop(&mut self) {
        for running in self.lock().values() {
            running.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uid: &str) -> Target {
        Target {
            uid: uid.to_owned(),
            collection: "notes".to_owned(),
            database_uid: "db".to_owned(),
            database_generation: Some(1),
        }
    }

    fn key(ns: &str, name: &str) -> FollowerKey {
        (ns.to_owned(), name.to_owned())
    }

    /// A follower that ends when asked, reporting that it was asked.
    fn polite(
        done: tokio::sync::mpsc::UnboundedSender<&'static str>,
        name: &'static str,
    ) -> impl FnOnce(oneshot::Receiver<()>) -> JoinHandle<()> {
        move |stop| {
            tokio::spawn(async move {
                let _ = stop.await;
                let _ = done.send(name);
            })
        }
    }

    #[tokio::test]
    async fn a_new_target_stops_the_old_follower_first_and_deleted_ones_are_stopped() {
        let followers = Followers::default();
        let (done, mut stopped) = tokio::sync::mpsc::unbounded_channel();
        followers
            .start(key("a", "x"), target("1"), polite(done.clone(), "x1"))
            .await;
        followers
            .start(key("a", "y"), target("2"), polite(done.clone(), "y"))
            .await;
        followers
            .start(key("b", "z"), target("3"), polite(done.clone(), "z"))
            .await;
        assert!(followers.follows(&key("a", "x"), &target("1")));
        assert!(!followers.follows(&key("a", "x"), &target("9")), "another target");
        assert!(stopped.try_recv().is_err(), "nothing stopped yet");

        followers
            .start(key("a", "x"), target("9"), polite(done.clone(), "x9"))
            .await;
        assert_eq!(
            stopped.try_recv().ok(),
            Some("x1"),
            "the old one ended before the new one started"
        );
        assert!(followers.follows(&key("a", "x"), &target("9")));

        let mut listed = followers.followed_in(Some("a"));
        listed.sort();
        assert_eq!(
            listed,
            [(key("a", "x"), "9".to_owned()), (key("a", "y"), "2".to_owned())]
        );
        followers.stop_uid(&key("a", "y"), "1").await;
        assert!(stopped.try_recv().is_err(), "another resource's deletion stops nothing");
        followers.stop_uid(&key("a", "y"), "2").await;
        assert_eq!(stopped.try_recv().ok(), Some("y"), "a/y is gone");
        assert_eq!(followers.len(), 2);

        followers
            .start(key("c", "w"), target("4"), polite(done.clone(), "w"))
            .await;
        let mut other = target("5");
        other.database_uid = "other".to_owned();
        followers.start(key("c", "v"), other, polite(done.clone(), "v")).await;
        followers.stop_database("other").await;
        assert_eq!(stopped.try_recv().ok(), Some("v"), "only the other database's");
        followers.stop(&key("c", "w")).await;
        assert_eq!(stopped.try_recv().ok(), Some("w"));

        followers.stop_all().await;
        let mut rest = vec![stopped.recv().await.unwrap(), stopped.recv().await.unwrap()];
        rest.sort();
        assert_eq!(rest, ["x9", "z"]);
        assert!(followers.is_empty());
    }
}
