//! Which databases of a namespace its shared engine serves, and why others that ask for it
//! can't be: a pure function of the namespace's databases.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::operator::conditions;
use crate::operator::crd::database::{BACKENDS_REACHABLE, ChronosDatabase, database_key};

/// Which databases of a namespace the shared engine serves, and why others that want it can't be.
#[derive(Debug, Default)]
pub struct Membership<'a> {
    /// In name order (a stable rendering).
    pub members: Vec<&'a ChronosDatabase>,
    /// Database name → why it is left out although it asks for the shared engine.
    pub conflicts: BTreeMap<String, String>,
}

/// The members of a namespace's shared engine among all its databases: those without
/// `spec.engine`, not being deleted, with a valid spec, and whose backends were found reachable
/// (a member whose Secret is missing would keep the one pod that serves everyone from starting).
/// `fresh` is the reconciling database's own check, newer than its status. Two databases that
/// claim the same key or routing identity can't both be served: the older one keeps it and the
/// other is listed in `conflicts`.
pub fn membership<'a>(dbs: &'a [ChronosDatabase], fresh: Option<(&str, bool)>) -> Membership<'a> {
    let reachable = |db: &ChronosDatabase| match fresh {
        Some((name, ok)) if name == db.name_any() => ok,
        _ => db
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, BACKENDS_REACHABLE)),
    };
    let mut candidates: Vec<&ChronosDatabase> = dbs
        .iter()
        .filter(|db| db.spec.engine.is_none() && db.metadata.deletion_timestamp.is_none())
        .filter(|db| db.problems().is_empty() && reachable(db))
        .collect();
    candidates.sort_by(|a, b| {
        let created = |d: &ChronosDatabase| d.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (created(a), a.name_any()).cmp(&(created(b), b.name_any()))
    });
    let mut out = Membership::default();
    let mut keys = BTreeMap::new();
    let mut identities = BTreeMap::new();
    for db in candidates {
        let key = database_key(db);
        let identity = db
            .spec
            .routing
            .as_ref()
            .map(|r| (r.database_type, r.tier, r.ext_identifier.clone()));
        let taken = keys
            .get(&key)
            .map(|other| format!("key `{key}` is already served by ChronosDatabase {other}"));
        let taken = taken.or_else(|| {
            let other = identities.get(identity.as_ref()?)?;
            Some(format!(
                "its routing identity is already served by ChronosDatabase {other}"
            ))
        });
        match taken {
            Some(why) => {
                out.conflicts.insert(db.name_any(), why);
            }
            None => {
                keys.insert(key, db.name_any());
                if let Some(identity) = identity {
                    identities.insert(identity, db.name_any());
                }
                out.members.push(db);
            }
        }
    }
    out.members.sort_by_key(|db| db.name_any());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::database::{DatabaseType, Tier};

    #[test]
    fn membership_takes_usable_shared_databases_and_the_older_of_two_claims() {
        let reachable = |db: ChronosDatabase, created| db.reachable().created(created);
        let tenant = |name| ChronosDatabase::test(name).routed(DatabaseType::Runtime, Tier::Tenant, Some("x"));
        let dbs = vec![
            reachable(ChronosDatabase::test("old").keyed("same"), 1),
            reachable(ChronosDatabase::test("young").keyed("same"), 2),
            reachable(ChronosDatabase::test("dedicated").dedicated(1), 1),
            reachable(ChronosDatabase::test("invalid").keyed("admin"), 1),
            ChronosDatabase::test("unchecked"),
            reachable(ChronosDatabase::test("deleting"), 1).deleting(),
            reachable(tenant("t1"), 1),
            reachable(tenant("t2"), 2),
        ];
        let m = membership(&dbs, None);
        let names: Vec<String> = m.members.iter().map(|d| d.name_any()).collect();
        assert_eq!(names, ["old", "t1"]);
        assert_eq!(
            m.conflicts.keys().collect::<Vec<_>>(),
            ["t2", "young"],
            "the younger claim loses"
        );
        assert!(m.conflicts["young"].contains("key `same` is already served by ChronosDatabase old"));
        assert!(m.conflicts["t2"].contains("routing identity"));
        // The reconciling database's fresh check wins over its (older) status, both ways.
        let m = membership(&dbs, Some(("unchecked", true)));
        assert!(m.members.iter().any(|d| d.name_any() == "unchecked"));
        let m = membership(&dbs, Some(("old", false)));
        let names: Vec<String> = m.members.iter().map(|d| d.name_any()).collect();
        assert_eq!(names, ["t1", "young"], "with `old` unreachable, `young` takes the key");
    }
}
