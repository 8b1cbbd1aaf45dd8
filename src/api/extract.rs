//! Request extractors whose failures use the API's error shape (axum's defaults answer in plain
//! text), and the parsing of names, preconditions, attribution and bodies.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::auth::Caller;
use super::error::ApiError;
use crate::engine::{Attribution, CollectionName, ItemId, RequestKey};

/// `/v1/{db}/{collection}/…`
pub struct CollectionPath {
    pub db: String,
    pub collection: CollectionName,
}

/// `/v1/{db}/{collection}/items/{id}/…`
pub struct ItemPath {
    pub db: String,
    pub collection: CollectionName,
    pub id: ItemId,
}

async fn path_params<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<HashMap<String, String>, ApiError> {
    Path::<HashMap<String, String>>::from_request_parts(parts, state)
        .await
        .map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
}

fn param<T: std::str::FromStr<Err = crate::engine::Error>>(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<T, ApiError> {
    let raw = params
        .get(name)
        .ok_or_else(|| ApiError::internal(format!("route has no `{name}` parameter")))?;
    raw.parse().map_err(|e: crate::engine::Error| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string())
            .with_details(serde_json::json!({"parameter": name}))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for CollectionPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let p = path_params(parts, state).await?;
        Ok(CollectionPath {
            db: p.get("db").cloned().unwrap_or_default(),
            collection: param(&p, "collection")?,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ItemPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let p = path_params(parts, state).await?;
        Ok(ItemPath {
            db: p.get("db").cloned().unwrap_or_default(),
            collection: param(&p, "collection")?,
            id: param(&p, "id")?,
        })
    }
}

/// For `#[serde(default, deserialize_with = "int64")]` on `Option<u64>` fields: versions, cvs and
/// counts are documented as `format: int64` and stored as i64, so a larger number is refused
/// rather than wrapped to a negative one (`cv: 2^63` once meant "before every write").
pub fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<u64>::deserialize(d)? {
        Some(n) if i64::try_from(n).is_err() => {
            Err(D::Error::custom(format!("{n} is out of range (at most {})", i64::MAX)))
        }
        v => Ok(v),
    }
}

/// Query parameters, rejected with a 400 in the API's error shape.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
    }
}

/// A JSON object body: 415 for another media type, 400 for malformed JSON, 422 for JSON that is
/// not an object, 413 beyond the body limit.
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match json_body(req, state).await? {
            Value::Object(map) => Ok(JsonObject(map)),
            other => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("the body must be a JSON object, not {}", kind(&other)),
            )
            .with_details(serde_json::json!({"field": "body"}))),
        }
    }
}

/// A JSON body of a known shape; a body of the wrong shape is a 422 naming the field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let mut value = json_body(req, state).await?;
        // serde reads a struct from an array too (`[]` is a struct of defaults): refuse it.
        if !value.is_object() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("the body must be a JSON object, not {}", kind(&value)),
            )
            .with_details(serde_json::json!({"field": "body"})));
        }
        integral_floats_to_integers(&mut value);
        serde_path_to_error::deserialize(value).map(ApiJson).map_err(|e| {
            let field = e.path().to_string();
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("{field}: {}", e.inner()),
            )
            .with_details(serde_json::json!({"field": field}))
        })
    }
}

/// `3.0` is the integer 3 to JSON Schema (and to JavaScript), but serde refuses it for an integer
/// field; so a float without a fraction that fits an i64 becomes that integer before a body of a
/// known shape is deserialized (fields of type f64 take integers as well).
fn integral_floats_to_integers(value: &mut Value) {
    match value {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f >= i64::MIN as f64
                && f < i64::MAX as f64
            {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

/// Bodies larger than this are read and parsed a few at a time: a parsed JSON value can take
/// twenty times the memory of its text (an array of small numbers), so many large bodies at
/// once would make memory grow with the number of clients. Every body is either announced by
/// `Content-Length` or chunked (gated as large): the service speaks HTTP/1 only (axum's `http1`
/// feature), so no HTTP/2 body arrives without either. A body must arrive within the service's
/// body deadline, so a slow client holds a permit for a bounded time.
const LARGE_BODY_BYTES: u64 = 1 << 20;
static LARGE_BODIES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Whether reading the body failed because the body deadline (`ServiceSettings`) passed.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Any JSON body, with the API's rejections.
async fn json_body<S: Send + Sync>(req: Request, state: &S) -> Result<Value, ApiError> {
    let large = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n > LARGE_BODY_BYTES);
    let _permit = match large {
        true => Some(
            LARGE_BODIES
                .acquire()
                .await
                .map_err(|_| ApiError::internal("body gate closed"))?,
        ),
        false => None,
    };
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected Content-Type: application/json, got `{ct}`"),
            ));
        }
    }
    let bytes = Bytes::from_request(req, state).await.map_err(|e| {
        if timed_out(&e) {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time",
            )
        } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body too large",
            )
        } else {
            ApiError::bad_request(format!("cannot read body: {}", e.body_text()))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("body is not valid JSON: {e}"),
        )
    })
}

/// A JSON object or an array of JSON objects (a batch of patches).
pub struct JsonObjects(pub Vec<Map<String, Value>>);

impl<S: Send + Sync> FromRequest<S> for JsonObjects {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let value = json_body(req, state).await?;
        let not_objects = |what: &Value| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!(
                    "the body must be a JSON object or an array of objects, not {}",
                    kind(what)
                ),
            )
            .with_details(serde_json::json!({"field": "body"}))
        };
        match value {
            Value::Object(map) => Ok(JsonObjects(vec![map])),
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::Object(m) => Ok(m),
                    other => Err(not_objects(&other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(JsonObjects),
            other => Err(not_objects(&other)),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `Idempotency-Key` header: a retried write with the same key returns the first outcome.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Who makes a write and why, with its idempotency key: `?actor=` and `?reason=` checked, and
/// under auth the token's name in front of the actor.
pub fn attribution(
    caller: &Caller,
    headers: &HeaderMap,
    actor: Option<String>,
    reason: Option<String>,
) -> Result<Attribution, ApiError> {
    let request_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<RequestKey>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters (no spaces)")
                })?,
        ),
    };
    for (name, value, max) in [("actor", &actor, 256), ("reason", &reason, 1024)] {
        if let Some(v) = value
            && (v.len() > max || v.chars().any(char::is_control))
        {
            return Err(ApiError::bad_request(format!(
                "`{name}` must be at most {max} bytes without control characters"
            )));
        }
    }
    // With auth on, the audit trail names the token that wrote; `?actor=` may only add whom it
    // acts for (`token/actor`), never stand in for another token's name.
    let actor = match (caller.name(), actor) {
        (Some(token), Some(on_behalf)) => Some(format!("{token}/{on_behalf}")),
        (Some(token), None) => Some(token.to_owned()),
        (None, actor) => actor,
    };
    Ok(Attribution {
        actor,
        reason,
        request_key,
    })
}

/// Where an optimistic-lock precondition came from: it decides 409 versus 412 on conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// `?expectedOv=` — a conflict is a 409.
    Query(u64),
    /// `If-Match: "3"` — a failed precondition is a 412.
    IfMatch(u64),
    /// `If-Match: *` — any current version will do, but the item must exist (412 if not).
    Exists,
}

impl Precondition {
    pub fn ov(self) -> Option<u64> {
        match self {
            Precondition::None | Precondition::Exists => None,
            Precondition::Query(ov) | Precondition::IfMatch(ov) => Some(ov),
        }
    }

    pub fn from_request(headers: &HeaderMap, expected_ov: Option<u64>) -> Result<Self, ApiError> {
        let if_match = match headers.get(header::IF_MATCH) {
            None => None,
            Some(v) => {
                let raw = v
                    .to_str()
                    .map_err(|_| ApiError::bad_request("If-Match is not valid text"))?
                    .trim();
                if raw == "*" {
                    if expected_ov.is_some() {
                        return Err(ApiError::bad_request("If-Match: * and expectedOv disagree"));
                    }
                    return Ok(Precondition::Exists);
                } else if raw.starts_with("W/") {
                    // RFC 9110 §13.1.1: If-Match compares strongly, so a weak tag never matches.
                    return Err(ApiError::new(
                        StatusCode::PRECONDITION_FAILED,
                        "precondition_failed",
                        "If-Match takes strong entity tags such as \"3\"; a weak tag never matches",
                    ));
                } else {
                    let tag = raw.trim_matches('"');
                    let ov = tag.parse::<u64>().ok().filter(|ov| i64::try_from(*ov).is_ok());
                    Some(ov.ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "If-Match must carry an object version such as \"3\", got `{raw}`"
                        ))
                    })?)
                }
            }
        };
        match (if_match, expected_ov) {
            (Some(a), Some(b)) if a != b => Err(ApiError::bad_request(format!(
                "If-Match ({a}) and expectedOv ({b}) disagree"
            ))),
            (Some(ov), _) => Ok(Precondition::IfMatch(ov)),
            (None, Some(ov)) => Ok(Precondition::Query(ov)),
            (None, None) => Ok(Precondition::None),
        }
    }

    /// Turn a version conflict on an `If-Match` precondition, or a missing item under
    /// `If-Match: *`, into 412 Precondition Failed.
    pub fn map_err(self, e: crate::engine::Error) -> ApiError {
        let failed = match self {
            Precondition::IfMatch(_) => matches!(e, crate::engine::Error::VersionConflict { .. }),
            Precondition::Exists => matches!(e, crate::engine::Error::NotFound(_)),
            Precondition::None | Precondition::Query(_) => false,
        };
        let mut api = ApiError::from(e);
        if failed {
            api.status = StatusCode::PRECONDITION_FAILED;
            api.code = "precondition_failed";
        }
        api
    }
}

/// A `filter` query parameter (listing, change feed): JSON text; absent or empty is no filter.
pub fn filter_param(text: Option<&str>) -> Result<Value, ApiError> {
    match text {
        None | Some("") => Ok(Value::Null),
        Some(text) => {
            serde_json::from_str(text).map_err(|e| ApiError::bad_request(format!("`filter` is not valid JSON: {e}")))
        }
    }
}

/// What a query's engine call refuses as invalid (a filter, a limit, a cursor) is a malformed
/// request (400) there, not invalid data (422).
pub fn query_error(e: crate::engine::Error) -> ApiError {
    match e {
        crate::engine::Error::Validation { field, reason } => {
            ApiError::bad_request(format!("invalid {field}: {reason}"))
                .with_details(serde_json::json!({"field": field}))
        }
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn if_match_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(Precondition::from_request(&h, Some(2)).unwrap(), Precondition::Query(2));
        for (v, ov) in [("\"3\"", 3), ("3", 3)] {
            h.insert(header::IF_MATCH, HeaderValue::from_static(v));
            assert_eq!(Precondition::from_request(&h, None).unwrap(), Precondition::IfMatch(ov));
        }
        // A weak tag never matches under RFC 9110's strong comparison: 412, not a match.
        h.insert(header::IF_MATCH, HeaderValue::from_static("W/\"4\""));
        assert_eq!(
            Precondition::from_request(&h, None).unwrap_err().status,
            StatusCode::PRECONDITION_FAILED
        );
        // `*` asks only that the item exist.
        h.insert(header::IF_MATCH, HeaderValue::from_static("*"));
        assert_eq!(Precondition::from_request(&h, None).unwrap(), Precondition::Exists);
        let missing = crate::engine::Error::NotFound("item".into());
        assert_eq!(
            Precondition::Exists.map_err(missing).status,
            StatusCode::PRECONDITION_FAILED
        );
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"abc\""));
        assert!(Precondition::from_request(&h, None).is_err());
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"1\""));
        assert!(Precondition::from_request(&h, Some(2)).is_err());
        // Versions are int64: a larger If-Match is malformed, not a huge (or negative) ov.
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"9223372036854775808\""));
        assert!(Precondition::from_request(&h, None).is_err());
    }

    #[derive(Debug, serde::Deserialize)]
    struct Versions {
        #[serde(default, deserialize_with = "int64")]
        ov: Option<u64>,
    }

    #[test]
    fn int64_fields_refuse_larger_numbers() {
        let ok: Versions = serde_json::from_str(r#"{"ov": 9223372036854775807}"#).unwrap();
        assert_eq!(ok.ov, Some(i64::MAX as u64));
        let absent: Versions = serde_json::from_str("{}").unwrap();
        assert_eq!(absent.ov, None);
        assert!(serde_json::from_str::<Versions>(r#"{"ov": 9223372036854775808}"#).is_err());
        let query = |q: &str| Query::<Versions>::try_from_uri(&format!("http://h/?{q}").parse().unwrap());
        assert_eq!(query("ov=3").unwrap().0.ov, Some(3));
        assert!(query("ov=18446744073709551615").is_err());
    }

    #[test]
    fn integral_floats_become_integers() {
        let mut v = serde_json::json!({"ov": 390.0, "days": 1.5, "list": [2.0e3], "big": 1.0e30});
        integral_floats_to_integers(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"ov": 390, "days": 1.5, "list": [2000], "big": 1.0e30})
        );
    }
}
