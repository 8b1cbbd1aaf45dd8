//! Enrichment's merge: deep-merge objects, union arrays.
//!
//! - Objects merge key by key; a key absent from the patch keeps its value, `null` overwrites.
//! - Arrays are unioned: scalars by value; objects with a string `id` (or `_id`) are matched by it
//!   and merged; anything else is added unless an equal element is already there.
//! - Any other combination: the patch's value replaces the old one.

use serde_json::{Map, Value};

/// Merge `patch` into `base`.
pub fn merge_object(base: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, p) in patch {
        match (base.get_mut(key), p) {
            (Some(Value::Object(b)), Value::Object(p)) => merge_object(b, p),
            (Some(Value::Array(b)), Value::Array(p)) => union(b, p),
            _ => {
                base.insert(key.clone(), p.clone());
            }
        }
    }
}

fn identity(v: &Value) -> Option<&str> {
    let o = v.as_object()?;
    o.get("id").or_else(|| o.get("_id")).and_then(Value::as_str)
}

fn union(base: &mut Vec<Value>, patch: &[Value]) {
    for p in patch {
        if let Some(id) = identity(p)
            && let Some(existing) = base.iter_mut().find(|b| identity(b) == Some(id))
        {
            if let (Value::Object(b), Value::Object(p)) = (existing, p) {
                merge_object(b, p);
            }
            continue;
        }
        if !base.contains(p) {
            base.push(p.clone());
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

    proptest! {
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
            prop_assert!(contains_all(out, &b), "lost an element of the patch");
        }
    }
}
