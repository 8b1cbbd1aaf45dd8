//! Tests of the MongoDB store's document conversions that need no server.

use bson::doc;

use super::docs::head_from_doc;

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
    let head = head_from_doc(&"x".parse().unwrap(), doc).unwrap();
    assert_eq!(head.deleted_at, Some(head.updated_at));
    assert_eq!(head.updated_at.as_millisecond(), 2_000);
}
