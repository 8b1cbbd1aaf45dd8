//! Enrichments: merged writes that record their provenance and, racing, lose nothing.

use chronos::engine::{Enrichment, Error, VersionTarget};
use serde_json::json;

use super::fixtures::{LATEST, coll, enrichment, obj, who};
use crate::support::Harness;

pub async fn enrichment_merges_and_records_provenance(h: &Harness) {
    let e = &h.engine;
    let base =
        obj(json!({"name": "n", "tags": ["a"], "addr": {"city": "X", "zip": "1"}, "people": [{"id": "p1", "age": 1}]}));
    let (id, _) = e.create(&coll(), None, base, &who()).await.unwrap();
    let patches = [
        obj(
            json!({"tags": ["b", "a"], "addr": {"zip": null, "street": "S"}, "people": [{"id": "p1", "age": 2}, {"id": "p2"}]}),
        ),
        obj(json!({"score": 7})),
    ];
    let out = e
        .enrich(&coll(), &id, &patches, &enrichment("geo"), &who())
        .await
        .unwrap();
    assert_eq!(out.ov, 1, "one version per call, however many patches");
    let r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!(
        r.data,
        obj(
            json!({"name": "n", "tags": ["a", "b"], "addr": {"city": "X", "zip": null, "street": "S"},
                   "people": [{"id": "p1", "age": 2}, {"id": "p2"}], "score": 7})
        )
    );
    assert_eq!(r.system.function_ids, ["geo"]);
    // Re-applying the same patches changes no data but is still a version; functionIds stay a set.
    e.enrich(&coll(), &id, &patches, &enrichment("geo"), &who())
        .await
        .unwrap();
    e.enrich(&coll(), &id, &[obj(json!({"x": 1}))], &enrichment("ner"), &who())
        .await
        .unwrap();
    let r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!(r.ov, 3);
    assert_eq!(r.system.function_ids, ["geo", "ner"]);
    let v2 = e.get_at(&coll(), &id, VersionTarget::Ov(2), LATEST).await.unwrap();
    assert_eq!(v2.system.function_ids, ["geo"], "each version records its provenance");
    // A plain update keeps the provenance.
    e.update(&coll(), &id, obj(json!({"replaced": true})), None, &who())
        .await
        .unwrap();
    assert_eq!(
        e.get_latest(&coll(), &id, LATEST).await.unwrap().system.function_ids,
        ["geo", "ner"]
    );

    let stale = Enrichment {
        function_id: None,
        expected_ov: Some(0),
    };
    assert!(matches!(
        e.enrich(&coll(), &id, &patches, &stale, &who()).await,
        Err(Error::VersionConflict { current: 4, .. })
    ));
    assert!(matches!(
        e.enrich(&coll(), &id, &[], &stale, &who()).await,
        Err(Error::Validation { .. })
    ));
    e.delete(&coll(), &id, None, &who()).await.unwrap();
    assert!(matches!(
        e.enrich(&coll(), &id, &patches, &enrichment("geo"), &who()).await,
        Err(Error::NotFound(_))
    ));
}

/// Enrichments without an expected ov race, yet none of their additions is lost.
pub async fn concurrent_enrichments_lose_nothing(h: &Harness) {
    let (id, _) = h
        .engine
        .create(&coll(), None, obj(json!({"seen": []})), &who())
        .await
        .unwrap();
    let tasks = (0..8).map(|w| {
        let e = h.engine.clone();
        let id = id.clone();
        tokio::spawn(async move {
            for i in 0..3 {
                let patch = obj(json!({"seen": [format!("{w}-{i}")]}));
                e.enrich(&coll(), &id, &[patch], &enrichment(&format!("f{w}")), &who())
                    .await
                    .unwrap();
            }
        })
    });
    for t in futures::future::join_all(tasks).await {
        t.unwrap();
    }
    let r = h.engine.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!(r.ov, 24);
    let mut seen: Vec<String> = r.data["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    let mut expected: Vec<String> = (0..8).flat_map(|w| (0..3).map(move |i| format!("{w}-{i}"))).collect();
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(r.system.function_ids.len(), 8);
}

/// An enrichment's merged data is written like an update's: content properties go to the content
/// store (a reference in the version), and in an encrypted collection nothing is kept in clear —
/// neither in the head nor in any object.
pub async fn enrichments_offload_content_and_stay_sealed(h: &Harness) {
    use chronos::engine::ContentMode;
    // `settings` makes `things` encrypted per item, with `body` a text content property.
    let e = &h.engine;
    let marker = format!("MARKER-{}", uuid::Uuid::now_v7().simple());
    let (id, _) = e
        .create(
            &coll(),
            None,
            obj(json!({"kind": "doc", "secret": marker, "body": "first"})),
            &who(),
        )
        .await
        .unwrap();
    let body = "enriched text ".repeat(200);
    let patch = obj(json!({"body": body, "tags": ["x"]}));
    let out = e
        .enrich(&coll(), &id, &[patch], &enrichment("summariser"), &who())
        .await
        .unwrap();
    assert_eq!(out.ov, 1);
    let head = h.meta.head(&coll(), &id).await.unwrap().unwrap();
    assert!(head.inline.is_none(), "no clear copy inline in the head");
    assert_eq!(
        super::shredding::objects_holding(h, &marker).await,
        Vec::<String>::new(),
        "no object holds the data in clear"
    );
    let mut r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    let key = r.data["body"]["$content"]["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("things/{id}/content/")), "{key}");
    assert_eq!(
        (r.data["secret"].as_str(), r.data["tags"].clone()),
        (Some(marker.as_str()), json!(["x"]))
    );
    assert_eq!(r.system.function_ids, ["summariser"]);
    e.resolve_content(&coll(), &mut r, ContentMode::Inline).await.unwrap();
    assert_eq!(r.data["body"], body.as_str());
    // An enrichment that leaves the content alone keeps the same reference (content-addressed).
    e.enrich(&coll(), &id, &[obj(json!({"n": 1}))], &enrichment("counter"), &who())
        .await
        .unwrap();
    let r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!(r.data["body"]["$content"]["key"], key.as_str());
    assert_eq!(r.system.function_ids, ["summariser", "counter"]);
}
