//! Conditional counters, derived from the version index.
//!
//! Every acknowledged write is exactly one version entry, committed in the write's transaction,
//! so counting version entries counts every write exactly once — without a hot counter document
//! that every writer of a collection would contend on. Totals are `created / updated / deleted /
//! restored` plus named rules `{name, when: filter on indexed properties, on: [ops]}`, counted
//! over versions after the last reset (a cv mark, so a reset never races a write).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::Result;
use super::model::{CollectionName, Op};
use super::query::Filter;
use super::versioning::Engine;

/// A named, conditional counter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CounterRule {
    pub name: String,
    /// A filter on the version's indexed properties (the query subset); `null` for all.
    #[serde(default)]
    pub when: Value,
    /// Which operations count.
    pub on: Vec<Op>,
}

/// What is wrong with a collection's counter rules, as (rule index, field, problem); the field
/// is `name`, `on` or `when`. Shared by the configuration file and the operator.
pub fn rule_problems(rules: &[CounterRule]) -> Vec<(usize, &'static str, String)> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        if rule.name.is_empty() || !seen.insert(rule.name.as_str()) {
            out.push((i, "name", "expected a unique, non-empty name".to_owned()));
        }
        if rule.on.is_empty() {
            out.push((
                i,
                "on",
                "expected at least one of CREATE, UPDATE, DELETE, RESTORE".to_owned(),
            ));
        }
        if let Err(e) = Filter::parse(&rule.when, &|_| true) {
            out.push((i, "when", e.to_string()));
        }
    }
    out
}

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

impl Engine {
    /// The collection's counters.
    pub async fn totals(&self, collection: &CollectionName) -> Result<Totals> {
        let meta = self.meta();
        let since_cv = meta.counters_from(collection).await?;
        let all = meta.count_versions(collection, since_cv, &Filter::default()).await?;
        let n = |op| all.get(&op).copied().unwrap_or(0);
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
            let total = rule.on.iter().map(|op| counts.get(op).copied().unwrap_or(0)).sum();
            totals.rules.insert(rule.name.clone(), total);
        }
        Ok(totals)
    }

    /// Start counting afresh after the collection's current cv; returns that cv.
    pub async fn reset_totals(&self, collection: &CollectionName) -> Result<u64> {
        self.meta().reset_counters(collection).await
    }
}
