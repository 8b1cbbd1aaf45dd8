//! The conformance suite with write packing on (`packWrites: always`: every payload in a pack, a
//! write alone in a pack of one), so reads, restores, retention, holds, erasure, the ledger and
//! rebuild all meet packed versions — on the in-memory fakes, on real MongoDB + S3 and on the
//! embedded store (SQLite + files).
//!
//! Left out here: five checks that reach for a version's own object by its key (to swap or
//! delete it, or to see retention delete it); a packed version has none. Their packed forms are
//! in `pack/` (a slot naming another item's envelope, bytes changed inside a pack, a pack
//! collected once nothing names it, the pack a restored version reads from kept through retention
//! and scrub, compaction racing a restore by reference). Two checks are packed only (only
//! packed bytes ever move): a slot moved meanwhile is never committed by a restore that read it
//! before, and a move from a place no longer named changes nothing.

use chronos::engine::EngineSettings;
use chronos::engine::settings::PackWrites;

fn packed(mut settings: EngineSettings) -> EngineSettings {
    settings.pack_writes = PackWrites::Always;
    settings
}

/// The suite's checks that hold for packed payloads, on the backend `conformance_harness` builds.
macro_rules! packed_suite {
    () => {
        mod conformance {
            crate::conformance_suite!(@subject writes;
                create_and_read_latest, create_with_taken_id_fails, update_bumps_ov_and_cv,
                stale_expected_ov_conflicts, writes_to_missing_items_fail, delete_is_logical_and_hidden,
                system_fields_cannot_be_injected, oversized_payloads_are_refused,
                racing_creates_of_one_id_have_one_winner, racing_writers_lose_cleanly,
                cv_orders_all_writes_of_a_collection, a_write_too_late_for_the_orphan_grace_is_not_committed);
            crate::conformance_suite!(@subject reads;
                version_reads_never_cross_items, as_of_reads_follow_time, history_is_ordered_and_paged,
                cold_payloads_are_read_from_the_payload_store);
            crate::conformance_suite!(@subject listing;
                list_filters_pages_and_travels_in_time, collection_maps_index_and_require);
            crate::conformance_suite!(@subject enrichment;
                enrichment_merges_and_records_provenance, concurrent_enrichments_lose_nothing,
                enrichments_offload_content_and_stay_sealed);
            crate::conformance_suite!(@subject restore;
                restore_object_appends_the_old_version, restore_collection_plans_then_restores,
                restore_by_reference_copies_no_payload, writes_after_a_restore_by_reference_work,
                a_reference_to_a_slot_moved_meanwhile_is_not_committed, a_move_from_a_place_no_longer_named_changes_nothing,
                restore_during_concurrent_writes_overwrites_nothing);
            crate::conformance_suite!(@subject retention;
                retention_prunes_the_index_but_old_versions_stay_readable, restore_after_retention_brings_back_pruned_versions);
            crate::conformance_suite!(@subject holds;
                held_items_survive_retention_and_refuse_erasure, a_collection_retention_hold_keeps_recent_items,
                side_records_keep_one_record_per_item_and_kind);
            crate::conformance_suite!(@subject shredding;
                encrypted_items_are_sealed_readable_and_gone_once_shredded);
            crate::conformance_suite!(@subject tiering;
                tiering_moves_cold_payloads_out_of_the_metadata_store);
            crate::conformance_suite!(@subject counters;
                counters_count_every_write_exactly_once, counters_stay_true_after_retention);
            crate::conformance_suite!(@subject content;
                content_properties_live_in_the_content_store, content_references_name_exactly_their_own_object);
            crate::conformance_suite!(@subject idempotency;
                idempotent_writes_happen_once, concurrent_retries_with_one_key_write_once);
            crate::conformance_suite!(@subject feed;
                the_index_reads_in_cv_order, history_start_follows_retention,
                a_restore_by_reference_too_late_for_the_orphan_grace_is_not_committed,
                the_feed_delivers_every_version_in_cv_order,
                a_cv_taken_and_never_committed_holds_the_feed_only_for_the_grace,
                a_lower_cv_committed_after_a_higher_one_is_not_skipped,
                a_resume_point_retention_cut_into_is_refused, subscriptions_follow_commits_in_cv_order);
            crate::conformance_suite!(@subject history; a_proof_ties_a_version_to_its_segment_root,
                verify_finds_a_changed_or_missing_ledger_segment, a_ledger_segment_whose_put_failed_is_written_again);
            crate::conformance_suite!(@subject queue;
                queued_writes_land_exactly_once, queue_claims_are_exclusive);
            crate::conformance_suite!(@pair rebuild;
                a_loaded_store_answers_every_read_as_the_original, loads_are_idempotent_and_refuse_a_taken_key,
                rebuild_progress_round_trips, a_rebuild_from_the_buckets_answers_every_read_as_before,
                unconfirmed_objects_are_left_out_unless_asked_for);
            crate::conformance_suite!(@pair erase;
                an_erased_item_leaves_no_trace_and_nothing_brings_it_back,
                erase_by_filter_finds_every_version_and_a_cut_short_erasure_finishes,
                an_erasure_killed_midway_is_finished_by_the_next_engine, a_held_item_is_not_erased_until_its_hold_is_released);
        }
    };
}

mod memory {
    use crate::support;

    async fn conformance_harness(settings: chronos::engine::EngineSettings) -> support::Harness {
        crate::conformance::ready(support::memory(super::packed(settings))).await
    }

    packed_suite!();
}

mod mongo_s3 {
    use crate::support;

    async fn conformance_harness(settings: chronos::engine::EngineSettings) -> support::Harness {
        crate::conformance::ready(support::mongo_s3(super::packed(settings))).await
    }

    packed_suite!();
}

mod embedded {
    use crate::support;

    async fn conformance_harness(settings: chronos::engine::EngineSettings) -> support::Harness {
        crate::conformance::ready(support::embedded(super::packed(settings))).await
    }

    packed_suite!();
}
