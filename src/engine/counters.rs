//! Conditional counters, derived from the version index.
//!
//! Every acknowledged write is exactly one version entry, committed in the write's transaction,
//! so counting version entries counts every write exactly once — without a hot counter document
//! that every writer of a collection would contend on. Retention removes entries, so it keeps
//! per-counter tallies of what it pruned, updated atomically with the removal. Totals are `created / updated / deleted /
//! restored` plus named rules `{name, when: filter on indexed properties, on: [ops]}`, counted
//! over versions after the last reset (a cv mark, so a reset never races a write).

use std::collections::BTreeMap;

use serde::Serialize;

use super::error::Result;
use super::model::{CollectionName, Op, VersionEntry};
use super::query::Filter;
use super::settings::CounterRule;
use super::versioning::Engine;

/// A collection's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub restored: u64,
    /// Per rule name.
    pub rules: BTreeMap<String, u64>,
    /// Counting starts after this cv (the last reset; 0 if never reset).
    pub since_cv: u64,
}

/// How many times [`Engine::totals`] reads the index again when retention pruned meanwhile.
const TOTALS_ATTEMPTS: usize = 3;

/// The tally name of an operation's counter.
fn op_counter(op: Op) -> String {
    format!("op:{}", op.as_str())
}

/// The tally name of a rule's counter.
fn rule_counter(rule: &CounterRule) -> String {
    format!("rule:{}", rule.name)
}

impl Engine {
    /// The collection's counters: what the version index counts, plus what retention pruned
    /// from it (see [`Engine::counter_names`]).
    pub async fn totals(&self, collection: &CollectionName) -> Result<Totals> {
        let meta = self.meta();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let pruned = meta.pruned_counts(collection).await?;
            let totals = self.index_totals(collection, &pruned).await?;
            // The index and the tallies are read apart: a prune in between would count its
            // versions twice or not at all, and shows as changed tallies.
            if attempt >= TOTALS_ATTEMPTS || meta.pruned_counts(collection).await? == pruned {
                return Ok(totals);
            }
        }
    }

    /// The counter names a version counts toward (its operation's, and each matching rule's):
    /// retention keeps them as tallies when it prunes the version. A rule added later does not
    /// count versions pruned before.
    pub(super) fn counter_names(&self, collection: &CollectionName, v: &VersionEntry) -> Result<Vec<String>> {
        let mut names = vec![op_counter(v.op)];
        let rules = self.settings().counter_rules.get(collection.as_str());
        for rule in rules.into_iter().flatten().filter(|r| r.on.contains(&v.op)) {
            if Filter::parse(&rule.when, &|p| self.is_indexed(collection, p))?.matches(&v.meta) {
                names.push(rule_counter(rule));
            }
        }
        Ok(names)
    }

    async fn index_totals(
        &self,
        collection: &CollectionName,
        pruned: &std::collections::HashMap<String, u64>,
    ) -> Result<Totals> {
        let meta = self.meta();
        let since_cv = meta.counters_from(collection).await?;
        let all = meta.count_versions(collection, since_cv, &Filter::default()).await?;
        let n = |op| all.get(&op).copied().unwrap_or(0) + pruned.get(&op_counter(op)).copied().unwrap_or(0);
        let mut totals = Totals {
            created: n(Op::Create),
            updated: n(Op::Update),
            deleted: n(Op::Delete),
            restored: n(Op::Restore),
            rules: BTreeMap::new(),
            since_cv,
        };
        let rules = self.settings().counter_rules.get(collection.as_str());
        for rule in rules.into_iter().flatten() {
            let filter = Filter::parse(&rule.when, &|p| self.is_indexed(collection, p))?;
            let counts = if filter.is_empty() {
                all.clone()
            } else {
                meta.count_versions(collection, since_cv, &filter).await?
            };
            let total: u64 = rule.on.iter().map(|op| counts.get(op).copied().unwrap_or(0)).sum();
            let total = total + pruned.get(&rule_counter(rule)).copied().unwrap_or(0);
            totals.rules.insert(rule.name.clone(), total);
        }
        Ok(totals)
    }

    /// Start counting afresh after the collection's current cv; returns that cv.
    pub async fn reset_totals(&self, collection: &CollectionName) -> Result<u64> {
        let cv = self.meta().reset_counters(collection).await?;
        // If this fails the reset stands but a rebuild would not know it: the caller hears of it
        // and resets again (which only moves the mark to the current cv).
        crate::engine::ledger::resets::record(self.payload_store(), collection, cv).await?;
        Ok(cv)
    }
}
