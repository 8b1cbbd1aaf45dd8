//! Content properties: stored in the content store under a key naming exactly their own item.

use chronos::engine::{Error, ItemId, VersionTarget};
use serde_json::json;

use super::fixtures::{LATEST, coll, obj, who};
use crate::support::Harness;

pub async fn content_properties_live_in_the_content_store(h: &Harness) {
    use chronos::engine::ContentMode;
    let e = &h.engine;
    let photo = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let body = "long text ".repeat(500);
    let (id, _) = e
        .create(
            &coll(),
            None,
            obj(json!({"title": "t", "photo": photo, "body": body})),
            &who(),
        )
        .await
        .unwrap();
    let mut r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    let reference = &r.data["photo"]["$content"];
    assert_eq!(reference["kind"], "binary");
    assert_eq!(reference["size"], 70, "decoded bytes, not base64");
    assert!(
        reference["key"]
            .as_str()
            .unwrap()
            .starts_with(&format!("things/{id}/content/"))
    );
    assert!(r.data["body"]["$content"]["key"].as_str().unwrap().ends_with(".txt"));
    let size = e.history(&coll(), &id, None, 1, LATEST).await.unwrap()[0].size;
    assert!(
        size < 600,
        "the version JSON holds references, not the 5 KB of content: {size} bytes"
    );
    e.resolve_content(&coll(), &mut r, ContentMode::Inline).await.unwrap();
    assert_eq!(r.data["photo"], photo);
    assert_eq!(r.data["body"], body.as_str());

    // An update that keeps the same content stores it once (content-addressed) …
    e.update(
        &coll(),
        &id,
        obj(json!({"title": "t2", "photo": photo, "body": body})),
        None,
        &who(),
    )
    .await
    .unwrap();
    // … and a record read with references can be written back as it is.
    let as_read = e.get_latest(&coll(), &id, LATEST).await.unwrap().data;
    e.update(&coll(), &id, as_read, None, &who()).await.unwrap();
    let mut old = e.get_at(&coll(), &id, VersionTarget::Ov(0), LATEST).await.unwrap();
    e.resolve_content(&coll(), &mut old, ContentMode::Inline).await.unwrap();
    assert_eq!(old.data["body"], body.as_str());

    let bad = e
        .create(&coll(), None, obj(json!({"photo": "not base64!"})), &who())
        .await
        .unwrap_err();
    assert!(matches!(bad, Error::Validation { .. }), "{bad:?}");
    let wrong_type = e
        .create(&coll(), None, obj(json!({"body": 5})), &who())
        .await
        .unwrap_err();
    assert!(matches!(wrong_type, Error::Validation { .. }), "{wrong_type:?}");
    // Nobody can point a reference at another item's content.
    let foreign = e.get_latest(&coll(), &id, LATEST).await.unwrap().data["body"].clone();
    let err = e
        .create(&coll(), None, obj(json!({"body": foreign})), &who())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Validation { .. }), "{err:?}");
}

/// A content reference is exactly `<collection>/<id>/content/<sha256>.txt|bin` of its own item:
/// checked when written, and again when read (a value stored before the property became a
/// content property is never resolved or presigned unless it is one) — finding L5.
pub async fn content_references_name_exactly_their_own_object(h: &Harness) {
    use chronos::engine::ContentMode;
    let e = &h.engine;
    let body = "some text";
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    };
    let reference = |key: String| json!({"$content": {"kind": "text", "key": key, "size": body.len(), "sha256": sha}});
    let (other, _) = e
        .create(&coll(), None, obj(json!({"body": body})), &who())
        .await
        .unwrap();
    let own: ItemId = "own".parse().unwrap();
    // Written through the content property: a reference must be this item's exact key.
    for key in [
        format!("things/own/content/../../x/y/content/{sha}.txt"),
        format!("things/own/content/{sha}.txt.bak"),
        format!("things/own/content/{}.txt", sha.to_uppercase()),
        format!("things/own/content/{sha}.bin"),
        format!("things/own/content/sub/{sha}.txt"),
    ] {
        let err = e
            .create(
                &coll(),
                Some(own.clone()),
                obj(json!({"body": reference(key.clone())})),
                &who(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Validation { .. }), "{key}: {err:?}");
    }
    // Values written before `body` became a content property are not checked then …
    let before = h.replica_with(chronos::engine::EngineSettings::default());
    let foreign = format!("things/{other}/content/{sha}.txt");
    let dotted = format!("things/old/content/../../{other}/content/{sha}.txt");
    for (id, key) in [("old", foreign.clone()), ("dotted", dotted.clone())] {
        before
            .create(
                &coll(),
                Some(id.parse().unwrap()),
                obj(json!({"body": reference(key)})),
                &who(),
            )
            .await
            .unwrap();
    }
    // … but are refused at read, never resolved to another item's content or presigned.
    for id in ["old", "dotted"] {
        let id: ItemId = id.parse().unwrap();
        for mode in [
            ContentMode::Inline,
            ContentMode::Presigned(std::time::Duration::from_secs(60)),
        ] {
            let mut r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
            let err = e.resolve_content(&coll(), &mut r, mode).await.unwrap_err();
            assert!(matches!(err, Error::Corrupt(_)), "{id} {mode:?}: {err:?}");
        }
    }
    // The item's own reference still resolves.
    let mut r = e.get_latest(&coll(), &other, LATEST).await.unwrap();
    e.resolve_content(&coll(), &mut r, ContentMode::Inline).await.unwrap();
    assert_eq!(r.data["body"], body);
}
