//! A rebuild's bulk loads on the real MongoDB: a handful of commands per thousand versions, and
//! the throughput they reach (printed; run with `--nocapture` to see it).

use std::time::Instant;

use chronos::engine::model::{Head, RequestStamp};
use chronos::engine::{CollectionName, EngineSettings, ItemId, Op, State, VersionEntry};
use serde_json::json;

use crate::support;

const ITEMS: usize = 5_000;
const VERSIONS_PER_ITEM: u64 = 4;

/// What a rebuild would find for `ITEMS` items of `VERSIONS_PER_ITEM` versions each, the last
/// one of every tenth item keyed.
fn history() -> (Vec<VersionEntry>, Vec<Head>) {
    let at = chronos::engine::model::now();
    let meta = json!({"kind": "bench", "n": 1}).as_object().unwrap().clone();
    let (mut versions, mut heads) = (vec![], vec![]);
    for i in 0..ITEMS {
        let id: ItemId = format!("item-{i:05}").parse().unwrap();
        for ov in 0..VERSIONS_PER_ITEM {
            versions.push(VersionEntry {
                id: id.clone(),
                ov,
                cv: i as u64 * VERSIONS_PER_ITEM + ov + 1,
                op: if ov == 0 { Op::Create } else { Op::Update },
                at,
                actor: Some("bench".into()),
                reason: None,
                write_id: format!("w{i}-{ov}"),
                size: 60,
                checksum: format!("sha256:{i:064}"),
                meta: meta.clone(),
                deleted: false,
                request: (i % 10 == 0 && ov + 1 == VERSIONS_PER_ITEM).then(|| RequestStamp {
                    key: format!("key-{i}").parse().unwrap(),
                    fingerprint: "f".into(),
                }),
                payload_ref: None,
            });
        }
        let last = versions.last().unwrap();
        heads.push(Head {
            id: id.clone(),
            ov: last.ov,
            cv: last.cv,
            write_id: last.write_id.clone(),
            inserted_at: at,
            updated_at: at,
            deleted_at: None,
            function_ids: vec![],
            state: State::New,
            size: 60,
            checksum: last.checksum.clone(),
            meta: meta.clone(),
            inline: Some(format!(
                "{{\"kind\":\"bench\",\"n\":1,\"text\":\"{}\"}}",
                "x".repeat(30)
            )),
            payload_ref: None,
        });
    }
    (versions, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_loads_cost_a_few_commands_per_thousand_versions() {
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "loaded".parse().unwrap();
    let (versions, heads) = history();
    h.engine.ensure_indexes(&c).await.unwrap();
    h.take_commands();

    let started = Instant::now();
    h.meta.load_versions(&c, &versions).await.unwrap();
    let entries_took = started.elapsed();
    let inserts = h.take_commands();
    let started = Instant::now();
    h.meta.load_heads(&c, &heads).await.unwrap();
    let heads_took = started.elapsed();
    let replaces = h.take_commands();
    // A resume loads everything again: every insert fails on a duplicate, and is accepted.
    let started = Instant::now();
    h.meta.load_versions(&c, &versions).await.unwrap();
    let again_took = started.elapsed();
    let started = Instant::now();
    h.meta.load_heads(&c, &heads).await.unwrap();
    let heads_again_took = started.elapsed();
    let again = h.take_commands();

    let per_s = |n: usize, t: std::time::Duration| n as f64 / t.as_secs_f64();
    println!(
        "{} entries in {entries_took:?} ({:.0}/s, {} insert commands); {} heads in {heads_took:?} ({:.0}/s, {} \
         commands); again: entries in {again_took:?} ({:.0}/s), heads in {heads_again_took:?} ({:.0}/s), {} commands",
        versions.len(),
        per_s(versions.len(), entries_took),
        inserts.len(),
        heads.len(),
        per_s(heads.len(), heads_took),
        replaces.len(),
        per_s(versions.len(), again_took),
        per_s(heads.len(), heads_again_took),
        again.len(),
    );
    assert!(inserts.iter().all(|c| c == "insert"), "{inserts:?}");
    assert_eq!(inserts.len(), versions.len() / 1000);
    // Per batch of heads, one transaction: delete those there, insert them all.
    let per_batch = ["delete", "insert", "commitTransaction"];
    assert_eq!(replaces, per_batch.repeat(heads.len() / 1000), "{replaces:?}");
    // Per batch of entries loaded again: its insert, and one find of the entries it met.
    assert!(
        again.len() <= 2 * versions.len() / 1000 + 3 * heads.len() / 1000,
        "{again:?}"
    );

    assert_eq!(h.meta.count_items(&c).await.unwrap(), ITEMS as u64);
    let key = "key-10".parse().unwrap();
    let keyed = h.meta.version_by_request(&c, &key).await.unwrap().unwrap();
    assert_eq!((keyed.id.as_str(), keyed.ov), ("item-00010", VERSIONS_PER_ITEM - 1));
    let total: u64 = h
        .meta
        .count_versions(&c, 0, &Default::default())
        .await
        .unwrap()
        .values()
        .sum();
    assert_eq!(total, versions.len() as u64, "loaded once, however often");
}
