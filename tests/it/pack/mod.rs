//! Write packing on real MongoDB + S3: writes made together share one pack, every version still
//! reads back exactly its own data (latest, by ov, cold), and an erasure blanks its item's bytes
//! inside a shared pack without disturbing the other members.

use chronos::engine::settings::PackWrites;
use chronos::engine::{
    Attribution, CollectionName, EngineSettings, EraseRequest, EraseTarget, ItemId, ReadOptions, VersionTarget,
};
use serde_json::json;

use crate::support;

mod collect;

fn together() -> EngineSettings {
    EngineSettings {
        pack_writes: PackWrites::Together,
        // Cold reads: every read fetches the payload, so every read goes through a slot.
        inline_max_bytes: 0,
        ..Default::default()
    }
}

/// A harness packing as `mode` says (cold reads), its collection and a writer.
async fn setup(mode: PackWrites) -> (support::Harness, CollectionName, Attribution) {
    let settings = EngineSettings {
        pack_writes: mode,
        ..together()
    };
    let h = support::mongo_s3(settings).await;
    (h, "packed".parse().unwrap(), Attribution::default())
}

/// Create `item-000` … at once (so their payloads can share packs), each `{"n": i, "secret":
/// "<word>-<i>"}`.
async fn create_at_once(
    h: &support::Harness,
    c: &CollectionName,
    n: usize,
    word: &str,
) -> Vec<(ItemId, chronos::engine::WriteOutcome)> {
    let writes = (0..n).map(|i| {
        let (e, c, word) = (h.engine.clone(), c.clone(), word.to_owned());
        tokio::spawn(async move {
            let data = json!({"n": i, "secret": format!("{word}-{i:03}")});
            let id: ItemId = format!("item-{i:03}").parse().unwrap();
            let data = data.as_object().unwrap().clone();
            e.create(&c, Some(id), data, &Attribution::default()).await.unwrap()
        })
    });
    let created = futures::future::join_all(writes).await;
    created.into_iter().map(Result::unwrap).collect()
}

/// Every object key of the harness's JSON bucket.
async fn all_keys(h: &support::Harness) -> Vec<String> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = h.payloads.list("", after.as_deref(), 1000).await.unwrap();
        let Some(last) = page.last().cloned() else { break };
        keys.extend(page);
        after = Some(last);
    }
    keys
}

/// Whether the JSON bucket holds an object whose key ends with `key` (a pack's, or a payload's own).
async fn stored(h: &support::Harness, key: &str) -> bool {
    all_keys(h).await.iter().any(|k| k.ends_with(key))
}

/// The pack key of each version of `id`, by ov (every version packed).
async fn version_packs(h: &support::Harness, c: &CollectionName, id: &ItemId) -> Vec<String> {
    let history = h.engine.history(c, id, None, 10, ReadOptions::default()).await.unwrap();
    history
        .iter()
        .map(|v| v.payload().pack.cloned().expect("packed").key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_made_together_share_a_pack_and_read_back_their_own_data() {
    let (h, c, who) = setup(PackWrites::Together).await;
    h.engine
        .create(&c, None, json!({"warm": 1}).as_object().unwrap().clone(), &who)
        .await
        .unwrap();
    let created = create_at_once(&h, &c, 48, "secret").await;
    let stored = h.engine.stored_payloads(&c).await.unwrap();
    let packed = stored.iter().filter(|p| p.pack.is_some()).count();
    let packs: std::collections::HashSet<_> = stored.iter().filter_map(|p| p.pack.as_ref().map(|s| &s.key)).collect();
    assert_eq!(stored.len(), 49, "one payload per write");
    assert!(
        packed >= 24 && packs.len() < packed,
        "{packed} packed into {} packs",
        packs.len()
    );
    for (i, (id, outcome)) in created.iter().enumerate() {
        let latest = h.engine.get_latest(&c, id, ReadOptions::default()).await.unwrap();
        let by_ov = h
            .engine
            .get_at(&c, id, VersionTarget::Ov(outcome.ov), ReadOptions::default())
            .await
            .unwrap();
        for r in [latest, by_ov] {
            let n = r.data["n"].as_u64().unwrap() as usize;
            assert_eq!(r.data["secret"], json!(format!("secret-{n:03}")), "write {i}");
        }
    }
    // An update of a packed item, and a delete (which keeps the packed data), still read right.
    let (id, _) = &created[0];
    let before = h.engine.get_latest(&c, id, ReadOptions::default()).await.unwrap();
    h.engine.delete(&c, id, None, &who).await.unwrap();
    let deleted = h
        .engine
        .get_latest(&c, id, ReadOptions { include_deleted: true })
        .await
        .unwrap();
    assert_eq!(deleted.data, before.data);
    // The buckets verify, packs included.
    h.engine.flush_ledger().await.unwrap();
    let report = h.engine.verify(std::time::Duration::ZERO).await.unwrap();
    assert!(report.intact(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_erasure_blanks_its_item_inside_a_shared_pack() {
    let (h, c, _) = setup(PackWrites::Always).await;
    create_at_once(&h, &c, 16, "needle").await;
    // Find an item that shares its pack.
    let stored = h.engine.stored_payloads(&c).await.unwrap();
    let shared = stored
        .iter()
        .find(|p| {
            let key = &p.pack.as_ref().unwrap().key;
            stored
                .iter()
                .filter(|o| o.pack.as_ref().is_some_and(|s| &s.key == key))
                .count()
                > 1
        })
        .expect("concurrent writes share a pack")
        .clone();
    let pack_key = shared.pack.clone().unwrap().key;
    let victim = shared.id.clone();
    let n = victim.as_str().trim_start_matches("item-").to_owned();
    let request = EraseRequest {
        target: EraseTarget::Item(victim.clone()),
        actor: None,
        reason: "test".into(),
    };
    h.engine.erase(&c, &request).await.unwrap();
    let raw = h
        .payloads
        .get(
            &all_keys(&h)
                .await
                .into_iter()
                .find(|k| k.ends_with(&pack_key))
                .expect("the pack stays"),
        )
        .await
        .unwrap()
        .unwrap();
    let needle = format!("needle-{n}");
    assert!(
        !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
        "the erased data is gone from the pack"
    );
    // Everyone else in it reads as before.
    for p in stored.iter().filter(|p| p.id != victim) {
        let r = h.engine.get_latest(&c, &p.id, ReadOptions::default()).await.unwrap();
        assert_eq!(
            r.data["secret"],
            json!(format!("needle-{}", p.id.as_str().trim_start_matches("item-")))
        );
    }
    assert!(h.engine.get_latest(&c, &victim, ReadOptions::default()).await.is_err());
}

/// An erasure finds its item's packs by their keys: it reads the packs that may hold the item,
/// not the footer of every pack in the collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_erasure_reads_only_the_packs_that_may_hold_its_item() {
    let (h, c, by) = setup(PackWrites::Always).await;
    // One after another: each write alone, in a pack of its own.
    let mut ids = Vec::new();
    for i in 0..30 {
        let id: ItemId = format!("item-{i:03}").parse().unwrap();
        let data = json!({"secret": format!("lone-{i:03}")}).as_object().unwrap().clone();
        h.engine.create(&c, Some(id.clone()), data, &by).await.unwrap();
        ids.push(id);
    }
    let packs = h.engine.stored_payloads(&c).await.unwrap();
    assert_eq!(packs.iter().filter(|p| p.pack.is_some()).count(), 30);
    let victim = ids[7].clone();
    let counter = std::sync::Arc::new(chronos::engine::store::decorators::RequestCounter::default());
    let engine = h.counted_replica(counter.clone());
    let request = EraseRequest {
        target: EraseTarget::Item(victim.clone()),
        actor: None,
        reason: "test".into(),
    };
    engine.erase(&c, &request).await.unwrap();
    let (requests, _) = counter.snapshot();
    // Reading every footer alone would be 30 GETs; the erasure's own bookkeeping is a handful.
    assert!(requests < 30, "the erasure made {requests} requests to the JSON bucket");
    let left = h.engine.stored_payloads(&c).await.unwrap();
    assert_eq!(left.len(), 29, "the victim's pack, all of it erased, is deleted");
    assert!(left.iter().all(|p| p.id != victim));
    assert!(h.engine.get_latest(&c, &ids[8], ReadOptions::default()).await.is_ok());
}

/// A read that found a packed version's slot just before a hold (or compaction) moved the bytes,
/// and whose GET comes after scrub deleted the pack nothing named any more, reads the version
/// where the index names it now instead of failing as damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_racing_a_move_reads_where_the_payload_lies_now() {
    use chronos::engine::store::ByteRange;
    let (h, c, by) = setup(PackWrites::Always).await;
    let data = json!({"secret": "moved"}).as_object().unwrap().clone();
    let (id, _) = h.engine.create(&c, None, data, &by).await.unwrap();
    let v = h.meta.version(&c, &id, 0).await.unwrap().unwrap();
    let (own, slot) = (v.payload().key(&c, &id), v.payload().pack.cloned().expect("packed"));
    // Both readers have read the index and wait on the pack.
    h.faults.hold_reads_containing.lock().unwrap().push(slot.key.clone());
    let latest = tokio::spawn({
        let (e, c, id) = (h.engine.clone(), c.clone(), id.clone());
        async move { e.get_latest(&c, &id, ReadOptions::default()).await }
    });
    let by_ov = tokio::spawn({
        let (e, c, id) = (h.engine.clone(), c.clone(), id.clone());
        async move { e.get_at(&c, &id, VersionTarget::Ov(0), ReadOptions::default()).await }
    });
    h.faults.until_holding(2).await;
    h.faults.hold_reads_containing.lock().unwrap().clear();
    // The mover: the envelope to an object of its own, the version and head repointed there,
    // and the pack, named by nothing now, deleted (as scrub does once it is past the grace).
    let range = ByteRange::Slice {
        offset: slot.offset,
        len: slot.len,
    };
    let envelope = h.payloads.get_range(&slot.key, range).await.unwrap().unwrap();
    h.payloads.put(&own, envelope).await.unwrap();
    assert_eq!(h.move_payload(&c, &id, 0, None).await, 2, "the version and the head");
    h.payloads.delete(&slot.key).await.unwrap();
    h.faults.release_one();
    h.faults.release_one();
    for read in [latest.await.unwrap(), by_ov.await.unwrap()] {
        let r = read.expect("read from where the payload lies now");
        assert_eq!(r.data["secret"], json!("moved"));
    }
}

/// A PUT that stalls (S3 servers do, now and then) holds up only its own writes: payloads that
/// arrive behind it get a PUT of their own once they have waited a few times as long as PUTs
/// take, instead of waiting for the stalled one to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_put_holds_up_only_its_own_writes() {
    let (h, c, by) = setup(PackWrites::Together).await;
    let write = |id: &str| {
        let (e, c, by) = (h.engine.clone(), c.clone(), by.clone());
        let (id, data): (ItemId, _) = (id.parse().unwrap(), json!({"n": 1}).as_object().unwrap().clone());
        tokio::spawn(async move { e.create(&c, Some(id), data, &by).await })
    };
    h.faults.hold_puts_containing.lock().unwrap().push("stalled".into());
    let stalled = write("stalled");
    h.faults.until_holding(1).await;
    let behind: Vec<_> = (0..3).map(|i| write(&format!("behind-{i}"))).collect();
    for w in behind {
        let done = tokio::time::timeout(std::time::Duration::from_secs(20), w).await;
        done.expect("a write behind a stalled PUT is stored without it")
            .unwrap()
            .unwrap();
    }
    assert!(!stalled.is_finished());
    assert_eq!(h.faults.holding.load(std::sync::atomic::Ordering::SeqCst), 1);
    h.faults.release_one();
    stalled.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_legal_hold_moves_packed_versions_to_objects_of_their_own() {
    let (h, c, who) = setup(PackWrites::Always).await;
    let (id, _) = h
        .engine
        .create(&c, None, json!({"v": 1}).as_object().unwrap().clone(), &who)
        .await
        .unwrap();
    assert!(
        h.engine
            .get_latest(&c, &id, ReadOptions::default())
            .await
            .unwrap()
            .payload()
            .pack
            .is_some()
    );
    h.engine.set_hold(&c, &id, "litigation", None).await.unwrap();
    let held = h.engine.get_latest(&c, &id, ReadOptions::default()).await.unwrap();
    assert!(held.payload().pack.is_none(), "the head names the version's own object");
    assert_eq!(held.data, *json!({"v": 1}).as_object().unwrap());
    let entry = &h
        .engine
        .history(&c, &id, None, 10, ReadOptions::default())
        .await
        .unwrap()[0];
    assert!(entry.payload().pack.is_none(), "so does the index");
    let own = entry.payload().key(&c, &id);
    assert!(stored(&h, &own).await, "and it exists");
}

/// The packed form of `reads::a_payload_of_another_item_is_never_served`: a version whose slot
/// names another item's envelope (a mixed-up index), a slot past its pack's end, and a pack that
/// is gone are each refused, never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_holding_another_items_envelope_is_never_served() {
    let (h, c, who) = setup(PackWrites::Always).await;
    let (a, _) = h
        .engine
        .create(&c, None, json!({"secret": "a"}).as_object().unwrap().clone(), &who)
        .await
        .unwrap();
    let (b, _) = h
        .engine
        .create(&c, None, json!({"secret": "b"}).as_object().unwrap().clone(), &who)
        .await
        .unwrap();
    let latest = |id| {
        let e = h.engine.clone();
        let c = c.clone();
        async move { e.get_latest(&c, &id, ReadOptions::default()).await }
    };
    let va = h
        .engine
        .history(&c, &a, None, 1, ReadOptions::default())
        .await
        .unwrap()
        .remove(0);
    let vb = h
        .engine
        .history(&c, &b, None, 1, ReadOptions::default())
        .await
        .unwrap()
        .remove(0);
    let (slot_a, slot_b) = (va.payload().pack.cloned().unwrap(), vb.payload().pack.cloned().unwrap());
    let corrupt = |r: Result<chronos::engine::Record, chronos::engine::Error>| {
        matches!(r, Err(chronos::engine::Error::Corrupt(_)))
    };
    let a_points_at = |slot: chronos::engine::PackSlot| {
        let (h, c, a) = (&h, c.clone(), a.clone());
        async move { h.move_payload(&c, &a, 0, Some(&slot)).await }
    };
    // a's version and head now name b's envelope.
    assert_eq!(a_points_at(slot_b.clone()).await, 2);
    assert!(corrupt(latest(a.clone()).await), "served another item's data");
    let by_ov = h
        .engine
        .get_at(&c, &a, VersionTarget::Ov(0), ReadOptions::default())
        .await;
    assert!(corrupt(by_ov));
    // A slot reaching past the pack's end.
    a_points_at(chronos::engine::PackSlot {
        len: slot_a.len + 4096,
        ..slot_a.clone()
    })
    .await;
    assert!(corrupt(latest(a.clone()).await));
    // Back where it was, it reads; with its pack gone, it is damage, not absence.
    a_points_at(slot_a.clone()).await;
    assert_eq!(latest(a.clone()).await.unwrap().data["secret"], json!("a"));
    let pack = all_keys(&h)
        .await
        .into_iter()
        .find(|k| k.ends_with(&slot_a.key))
        .unwrap();
    h.payloads.delete(&pack).await.unwrap();
    assert!(corrupt(latest(a).await));
    assert_eq!(latest(b).await.unwrap().data["secret"], json!("b"));
}

/// A presigned URL can't name a byte range: presigning a packed version copies its envelope to
/// the version's own key first, and the URL serves exactly that envelope.
/// The packed form of `restore::restore_by_reference_never_serves_another_items_data`: a version
/// restored by reference reads its target's slot, and a slot holding another item's envelope, or
/// another version of the same item, is refused for it too, never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_version_never_serves_another_items_envelope() {
    let (h, c, who) = setup(PackWrites::Always).await;
    let secret = |s: &str| json!({"secret": s}).as_object().unwrap().clone();
    let (a, _) = h.engine.create(&c, None, secret("a"), &who).await.unwrap();
    let (b, _) = h.engine.create(&c, None, secret("b"), &who).await.unwrap();
    h.engine.update(&c, &a, secret("a2"), Some(0), &who).await.unwrap();
    h.engine
        .restore_object(&c, &a, VersionTarget::Ov(0), Some(1), &who)
        .await
        .unwrap();
    let read = |ov| {
        let (e, c, a) = (h.engine.clone(), c.clone(), a.clone());
        async move {
            match ov {
                Some(ov) => e.get_at(&c, &a, VersionTarget::Ov(ov), ReadOptions::default()).await,
                None => e.get_latest(&c, &a, ReadOptions::default()).await,
            }
        }
    };
    assert_eq!(read(Some(2)).await.unwrap().data, secret("a"));
    let packs = version_packs(&h, &c, &a).await;
    assert_eq!(packs[2], packs[0], "restored by reference");
    let slot = |id: &ItemId, ov: u64| {
        let (meta, c, id) = (h.meta.clone(), c.clone(), id.clone());
        async move { meta.version(&c, &id, ov).await.unwrap().unwrap() }
    };
    let (a0, a1, b0) = (slot(&a, 0).await, slot(&a, 1).await, slot(&b, 0).await);
    for (wrong, what) in [(&b0, "another item's envelope"), (&a1, "another version's envelope")] {
        // v0, the restored v2 and the head all name v0's slot: all now point at `wrong`.
        let moved = h.move_payload(&c, &a, 0, wrong.payload().pack).await;
        assert_eq!(moved, 3, "v0, v2 and the head");
        for r in [read(Some(2)).await, read(None).await] {
            assert!(
                matches!(r, Err(chronos::engine::Error::Corrupt(_))),
                "{what} served instead of refused: {r:?}"
            );
        }
    }
    h.move_payload(&c, &a, 0, a0.payload().pack).await;
    assert_eq!(read(None).await.unwrap().data, secret("a"), "back in place, it reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_packed_version_is_presigned_through_a_copy_of_its_own() {
    let (h, c, who) = setup(PackWrites::Always).await;
    let data = json!({"secret": "presigned"}).as_object().unwrap().clone();
    let (id, _) = h.engine.create(&c, None, data.clone(), &who).await.unwrap();
    let record = h.engine.get_latest(&c, &id, ReadOptions::default()).await.unwrap();
    assert!(record.payload().pack.is_some());
    let ttl = std::time::Duration::from_secs(60);
    let url = h.engine.presign_payload(&c, &record, ttl).await.unwrap();
    let envelope: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(
        (envelope["chronos"]["id"].as_str(), &envelope["data"]),
        (Some(id.as_str()), &json!(data))
    );
    // Asked again, the copy is reused (one object of its own, not one per request).
    let again = h.engine.presign_payload(&c, &record, ttl).await.unwrap();
    assert_eq!(reqwest::get(&again).await.unwrap().status(), 200);
    let own = record.payload().key(&c, &id);
    assert_eq!(all_keys(&h).await.iter().filter(|k| k.ends_with(&own)).count(), 1);
}

/// The packed form of `history::verify_reports_exactly_what_changed_in_the_buckets`: bytes changed
/// inside a pack are reported as altered (and only that member), a pack that is gone as missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_reports_what_changed_inside_packs() {
    let (h, c, _) = setup(PackWrites::Always).await;
    let created = create_at_once(&h, &c, 6, "verify").await;
    // Written alone afterwards: a pack of its own.
    let data = json!({"n": 99}).as_object().unwrap().clone();
    let gone: ItemId = "lone".parse().unwrap();
    h.engine
        .create(&c, Some(gone.clone()), data, &Attribution::default())
        .await
        .unwrap();
    h.engine.flush_ledger().await.unwrap();
    let report = h.engine.verify(std::time::Duration::ZERO).await.unwrap();
    assert!(report.intact(), "{report:?}");
    let slot_of = |id: &ItemId| {
        let (e, c, id) = (h.engine.clone(), c.clone(), id.clone());
        async move {
            let r = e.get_latest(&c, &id, ReadOptions::default()).await.unwrap();
            r.payload().pack.cloned().unwrap()
        }
    };
    let full_key = |pack: String| {
        let h = &h;
        async move { all_keys(h).await.into_iter().find(|k| k.ends_with(&pack)).unwrap() }
    };
    // One member's data changed in place (same length: no other slot moves).
    let altered = &created[0].0;
    let slot = slot_of(altered).await;
    let key = full_key(slot.key.clone()).await;
    let body = h.payloads.get(&key).await.unwrap().unwrap();
    let member = &body[slot.offset as usize..(slot.offset + slot.len) as usize];
    let at = member.windows(10).position(|w| w == b"verify-000").unwrap() + slot.offset as usize;
    let mut tampered = body.to_vec();
    tampered[at..at + 10].copy_from_slice(b"verify-999");
    h.payloads.put(&key, tampered.into()).await.unwrap();
    // Another member's pack deleted.
    let gone_pack = full_key(slot_of(&gone).await.key).await;
    h.payloads.delete(&gone_pack).await.unwrap();

    let report = h.engine.verify(std::time::Duration::ZERO).await.unwrap();
    let names = |f: &[chronos::engine::rebuild::verify::Finding]| f.iter().map(|f| f.key.clone()).collect::<Vec<_>>();
    let (altered_keys, missing_keys) = (names(&report.altered), names(&report.missing));
    assert_eq!(altered_keys.len(), 1, "{report:?}");
    assert!(
        altered_keys[0].contains(&format!("{c}/{altered} v0")),
        "{altered_keys:?}"
    );
    assert!(
        missing_keys.iter().any(|k| k.contains(&format!("{c}/{gone} v0"))),
        "{missing_keys:?}"
    );
    assert!(report.orphaned.is_empty() && report.dangling.is_empty(), "{report:?}");
}
