//! Unit tests of the model: names, ids, keys and checksums.
use super::*;

#[test]
fn names_reject_path_tricks() {
    for bad in ["", ".", "..", "a/b", "../x", "a\0b", "a b", "-x", ".hidden", "é"] {
        assert!(bad.parse::<ItemId>().is_err(), "id {bad:?} accepted");
        assert!(bad.parse::<CollectionName>().is_err(), "collection {bad:?} accepted");
    }
    assert!("x".repeat(129).parse::<ItemId>().is_err());
    assert!("x".repeat(65).parse::<CollectionName>().is_err());
    assert!("system_x".parse::<CollectionName>().is_err());
    assert!("Chronos".parse::<CollectionName>().is_err());
    assert_eq!("a.b:c-d_e".parse::<ItemId>().unwrap().as_str(), "a.b:c-d_e");
    assert_eq!("orders_2024".parse::<CollectionName>().unwrap().as_str(), "orders_2024");
}

#[test]
fn content_checksum_detects_tampering() {
    let mut data = Map::new();
    data.insert("a".into(), Value::from(1));
    let c = Content::new(&data).unwrap();
    check_data(&c.json, &c.checksum, &"x").unwrap();
    assert_eq!(parse_checked(&c.json, &"x").unwrap(), data);
    assert!(matches!(
        check_data(r#"{"a":2}"#, &c.checksum, &"x"),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn payload_keys_differ_per_attempt() {
    let c: CollectionName = "c".parse().unwrap();
    let id: ItemId = "i".parse().unwrap();
    assert_ne!(payload_key(&c, &id, 1, "w1"), payload_key(&c, &id, 1, "w2"));
    assert_eq!(payload_key(&c, &id, 3, "w"), "c/i/v3.w.json");
}
