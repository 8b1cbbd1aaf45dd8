//! Append-only restore of a whole collection to an earlier point (cv or time).
//!
//! For every item whose state differs from its state at the target, one version is appended that
//! equals that state; items created after the target are logically deleted. The work goes in
//! pages of item ids: each page is independent, so a restore can stop anywhere and continue
//! from the last page's cursor. Redoing a page does nothing twice: an item that already equals
//! its target state is left alone (states are compared by data checksum and deleted flag).

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::error::{Error, Result};
use super::model::{Attribution, CollectionName, Head, ItemId, Op, VersionEntry};
use super::query::Filter;
use super::store::{HistoryPoint, ListQuery};
use super::versioning::{Engine, NewContent};

/// How many times an item written concurrently during the restore is re-examined.
const ITEM_ATTEMPTS: usize = 3;

/// Items per page of [`Engine::restore_collection`].
pub const RESTORE_PAGE: usize = 500;

/// What the restore would do (dry run) or did, for one page or summed over pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreCounts {
    /// Items looked at.
    pub examined: u64,
    /// Items given back their data at the target.
    pub restored: u64,
    /// Items logically deleted (created after the target, or deleted at the target).
    pub deleted: u64,
    /// Items already equal to their state at the target.
    pub unchanged: u64,
}

impl RestoreCounts {
    pub fn add(&mut self, other: &RestoreCounts) {
        self.examined += other.examined;
        self.restored += other.restored;
        self.deleted += other.deleted;
        self.unchanged += other.unchanged;
    }
}

/// One page of a collection restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestorePage {
    pub counts: RestoreCounts,
    /// Continue after this id; `None` when the collection is done.
    pub next_after_id: Option<ItemId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Restore,
    Delete,
    Keep,
}

fn action(head: &Head, target: Option<&VersionEntry>) -> Action {
    match target {
        Some(t) if !t.deleted => {
            if head.deleted() || head.checksum != t.checksum {
                Action::Restore
            } else {
                Action::Keep
            }
        }
        // Created after the target, or deleted at the target.
        _ if head.deleted() => Action::Keep,
        _ => Action::Delete,
    }
}

impl Engine {
    /// How many items a collection has; the total for a restore's progress.
    pub async fn count_items(&self, collection: &CollectionName) -> Result<u64> {
        self.meta().count_items(collection).await
    }

    /// Restore (or, with `dry_run`, plan) one page of up to `limit` items after `after_id`.
    pub async fn restore_collection_page(
        &self,
        collection: &CollectionName,
        point: HistoryPoint,
        after_id: Option<ItemId>,
        limit: usize,
        dry_run: bool,
        who: &Attribution,
    ) -> Result<RestorePage> {
        if limit == 0 || limit > 1000 {
            return Err(Error::validation("limit", "must be between 1 and 1000"));
        }
        let query = ListQuery {
            filter: Filter::default(),
            after_id,
            limit,
            descending: false,
            include_deleted: true,
        };
        let heads = self.meta().list_heads(collection, &query).await?;
        let ids: Vec<ItemId> = heads.iter().map(|h| h.id.clone()).collect();
        let mut targets: HashMap<ItemId, VersionEntry> = self
            .meta()
            .versions_at(collection, &ids, point)
            .await?
            .into_iter()
            .map(|v| (v.id.clone(), v))
            .collect();
        let next_after_id = (heads.len() == limit).then(|| ids.last().cloned()).flatten();
        let work: Vec<(Head, Option<VersionEntry>)> = heads
            .into_iter()
            .map(|h| {
                let t = targets.remove(&h.id);
                (h, t)
            })
            .collect();
        let actions: Vec<Action> = futures::stream::iter(work)
            .map(|(head, target)| self.restore_item(collection, head, target, point, dry_run, who))
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut counts = RestoreCounts {
            examined: actions.len() as u64,
            ..Default::default()
        };
        for a in actions {
            match a {
                Action::Restore => counts.restored += 1,
                Action::Delete => counts.deleted += 1,
                Action::Keep => counts.unchanged += 1,
            }
        }
        Ok(RestorePage { counts, next_after_id })
    }

    /// Restore (or plan) the whole collection, page by page; `progress(sums, total)` is called
    /// after each page.
    pub async fn restore_collection(
        &self,
        collection: &CollectionName,
        point: HistoryPoint,
        dry_run: bool,
        who: &Attribution,
        mut progress: impl FnMut(&RestoreCounts, u64),
    ) -> Result<RestoreCounts> {
        let total = self.count_items(collection).await?;
        let mut sums = RestoreCounts::default();
        let mut after = None;
        loop {
            let page = self
                .restore_collection_page(collection, point, after, RESTORE_PAGE, dry_run, who)
                .await?;
            sums.add(&page.counts);
            progress(&sums, total);
            match page.next_after_id {
                Some(next) => after = Some(next),
                None => return Ok(sums),
            }
        }
    }

    async fn restore_item(
        &self,
        collection: &CollectionName,
        mut head: Head,
        target: Option<VersionEntry>,
        point: HistoryPoint,
        dry_run: bool,
        who: &Attribution,
    ) -> Result<Action> {
        for attempt in 1..=ITEM_ATTEMPTS {
            let act = action(&head, target.as_ref());
            if dry_run || act == Action::Keep {
                return Ok(act);
            }
            let result = match (act, &target) {
                (Action::Restore, Some(t)) => {
                    let decoded = self.load(collection, &t.id, t.ov, &t.write_id, &t.checksum).await?;
                    let data = self.new_data(collection, decoded.data)?;
                    self.write(
                        collection,
                        &head.id,
                        Op::Restore,
                        Some(head.ov),
                        NewContent::Data(data),
                        None,
                        who,
                        None,
                    )
                    .await
                }
                _ => {
                    self.write(
                        collection,
                        &head.id,
                        Op::Delete,
                        Some(head.ov),
                        NewContent::KeepPrevious,
                        None,
                        who,
                        None,
                    )
                    .await
                }
            };
            match result {
                Ok(_) => return Ok(act),
                // Written meanwhile: look again (its target state can't have changed).
                Err(Error::VersionConflict { .. } | Error::NotFound(_)) if attempt < ITEM_ATTEMPTS => {
                    head = self
                        .meta()
                        .head(collection, &head.id)
                        .await?
                        .ok_or_else(|| Error::Corrupt(format!("{collection}/{} lost its head", head.id)))?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Contended(format!("{collection} restore to {point:?}")))
    }
}
