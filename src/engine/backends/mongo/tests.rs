//! Tests of the MongoDB store's document conversions that need no server.

use bson::doc;

use super::docs::head_from_raw;

/// With clocks that disagree, a delete's own time was stored (`deletedAt` earlier than the
/// clamped `updatedAt`), so the head said it was deleted before its last update (review L10).
#[test]
fn a_deleted_head_is_deleted_at_its_delete_versions_time() {
    let later = bson::DateTime::from_millis(2_000);
    let doc = doc! {
        "ov": 3_i64, "cv": 9_i64, "writeId": "w", "insertedAt": bson::DateTime::from_millis(0),
        "updatedAt": later, "deletedAt": bson::DateTime::from_millis(1_000),
        "state": "new", "size": 0_i64, "checksum": "c",
    };
    let raw = bson::RawDocumentBuf::try_from(&doc).unwrap();
    let head = head_from_raw(&"x".parse().unwrap(), &raw).unwrap();
    assert_eq!(head.deleted_at, Some(head.updated_at));
    assert_eq!(head.updated_at.as_millisecond(), 2_000);
}

/// The raw decoder reads every field a head has, and names the one missing.
#[test]
fn a_head_decodes_from_raw_bson_field_by_field() {
    let full = doc! {
        "_id": "x", "ov": 2_i64, "cv": 7_i32, "writeId": "w", "insertedAt": bson::DateTime::from_millis(1),
        "updatedAt": bson::DateTime::from_millis(5), "deletedAt": null, "functionIds": ["f"],
        "state": "processed", "size": 12_i64, "checksum": "c",
        "meta": {"s": "a", "n": 3_i64, "i": 4_i32, "f": 1.5, "b": true, "z": null},
        "data": "{\"a\":1}",
        "payloadRef": {"of": "w0", "ov": 1_i64, "writeId": "w0", "functionIds": [], "pack": {"key": "k", "offset": 3_i64, "len": 9_i64}},
    };
    let id = "x".parse().unwrap();
    let head = head_from_raw(&id, &bson::RawDocumentBuf::try_from(&full).unwrap()).unwrap();
    assert_eq!((head.ov, head.cv, head.size), (2, 7, 12));
    assert_eq!((head.write_id.as_str(), head.checksum.as_str()), ("w", "c"));
    assert_eq!(head.state, crate::engine::model::State::Processed);
    assert_eq!(head.function_ids, ["f"]);
    assert_eq!(head.deleted_at, None);
    assert_eq!(
        serde_json::Value::Object(head.meta),
        serde_json::json!({"s": "a", "n": 3, "i": 4, "f": 1.5, "b": true, "z": null})
    );
    assert_eq!(head.inline.as_deref(), Some("{\"a\":1}"));
    let r = head.payload_ref.unwrap();
    assert_eq!((r.of.as_str(), r.ov), ("w0", 1));
    assert_eq!(r.pack.map(|p| (p.key, p.offset, p.len)), Some(("k".to_owned(), 3, 9)));

    for field in [
        "ov",
        "cv",
        "writeId",
        "insertedAt",
        "updatedAt",
        "state",
        "size",
        "checksum",
    ] {
        let mut partial = full.clone();
        partial.remove(field);
        let err = head_from_raw(&id, &bson::RawDocumentBuf::try_from(&partial).unwrap()).unwrap_err();
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
    let mut negative = full.clone();
    negative.insert("ov", -1_i64);
    assert!(head_from_raw(&id, &bson::RawDocumentBuf::try_from(&negative).unwrap()).is_err());
}
