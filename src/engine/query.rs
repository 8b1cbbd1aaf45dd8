//! The safe query subset for listing by indexed metadata.
//!
//! A filter is a JSON object mapping indexed property names to a value (equality) or to an
//! object of operators: `$eq`, `$ne`, `$in`, `$nin`, `$gt`, `$gte`, `$lt`, `$lte`, `$exists`.
//! Values are scalars (strings, numbers, booleans, null). Everything else — `$where`,
//! `$function`, `$regex`, `$or`, nested documents, unknown operators, unindexed properties — is
//! refused with a validation error that says why. Semantics follow MongoDB's: equality on an
//! array property matches when any element is equal; comparisons only match values of the same
//! kind (numbers with numbers, strings with strings).

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::error::{Error, Result};

const MAX_IN: usize = 100;
const MAX_FIELDS: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Gt(Value),
    Gte(Value),
    Lt(Value),
    Lte(Value),
    Exists(bool),
}

/// A conjunction of conditions on indexed properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub clauses: Vec<(String, Cond)>,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::validation("filter", reason)
}

fn scalar(field: &str, v: &Value) -> Result<Value> {
    match v {
        Value::Array(_) | Value::Object(_) => Err(invalid(format!(
            "`{field}`: values must be strings, numbers, booleans or null"
        ))),
        other => Ok(other.clone()),
    }
}

fn scalars(field: &str, op: &str, v: &Value) -> Result<Vec<Value>> {
    let items = v
        .as_array()
        .ok_or_else(|| invalid(format!("`{field}`: {op} takes an array")))?;
    if items.len() > MAX_IN {
        return Err(invalid(format!("`{field}`: {op} takes at most {MAX_IN} values")));
    }
    items.iter().map(|i| scalar(field, i)).collect()
}

impl Filter {
    /// Parse and check a filter. `indexed(name)` says whether a property may be filtered on.
    pub fn parse(filter: &Value, indexed: &dyn Fn(&str) -> bool) -> Result<Filter> {
        let obj = match filter {
            Value::Null => return Ok(Filter::default()),
            Value::Object(o) => o,
            _ => return Err(invalid("must be a JSON object")),
        };
        if obj.len() > MAX_FIELDS {
            return Err(invalid(format!("at most {MAX_FIELDS} properties")));
        }
        let mut clauses = Vec::new();
        for (field, spec) in obj {
            if field.starts_with('$') {
                return Err(invalid(format!(
                    "`{field}` is not supported: filters are a conjunction of conditions on indexed properties"
                )));
            }
            if !indexed(field) {
                return Err(invalid(format!(
                    "`{field}` is not an indexed property of this collection"
                )));
            }
            match spec {
                Value::Object(ops) => {
                    if ops.is_empty() {
                        return Err(invalid(format!("`{field}`: empty condition")));
                    }
                    for (op, v) in ops {
                        clauses.push((field.clone(), parse_op(field, op, v)?));
                    }
                }
                v => clauses.push((field.clone(), Cond::Eq(scalar(field, v)?))),
            }
        }
        Ok(Filter { clauses })
    }

    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// Evaluate against indexed metadata (for stores that filter in process).
    pub fn matches(&self, meta: &Map<String, Value>) -> bool {
        self.clauses.iter().all(|(field, cond)| cond.matches(meta.get(field)))
    }
}

fn parse_op(field: &str, op: &str, v: &Value) -> Result<Cond> {
    Ok(match op {
        "$eq" => Cond::Eq(scalar(field, v)?),
        "$ne" => Cond::Ne(scalar(field, v)?),
        "$gt" => Cond::Gt(scalar(field, v)?),
        "$gte" => Cond::Gte(scalar(field, v)?),
        "$lt" => Cond::Lt(scalar(field, v)?),
        "$lte" => Cond::Lte(scalar(field, v)?),
        "$in" => Cond::In(scalars(field, op, v)?),
        "$nin" => Cond::Nin(scalars(field, op, v)?),
        "$exists" => Cond::Exists(
            v.as_bool()
                .ok_or_else(|| invalid(format!("`{field}`: $exists takes true or false")))?,
        ),
        other => {
            return Err(invalid(format!(
                "`{field}`: operator `{other}` is not supported; use $eq, $ne, $in, $nin, $gt, $gte, $lt, $lte or $exists"
            )));
        }
    })
}

/// Equality as MongoDB sees it: numbers compare by value whatever their representation.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare(a, b) == Some(Ordering::Equal) || x == y,
        _ => a == b,
    }
}

/// Ordering within one kind of value; `None` across kinds (MongoDB's type bracketing).
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => Some(i.cmp(&j)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

impl Cond {
    /// `value` is the property's value, `None` when absent. Arrays match when any element does
    /// (and `$ne`/`$nin` when no element does), as in MongoDB.
    pub fn matches(&self, value: Option<&Value>) -> bool {
        let elements: Vec<&Value> = match value {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(v) => vec![v],
            None => vec![],
        };
        // A missing property equals null, as in MongoDB.
        let any_eq = |target: &Value| {
            if value.is_none() {
                target.is_null()
            } else {
                elements.iter().any(|e| equal(e, target))
            }
        };
        let any_cmp =
            |target: &Value, ok: fn(Ordering) -> bool| elements.iter().any(|e| compare(e, target).is_some_and(ok));
        match self {
            Cond::Eq(t) => any_eq(t),
            Cond::Ne(t) => !any_eq(t),
            Cond::In(ts) => ts.iter().any(any_eq),
            Cond::Nin(ts) => !ts.iter().any(any_eq),
            Cond::Gt(t) => any_cmp(t, Ordering::is_gt),
            Cond::Gte(t) => any_cmp(t, Ordering::is_ge),
            Cond::Lt(t) => any_cmp(t, Ordering::is_lt),
            Cond::Lte(t) => any_cmp(t, Ordering::is_le),
            Cond::Exists(want) => value.is_some() == *want,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn any(_: &str) -> bool {
        true
    }

    fn m(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn refuses_what_is_not_in_the_subset() {
        for bad in [
            json!({"$where": "1"}),
            json!({"$or": []}),
            json!({"a": {"$function": {}}}),
            json!({"a": {"$regex": "x"}}),
            json!({"a": {"nested": 1}}),
            json!({"a": {"$in": "x"}}),
            json!({"a": {"$exists": 1}}),
            json!({"a": {}}),
            json!({"a": [1, 2]}),
            json!([1]),
        ] {
            assert!(Filter::parse(&bad, &any).is_err(), "{bad} accepted");
        }
        let only_a = |f: &str| f == "a";
        let err = Filter::parse(&json!({"b": 1}), &only_a).unwrap_err();
        assert!(err.to_string().contains("not an indexed property"), "{err}");
    }

    #[test]
    fn evaluates_like_mongodb() {
        let doc = m(json!({"n": 5, "s": "b", "tags": ["x", "y"], "z": null, "f": 2.5}));
        let check = |f: Value| Filter::parse(&f, &any).unwrap().matches(&doc);
        assert!(check(json!({"n": 5})));
        assert!(check(json!({"n": 5.0})));
        assert!(check(json!({"n": {"$gte": 5, "$lt": 6}})));
        assert!(!check(json!({"n": {"$gt": 5}})));
        assert!(!check(json!({"n": {"$gt": "1"}})), "no comparison across kinds");
        assert!(check(json!({"f": {"$gt": 2}})));
        assert!(check(json!({"s": {"$in": ["a", "b"]}})));
        assert!(check(json!({"s": {"$nin": ["a", "c"]}})));
        assert!(check(json!({"tags": "y"})), "array contains");
        assert!(!check(json!({"tags": {"$ne": "y"}})));
        assert!(check(json!({"tags": {"$nin": ["q"]}})));
        assert!(check(json!({"z": null})));
        assert!(check(json!({"missing": null})), "absent equals null");
        assert!(check(json!({"missing": {"$exists": false}, "z": {"$exists": true}})));
        assert!(!check(json!({"missing": {"$gt": 0}})));
        assert!(check(json!({"missing": {"$ne": 1}})));
    }
}
