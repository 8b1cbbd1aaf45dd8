//! The conformance suite: every rule of the versioning core, checked against a backend pair.
//! `conformance_suite!(make)` instantiates each check as a test for one backend, where
//! `make(EngineSettings)` builds a fresh, empty [`Harness`] (sync or async). The checks live in
//! one module per subject; a test is named `<backend>::conformance::<subject>::<check>`. A check
//! of a `@pair` subject gets two harnesses of the backend: the second is the empty store a
//! rebuild loads into.

pub mod content;
pub mod counters;
pub mod enrichment;
pub mod erase;
pub mod feed;
mod fixtures;
pub mod history;
pub mod holds;
pub mod idempotency;
pub mod listing;
pub mod queue;
pub mod reads;
pub mod rebuild;
pub mod restore;
pub mod retention;
pub mod shredding;
pub mod tiering;
pub mod writes;

use chronos::engine::Op;
use serde_json::json;

use crate::support::Harness;

pub use fixtures::stale_restore;

#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        /// A fresh, empty harness of the backend under test, for the suite's tests below.
        async fn conformance_harness(settings: chronos::engine::EngineSettings) -> $crate::support::Harness {
            #[allow(clippy::redundant_closure_call)]
            $crate::conformance::ready(($make)(settings)).await
        }

        /// The conformance suite on this backend, one module per subject (`conformance::restore::…`).
        mod conformance {
            $crate::conformance_suite!(@subject writes;
                create_and_read_latest, create_with_taken_id_fails, update_bumps_ov_and_cv,
                stale_expected_ov_conflicts, writes_to_missing_items_fail, delete_is_logical_and_hidden,
                system_fields_cannot_be_injected, oversized_payloads_are_refused,
                racing_creates_of_one_id_have_one_winner, racing_writers_lose_cleanly,
                cv_orders_all_writes_of_a_collection, a_write_too_late_for_the_orphan_grace_is_not_committed);
            $crate::conformance_suite!(@subject reads;
                version_reads_never_cross_items, as_of_reads_follow_time, history_is_ordered_and_paged,
                cold_payloads_are_read_from_the_payload_store, a_payload_of_another_item_is_never_served);
            $crate::conformance_suite!(@subject listing;
                list_filters_pages_and_travels_in_time, collection_maps_index_and_require);
            $crate::conformance_suite!(@subject enrichment;
                enrichment_merges_and_records_provenance, concurrent_enrichments_lose_nothing,
                enrichments_offload_content_and_stay_sealed);
            $crate::conformance_suite!(@subject restore;
                restore_object_appends_the_old_version, restore_collection_plans_then_restores,
                restore_by_reference_copies_no_payload, writes_after_a_restore_by_reference_work,
                restore_by_reference_never_serves_another_items_data,
                restore_during_concurrent_writes_overwrites_nothing);
            $crate::conformance_suite!(@subject retention;
                retention_prunes_the_index_but_old_versions_stay_readable,
                retention_keeps_payloads_restored_versions_use, restore_after_retention_brings_back_pruned_versions,
                retention_never_deletes_a_payload_a_concurrent_restore_uses);
            $crate::conformance_suite!(@subject holds;
                held_items_survive_retention_and_refuse_erasure, a_collection_retention_hold_keeps_recent_items,
                side_records_keep_one_record_per_item_and_kind);
            $crate::conformance_suite!(@subject shredding;
                encrypted_items_are_sealed_readable_and_gone_once_shredded);
            $crate::conformance_suite!(@subject tiering;
                tiering_moves_cold_payloads_out_of_the_metadata_store);
            $crate::conformance_suite!(@subject counters;
                counters_count_every_write_exactly_once, counters_stay_true_after_retention);
            $crate::conformance_suite!(@subject content;
                content_properties_live_in_the_content_store, content_references_name_exactly_their_own_object);
            $crate::conformance_suite!(@subject idempotency;
                idempotent_writes_happen_once, concurrent_retries_with_one_key_write_once);
            $crate::conformance_suite!(@subject feed;
                the_index_reads_in_cv_order, history_start_follows_retention,
                a_restore_by_reference_too_late_for_the_orphan_grace_is_not_committed,
                the_feed_delivers_every_version_in_cv_order,
                a_cv_taken_and_never_committed_holds_the_feed_only_for_the_grace,
                a_lower_cv_committed_after_a_higher_one_is_not_skipped,
                a_resume_point_retention_cut_into_is_refused, subscriptions_follow_commits_in_cv_order);
            $crate::conformance_suite!(@subject history;
                verify_reports_exactly_what_changed_in_the_buckets, a_proof_ties_a_version_to_its_segment_root,
                verify_finds_a_changed_or_missing_ledger_segment, a_ledger_segment_whose_put_failed_is_written_again);
            $crate::conformance_suite!(@subject queue;
                queued_writes_land_exactly_once, queue_claims_are_exclusive);
            $crate::conformance_suite!(@pair rebuild;
                a_loaded_store_answers_every_read_as_the_original, loads_are_idempotent_and_refuse_a_taken_key,
                rebuild_progress_round_trips, a_rebuild_from_the_buckets_answers_every_read_as_before,
                unconfirmed_objects_are_left_out_unless_asked_for);
            $crate::conformance_suite!(@pair erase;
                an_erased_item_leaves_no_trace_and_nothing_brings_it_back,
                erase_by_filter_finds_every_version_and_a_cut_short_erasure_finishes,
                an_erasure_killed_midway_is_finished_by_the_next_engine, a_held_item_is_not_erased_until_its_hold_is_released);
        }
    };
    // Checks that need a second, empty store of the same backend (a rebuild's target).
    (@pair $subject:ident; $($name:ident),*) => {
        mod $subject {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let settings = $crate::conformance::settings(stringify!($name));
                let original = super::super::conformance_harness(settings.clone()).await;
                let fresh = super::super::conformance_harness(settings).await;
                $crate::conformance::$subject::$name(&original, &fresh).await;
            }
        )*}
    };
    (@subject $subject:ident; $($name:ident),*) => {
        mod $subject {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let settings = $crate::conformance::settings(stringify!($name));
                let harness = super::super::conformance_harness(settings).await;
                $crate::conformance::$subject::$name(&harness).await;
            }
        )*}
    };
}

/// Settings per check: the cold-payload check keeps nothing inline.
pub fn settings(check: &str) -> chronos::engine::EngineSettings {
    let mut s = chronos::engine::EngineSettings::default();
    if check == "cold_payloads_are_read_from_the_payload_store" || check == "a_payload_of_another_item_is_never_served"
    {
        s.inline_max_bytes = 0;
    }
    if check == "collection_maps_index_and_require" {
        s.collection_maps.insert(
            "things".into(),
            chronos::engine::CollectionMap {
                indexed_props: Some(vec!["kind".into(), "n".into()]),
                required_indexed: vec!["kind".into()],
                ..Default::default()
            },
        );
    }
    if check == "content_properties_live_in_the_content_store"
        || check == "content_references_name_exactly_their_own_object"
    {
        s.collection_maps.insert(
            "things".into(),
            chronos::engine::CollectionMap {
                content_props: [
                    ("photo".to_owned(), chronos::engine::ContentKind::Binary),
                    ("body".to_owned(), chronos::engine::ContentKind::Text),
                ]
                .into(),
                ..Default::default()
            },
        );
    }
    if check == "a_loaded_store_answers_every_read_as_the_original" {
        // Small data inline, the rest read from the payload store.
        s.inline_max_bytes = 40;
    }
    if check == "counters_count_every_write_exactly_once"
        || check == "counters_stay_true_after_retention"
        || check == "a_loaded_store_answers_every_read_as_the_original"
    {
        s.counter_rules.insert(
            "things".into(),
            vec![chronos::engine::CounterRule {
                name: "big".into(),
                when: json!({"n": {"$gte": 5}}),
                on: vec![Op::Create, Op::Update],
            }],
        );
    }
    if check == "an_erased_item_leaves_no_trace_and_nothing_brings_it_back" {
        s.collection_maps.insert(
            "things".into(),
            chronos::engine::CollectionMap {
                content_props: [("body".to_owned(), chronos::engine::ContentKind::Text)].into(),
                ..Default::default()
            },
        );
        s.counter_rules.insert(
            "things".into(),
            vec![chronos::engine::CounterRule {
                name: "big".into(),
                when: json!({"n": {"$gte": 5}}),
                on: vec![Op::Create, Op::Update],
            }],
        );
    }
    if check == "queued_writes_land_exactly_once" {
        s.queue = chronos::engine::QueueSettings {
            max_attempts: 3,
            base_delay: std::time::Duration::from_millis(1),
            max_delay: std::time::Duration::from_millis(4),
            lease: std::time::Duration::from_secs(30),
        };
    }
    if check == "restore_during_concurrent_writes_overwrites_nothing" {
        // Small pages, so the restore and the writers interleave over many pages.
        s.restore_page = 7;
    }
    if check == "a_write_too_late_for_the_orphan_grace_is_not_committed"
        || check == "a_restore_by_reference_too_late_for_the_orphan_grace_is_not_committed"
    {
        // No time at all between a write id and its commit: every commit comes too late.
        s.orphan_grace = std::time::Duration::ZERO;
    }
    if check == "a_cv_taken_and_never_committed_holds_the_feed_only_for_the_grace" {
        // A gap settles after the grace: short, so the check takes seconds.
        s.orphan_grace = std::time::Duration::from_secs(3);
    }
    if check == "a_collection_retention_hold_keeps_recent_items" {
        s.collection_maps.insert(
            "things".into(),
            chronos::engine::CollectionMap {
                hold: Some(chronos::engine::HoldRule {
                    mode: chronos::engine::LockMode::Governance,
                    days: 1,
                }),
                ..Default::default()
            },
        );
    }
    if check == "encrypted_items_are_sealed_readable_and_gone_once_shredded" {
        s.collection_maps.insert(
            "things".into(),
            chronos::engine::CollectionMap {
                indexed_props: Some(vec!["kind".into()]),
                encryption: chronos::engine::Encryption::PerItem,
                ..Default::default()
            },
        );
        s.encryption_key = Some(test_kek());
    }
    if check == "enrichments_offload_content_and_stay_sealed" {
        s.collection_maps.insert(
            "things".into(),
            chronos::engine::CollectionMap {
                indexed_props: Some(vec!["kind".into()]),
                content_props: [("body".to_owned(), chronos::engine::ContentKind::Text)].into(),
                encryption: chronos::engine::Encryption::PerItem,
                ..Default::default()
            },
        );
        s.encryption_key = Some(test_kek());
    }
    if check == "oversized_payloads_are_refused" {
        s.max_payload_bytes = 1000;
    }
    s
}

/// A key-encryption key for tests (a fixed one: nothing here is secret).
pub fn test_kek() -> chronos::engine::sealed::Kek {
    chronos::engine::sealed::Kek::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").expect("32 bytes")
}

/// Lets the macro accept both sync and async harness constructors.
pub async fn ready(h: impl IntoHarness) -> Harness {
    h.into_harness().await
}

pub trait IntoHarness {
    fn into_harness(self) -> impl std::future::Future<Output = Harness>;
}
impl IntoHarness for Harness {
    async fn into_harness(self) -> Harness {
        self
    }
}
impl<F: std::future::Future<Output = Harness>> IntoHarness for F {
    async fn into_harness(self) -> Harness {
        self.await
    }
}
