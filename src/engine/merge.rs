//! Enrichment's merge: deep-merge objects, union arrays.
//!
//! - Objects merge key by key; a key absent from the patch keeps its value, `null` overwrites.
//! - Arrays are unioned: scalars by value; objects with a string `id` (or `_id`) are matched by it
//!   and merged (elements of one patch array that share an id, too); anything else is added unless
//!   an equal element is already there.
//! - Any other combination: the patch's value replaces the old one.
//!
//! A union costs O(base + patch): elements are found through a hash of their identity or of their
//! whole value, not by scanning the growing array (a 2M-element patch once meant ~10¹²
//! comparisons on a runtime thread while the item was held).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

use serde_json::{Map, Value};

/// Merge `patch` into `base`.
pub fn merge_object(base: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, p) in patch {
        match (base.get_mut(key), p) {
            (Some(Value::Object(b)), Value::Object(p)) => merge_object(b, p),
            (Some(Value::Array(b)), Value::Array(p)) => union(b, p),
            _ => {
                base.insert(key.clone(), fresh(p));
            }
        }
    }
}

/// `v` as a patch adds it, all the way down: elements of one array that share an id are one
/// element (the later merged into the first), as applying the patch again would make them; all
/// else as it is. Whatever a patch adds is added this way, so that applying it twice changes
/// nothing the second time.
fn fresh(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), fresh(x))).collect()),
        Value::Array(a) => {
            let mut out: Vec<Value> = Vec::with_capacity(a.len());
            let mut by_id: HashMap<&str, usize> = HashMap::new();
            for x in a {
                let Some(id) = identity(x) else {
                    out.push(fresh(x));
                    continue;
                };
                match by_id.get(id) {
                    Some(&i) => {
                        if let (Value::Object(first), Value::Object(later)) = (&mut out[i], x) {
                            merge_object(first, later);
                        }
                    }
                    None => {
                        by_id.insert(id, out.len());
                        out.push(fresh(x));
                    }
                }
            }
            Value::Array(out)
        }
        other => other.clone(),
    }
}

fn identity(v: &Value) -> Option<&str> {
    let o = v.as_object()?;
    o.get("id").or_else(|| o.get("_id")).and_then(Value::as_str)
}

fn union(base: &mut Vec<Value>, patch: &[Value]) {
    // Per-call random keys: no input can be built to make every element collide.
    let hasher = RandomState::new();
    // Identified elements by id (the first one wins, as a scan from the front would), and the
    // others by a hash of their value. An identified element can only equal another with the same
    // id, so merging into one never changes what the value index holds.
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut by_value: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, b) in base.iter().enumerate() {
        match identity(b) {
            Some(id) => {
                by_id.entry(id.to_owned()).or_insert(i);
            }
            None => by_value.entry(fingerprint(&hasher, b)).or_default().push(i),
        }
    }
    for p in patch {
        if let Some(id) = identity(p) {
            match by_id.get(id) {
                Some(&i) => {
                    if let (Value::Object(b), Value::Object(p)) = (&mut base[i], p) {
                        merge_object(b, p);
                    }
                }
                None => {
                    by_id.insert(id.to_owned(), base.len());
                    base.push(fresh(p));
                }
            }
            continue;
        }
        let p = fresh(p);
        let same = by_value.entry(fingerprint(&hasher, &p)).or_default();
        if !same.iter().any(|&i| base[i] == p) {
            same.push(base.len());
            base.push(p);
        }
    }
}

/// A hash that agrees with `Value`'s equality: objects compare without regard to key order, so
/// their entries are hashed in key order; numbers compare by representation (`1` ≠ `1.0`).
fn fingerprint(state: &RandomState, v: &Value) -> u64 {
    let mut h = state.build_hasher();
    feed(state, v, &mut h);
    h.finish()
}

fn feed(state: &RandomState, v: &Value, h: &mut impl Hasher) {
    match v {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, b).hash(h),
        Value::Number(n) => (2u8, n.to_string()).hash(h),
        Value::String(s) => (3u8, s).hash(h),
        Value::Array(a) => {
            (4u8, a.len()).hash(h);
            a.iter().for_each(|x| feed(state, x, h));
        }
        Value::Object(o) => {
            (5u8, o.len()).hash(h);
            let mut entries: Vec<(&String, u64)> = o.iter().map(|(k, x)| (k, fingerprint(state, x))).collect();
            entries.sort_unstable();
            entries.hash(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn merged(base: Value, patch: Value) -> Value {
        let mut b = base.as_object().unwrap().clone();
        merge_object(&mut b, patch.as_object().unwrap());
        Value::Object(b)
    }

    #[test]
    fn documented_semantics() {
        assert_eq!(
            merged(
                json!({"keep": 1, "gone": 2, "deep": {"a": 1, "b": 2}, "tags": ["x"], "n": 1}),
                json!({"gone": null, "deep": {"b": 3, "c": 4}, "tags": ["y", "x"], "n": "now a string"})
            ),
            json!({"keep": 1, "gone": null, "deep": {"a": 1, "b": 3, "c": 4}, "tags": ["x", "y"], "n": "now a string"})
        );
        assert_eq!(
            merged(
                json!({"items": [{"id": "a", "v": 1, "w": 1}, {"_id": "b", "v": 1}, {"anon": 1}]}),
                json!({"items": [{"id": "a", "v": 2}, {"_id": "b", "x": true}, {"anon": 1}, {"anon": 2}, {"id": "c"}]})
            ),
            json!({"items": [{"id": "a", "v": 2, "w": 1}, {"_id": "b", "v": 1, "x": true}, {"anon": 1}, {"anon": 2}, {"id": "c"}]})
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-5i64..5).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-c]|id", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn json_object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[a-d]|id", json_value(), 0..5).prop_map(|m| m.into_iter().collect())
    }

    /// Every element of `sub` has a counterpart in `sup` (by id for identified objects).
    fn contains_all(sup: &[Value], sub: &[Value]) -> bool {
        sub.iter().all(|s| match identity(s) {
            Some(id) => sup.iter().any(|x| identity(x) == Some(id)),
            None => sup.contains(s),
        })
    }

    /// The union as first written (a scan per element): the reference the hashed one must match.
    fn naive_union(base: &mut Vec<Value>, patch: &[Value]) {
        for p in patch {
            if let Some(id) = identity(p)
                && let Some(existing) = base.iter_mut().find(|b| identity(b) == Some(id))
            {
                if let (Value::Object(b), Value::Object(p)) = (existing, p) {
                    merge_object(b, p);
                }
                continue;
            }
            let p = fresh(p);
            if !base.contains(&p) {
                base.push(p);
            }
        }
    }

    #[test]
    fn elements_of_one_patch_that_share_an_id_are_one_element_from_the_first_application() {
        // Found by `reapplying_a_patch_changes_nothing`: the patch's array went in as it was, two
        // elements with id "", and applying the patch again merged the second into the first.
        let patch =
            json!({"a": [{"id": ""}, {"a": null, "id": ""}], "o": {"l": [{"id": "x", "n": 1}, {"id": "x", "m": 2}]}});
        let once = merged(json!({}), patch.clone());
        assert_eq!(
            once,
            json!({"a": [{"id": "", "a": null}], "o": {"l": [{"id": "x", "n": 1, "m": 2}]}})
        );
        assert_eq!(merged(once.clone(), patch), once);
    }

    #[test]
    fn objects_equal_in_another_key_order_are_one_element() {
        let a: Value = serde_json::from_str(r#"{"x": 1, "y": [1, {"p": 1, "q": 2}]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"y": [1, {"q": 2, "p": 1}], "x": 1}"#).unwrap();
        assert_eq!(a, b);
        let mut base = vec![a, json!(1), json!(1.0)];
        union(&mut base, &[b, json!(1), json!(1.0), json!("1")]);
        assert_eq!(base.len(), 4, "{base:?}");
    }

    /// 200 000 elements on each side: a scan per element would be ~4·10¹⁰ comparisons.
    #[test]
    fn a_large_union_is_linear() {
        let base: Vec<Value> = (0..200_000).map(Value::from).collect();
        let patch: Vec<Value> = (100_000..300_000)
            .map(|i| {
                if i % 2 == 0 {
                    json!({"id": format!("i{i}"), "n": i})
                } else {
                    Value::from(i)
                }
            })
            .collect();
        let mut out = base.clone();
        union(&mut out, &patch);
        assert_eq!(out.len(), 200_000 + 100_000 + 50_000);
    }

    proptest! {
        #[test]
        fn hashed_union_matches_the_scan(a in prop::collection::vec(json_value(), 0..8), b in prop::collection::vec(json_value(), 0..8)) {
            let mut fast = a.clone();
            union(&mut fast, &b);
            let mut slow = a.clone();
            naive_union(&mut slow, &b);
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn reapplying_a_patch_changes_nothing(base in json_object(), patch in json_object()) {
            let mut once = base.clone();
            merge_object(&mut once, &patch);
            let mut twice = once.clone();
            merge_object(&mut twice, &patch);
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn absent_keys_keep_and_patched_keys_are_present(base in json_object(), patch in json_object()) {
            let mut out = base.clone();
            merge_object(&mut out, &patch);
            for (k, v) in &base {
                if !patch.contains_key(k) {
                    prop_assert_eq!(out.get(k), Some(v));
                }
            }
            for k in patch.keys() {
                prop_assert!(out.contains_key(k));
            }
        }

        #[test]
        fn union_keeps_every_element(a in prop::collection::vec(json_value(), 0..6), b in prop::collection::vec(json_value(), 0..6)) {
            let mut base = Map::new();
            base.insert("xs".into(), Value::from(a.clone()));
            let mut patch = Map::new();
            patch.insert("xs".into(), Value::from(b.clone()));
            merge_object(&mut base, &patch);
            let out = base["xs"].as_array().unwrap();
            prop_assert!(contains_all(out, &a), "lost an element of the base");
            // As the patch adds them: elements sharing an id within one array are one.
            let added: Vec<Value> = b.iter().map(fresh).collect();
            prop_assert!(contains_all(out, &added), "lost an element of the patch");
        }
    }
}
