//! What a `ChronosDatabase` claims on its backends — one MongoDB database on one MongoDB
//! deployment, three buckets on one S3 endpoint — and which claims collide. Two databases on one
//! MongoDB database share every item and queue; a database whose `deletionPolicy` is `Delete`
//! would drop or empty what another one still uses. Pure functions of the resources.

use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::operator::conditions;
use crate::operator::crd::database::{BACKENDS_REACHABLE, ChronosDatabase, DeletionPolicy};

/// A digest of the MongoDB deployment a connection string points at: its scheme and hosts (with
/// the default port made explicit), sorted, without credentials or options. Two URIs of one
/// replica set with different users or options give the same digest; it reveals neither.
pub fn mongo_backend(uri: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("mongodb", uri));
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let mut hosts: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            let h = h.to_ascii_lowercase();
            let has_port = h
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()));
            if scheme == "mongodb" && !has_port {
                format!("{h}:27017")
            } else {
                h
            }
        })
        .collect();
    hosts.sort();
    hosts.dedup();
    let text = format!("{}://{}", scheme.to_ascii_lowercase(), hosts.join(","));
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

fn endpoint(db: &ChronosDatabase) -> String {
    db.spec.s3.endpoint.trim_end_matches('/').to_ascii_lowercase()
}

fn buckets(db: &ChronosDatabase) -> [&str; 3] {
    let b = &db.spec.s3.buckets;
    [&b.json, &b.content, &b.backups]
}

fn id(db: &ChronosDatabase) -> String {
    format!("{}/{}", db.namespace().unwrap_or_default(), db.name_any())
}

/// What `db` (on MongoDB deployment `backend`) shares with `other` that it must not, if
/// anything. `other`'s deployment is the one its status recorded; one not recorded yet (its
/// Secrets not read so far) counts as the same: what is at stake is another tenant's data.
fn shared(db: &ChronosDatabase, backend: &str, other: &ChronosDatabase) -> Option<String> {
    let others_backend = other.status.as_ref().and_then(|s| s.mongo_backend.as_deref());
    if other.spec.mongodb.db_name == db.spec.mongodb.db_name && others_backend.is_none_or(|b| b == backend) {
        let maybe = if others_backend.is_none() {
            " (its MongoDB is not known yet)"
        } else {
            ""
        };
        return Some(format!(
            "MongoDB database `{}` on this MongoDB is already used by ChronosDatabase {}{maybe}",
            db.spec.mongodb.db_name,
            id(other)
        ));
    }
    let drops = [db, other]
        .iter()
        .any(|d| d.spec.deletion_policy == DeletionPolicy::Delete);
    if drops && endpoint(db) == endpoint(other) {
        let theirs = buckets(other);
        if let Some(bucket) = buckets(db).into_iter().find(|b| theirs.contains(b)) {
            return Some(format!(
                "bucket `{bucket}` is also used by ChronosDatabase {}, and deletionPolicy: Delete on either \
                 would empty it under the other",
                id(other)
            ));
        }
    }
    None
}

/// Why `db` (on MongoDB deployment `backend`) must not use its backends: a database ahead of it
/// among `all` (in any namespace) already claims its MongoDB database, or a bucket one of them
/// would drop. One whose backends were already found reachable (it serves) is ahead of one whose
/// were not, then the older one, then namespace/name: creation times have whole seconds, so two
/// resources applied together tie, and a database that serves must never lose its data to one
/// that sorts first by name. Every reconcile sees the same order, so exactly one of two claimants
/// wins; and the same check keeps a refused database's `deletionPolicy: Delete` from dropping
/// data that was never its own.
pub fn conflict(db: &ChronosDatabase, backend: &str, all: &[ChronosDatabase]) -> Option<String> {
    let rank = |d: &ChronosDatabase| {
        let serving = d
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, BACKENDS_REACHABLE));
        (!serving, d.metadata.creation_timestamp.as_ref().map(|t| t.0), id(d))
    };
    all.iter()
        .filter(|o| o.metadata.uid != db.metadata.uid && rank(o) < rank(db))
        .find_map(|o| shared(db, backend, o))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Database `name` of namespace `ns`, created at `created`, on MongoDB database `orders`.
    fn db(ns: &str, name: &str, created: i64) -> ChronosDatabase {
        ChronosDatabase::test(name)
            .in_namespace(ns)
            .created(created)
            .mongo_database("mongo", "orders")
    }

    /// Applied in one second, the two tie on age; the one already serving keeps its database
    /// whatever the names say (the flake this fixed: the newcomer's namespace sorted first).
    #[test]
    fn a_serving_database_keeps_its_claim_over_one_created_in_the_same_second() {
        let backend = mongo_backend("mongodb://m:27017");
        let serving = db("zz-tenant", "a", 5).on_mongo(&backend).reachable();
        let newcomer = db("aa-tenant", "b", 5);
        let all = [serving.clone(), newcomer.clone()];
        assert!(conflict(&newcomer, &backend, &all).is_some(), "the newcomer is refused");
        assert_eq!(conflict(&serving, &backend, &all), None, "the serving one keeps it");
    }

    #[test]
    fn the_digest_names_the_deployment_not_the_user_or_the_options() {
        let a = mongo_backend("mongodb://alice:pw@Mongo-1:27017,mongo-2/app?replicaSet=rs0");
        assert_eq!(a, mongo_backend("mongodb://bob:other@mongo-2:27017,mongo-1/?tls=true"));
        assert_ne!(a, mongo_backend("mongodb://alice:pw@mongo-3:27017/"));
        assert_ne!(a, mongo_backend("mongodb+srv://mongo-1/"));
        assert!(!a.contains("alice") && a.len() == 16);
    }

    #[test]
    fn an_older_database_keeps_its_mongodb_database_across_namespaces() {
        let backend = mongo_backend("mongodb://m:27017");
        let owner = db("tenant-a", "a", 1).on_mongo(&backend);
        let thief = db("tenant-b", "b", 2);
        let all = [owner.clone(), thief.clone()];
        let why = conflict(&thief, &backend, &all).expect("the younger one conflicts");
        assert!(why.contains("`orders`") && why.contains("tenant-a/a"), "{why}");
        assert_eq!(conflict(&owner, &backend, &all), None, "the older one keeps it");
        let elsewhere = mongo_backend("mongodb://other:27017");
        assert_eq!(conflict(&thief, &elsewhere, &all), None, "another MongoDB");
        let mut renamed = thief.clone();
        renamed.spec.mongodb.db_name = "orders2".into();
        assert_eq!(conflict(&renamed, &backend, &all), None);
    }

    #[test]
    fn shared_buckets_conflict_only_when_one_side_drops_its_data() {
        let backend = mongo_backend("mongodb://m:27017");
        let bucket = |d: &mut ChronosDatabase| d.spec.s3.buckets.content = "common".into();
        let mut a = db("x", "a", 1).mongo_database("m", "a").on_mongo(&backend);
        let mut b = db("y", "b", 2).mongo_database("m", "b");
        bucket(&mut a);
        bucket(&mut b);
        assert_eq!(conflict(&b, &backend, &[a.clone()]), None, "both Retain");
        b.spec.deletion_policy = DeletionPolicy::Delete;
        let why = conflict(&b, &backend, &[a.clone()]).unwrap();
        assert!(why.contains("bucket `common`"), "{why}");
        b.spec.s3.endpoint = "http://other-s3:8333/".into();
        assert_eq!(conflict(&b, &backend, &[a]), None, "another endpoint");
    }

    #[test]
    fn a_claim_whose_mongodb_is_not_known_yet_is_respected() {
        let backend = mongo_backend("mongodb://m:27017");
        let unchecked = db("x", "a", 1);
        let younger = db("y", "b", 2).drops_data();
        let why = conflict(&younger, &backend, std::slice::from_ref(&unchecked)).unwrap();
        assert!(why.contains("x/a") && why.contains("not known yet"), "{why}");
        // The older one, being deleted with Delete, may drop its data: the younger never used it.
        let leaving = db("x", "a", 1).drops_data().on_mongo(&backend);
        assert_eq!(conflict(&leaving, &backend, &[younger]), None);
    }
}
