//! How the API shows what the engine returns: a write's outcome (201/200 with its ETag, or 202
//! when queued) and a record (its data with a `_system` block, content inline or as references,
//! URLs presigned on request).

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, Result};
use crate::engine::model::{SYSTEM_KEY, State};
use crate::engine::{CollectionName, ContentMode, Engine, ItemId, Record, Submitted, Timestamp, WriteOutcome};

/// The result of a write.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WriteResult {
    pub id: String,
    /// The object version this write produced (0 for a create).
    pub ov: u64,
    /// The collection version: orders all writes of the collection.
    pub cv: u64,
    /// When the version was written (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

pub fn etag(ov: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{ov}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// A write accepted for later: it met a transient backend failure and waits in the retry queue.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Queued {
    /// Poll `GET /v1/{db}/_operations/{operationId}` for the outcome.
    pub operation_id: String,
    /// Always `queued`.
    pub status: String,
    /// The item the write is for.
    pub id: String,
    /// Why the write could not be made now.
    pub reason: Option<String>,
}

/// The response to a submitted write: 201/200 when made now (with `Idempotency-Replayed: true`
/// when an earlier request with the same key made it), 202 when queued.
pub fn submitted_response(db: &str, status: StatusCode, submitted: Submitted, location: Option<String>) -> Response {
    match submitted {
        Submitted::Done { id, outcome } => {
            let mut response = write_response(status, &id, outcome, location);
            if outcome.replayed {
                response
                    .headers_mut()
                    .insert("idempotency-replayed", HeaderValue::from_static("true"));
            }
            response
        }
        Submitted::Queued(op) => {
            let location = format!("/v1/{db}/_operations/{}", op.job.id);
            let body = Queued {
                operation_id: op.job.id.to_string(),
                status: "queued".to_owned(),
                id: op.job.request.id().to_string(),
                reason: op.last_error,
            };
            let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
            if let Ok(loc) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, loc);
            }
            response
        }
    }
}

fn write_response(status: StatusCode, id: &ItemId, o: WriteOutcome, location: Option<String>) -> Response {
    let mut response = (
        status,
        Json(WriteResult {
            id: id.to_string(),
            ov: o.ov,
            cv: o.cv,
            at: o.at,
        }),
    )
        .into_response();
    response.headers_mut().insert(header::ETAG, etag(o.ov));
    if let Some(loc) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LOCATION, loc);
    }
    response
}

/// How a read shows content properties and whether it presigns URLs.
pub struct Presentation {
    mode: ContentMode,
    presign: Option<Duration>,
}

impl Presentation {
    pub fn from_query(content: Option<&str>, presign: bool, ttl_seconds: Option<u64>) -> Result<Self> {
        let ttl = Duration::from_secs(ttl_seconds.unwrap_or(900));
        if ttl.is_zero() || ttl > Duration::from_secs(604_800) {
            return Err(ApiError::bad_request(
                "`ttlSeconds` must be between 1 and 604800 (7 days)",
            ));
        }
        let mode = match (content, presign) {
            (_, true) => ContentMode::Presigned(ttl),
            (None | Some("inline"), false) => ContentMode::Inline,
            (Some("ref"), false) => ContentMode::Reference,
            (Some(other), false) => {
                return Err(ApiError::bad_request(format!(
                    "`content` must be `inline` or `ref`, not `{other}`"
                )));
            }
        };
        Ok(Presentation {
            mode,
            presign: presign.then_some(ttl),
        })
    }

    pub async fn show(&self, engine: &Engine, collection: &CollectionName, mut record: Record) -> Result<Shown> {
        engine.resolve_content(collection, &mut record, self.mode).await?;
        let payload_url = match self.presign {
            Some(ttl) => Some(engine.presign_payload(collection, &record, ttl).await?),
            None => None,
        };
        Ok(Shown {
            collection: collection.clone(),
            record,
            payload_url,
        })
    }
}

/// A record as the API shows it: the data with a `_system` block (and its presigned
/// `payloadUrl`, when asked for). Serialised straight from the engine's record: building a
/// `serde_json::Value` of it first cost a tree of allocations per record, a page of them per list.
#[derive(Debug)]
pub struct Shown {
    collection: CollectionName,
    record: Record,
    payload_url: Option<String>,
}

/// The `_system` block, in the order the API has always shown its fields.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SystemBlock<'a> {
    id: &'a ItemId,
    collection: &'a CollectionName,
    ov: u64,
    cv: u64,
    inserted_at: &'a Timestamp,
    updated_at: &'a Timestamp,
    deleted_at: &'a Option<Timestamp>,
    deleted: bool,
    function_ids: &'a [String],
    state: &'a State,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_url: Option<&'a str>,
}

impl Serialize for Shown {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = &self.record;
        let mut map = serializer.serialize_map(Some(r.data.len() + 1))?;
        // Writes strip `_system` from data; a value stored before that must not show twice.
        for (key, value) in r.data.iter().filter(|(k, _)| k.as_str() != SYSTEM_KEY) {
            map.serialize_entry(key, value)?;
        }
        let system = SystemBlock {
            id: &r.id,
            collection: &self.collection,
            ov: r.ov,
            cv: r.cv,
            inserted_at: &r.system.inserted_at,
            updated_at: &r.system.updated_at,
            deleted_at: &r.system.deleted_at,
            deleted: r.system.deleted,
            function_ids: &r.system.function_ids,
            state: &r.system.state,
            payload_url: self.payload_url.as_deref(),
        };
        map.serialize_entry(SYSTEM_KEY, &system)?;
        map.end()
    }
}

/// A record as the API shows it, as a JSON value (the change feed embeds it in its events).
pub fn record_json(collection: &CollectionName, record: Record) -> Value {
    let shown = Shown {
        collection: collection.clone(),
        record,
        payload_url: None,
    };
    serde_json::to_value(&shown).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::SystemFields;
    use serde_json::json;

    fn record(data: Value) -> Record {
        let at: Timestamp = "2026-12-06T10:00:00Z".parse().unwrap();
        Record {
            id: "i1".parse().unwrap(),
            ov: 3,
            cv: 42,
            write_id: "w".into(),
            system: SystemFields {
                inserted_at: at,
                updated_at: at,
                deleted_at: None,
                deleted: false,
                function_ids: vec!["f".into()],
                state: State::New,
            },
            data: data.as_object().unwrap().clone(),
            payload_ref: None,
        }
    }

    #[test]
    fn a_record_shows_its_data_then_one_system_block_in_the_documented_order() {
        let c: CollectionName = "notes".parse().unwrap();
        let shown = Shown {
            collection: c.clone(),
            record: record(json!({"b": 1, "_system": {"forged": true}, "a": [true]})),
            payload_url: None,
        };
        let text = serde_json::to_string(&shown).unwrap();
        assert_eq!(
            text,
            r#"{"b":1,"a":[true],"_system":{"id":"i1","collection":"notes","ov":3,"cv":42,"insertedAt":"2026-12-06T10:00:00Z","updatedAt":"2026-12-06T10:00:00Z","deletedAt":null,"deleted":false,"functionIds":["f"],"state":"new"}}"#
        );
        let with_url = Shown {
            payload_url: Some("https://s3/x".into()),
            ..shown
        };
        let value = serde_json::to_value(&with_url).unwrap();
        assert_eq!(value["_system"]["payloadUrl"], "https://s3/x");
        assert_eq!(record_json(&c, record(json!({"b": 1})))["_system"]["ov"], 3);
    }
}
