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
use crate::engine::model::{SYSTEM_KEY, State, SystemFields};
use crate::engine::{
    CollectionName, ContentMode, Engine, ItemId, Record, RecordText, Submitted, Timestamp, WriteOutcome,
};

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

    /// Whether a record shows as its stored data text plus `_system` (no content property to
    /// resolve, no URL to presign): such a read need not parse the data at all.
    pub fn shows_text(&self, engine: &Engine, collection: &CollectionName) -> bool {
        self.presign.is_none() && (self.mode == ContentMode::Reference || !engine.has_content_props(collection))
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

impl<'a> SystemBlock<'a> {
    fn of(
        collection: &'a CollectionName,
        id: &'a ItemId,
        (ov, cv): (u64, u64),
        system: &'a SystemFields,
        payload_url: Option<&'a str>,
    ) -> Self {
        SystemBlock {
            id,
            collection,
            ov,
            cv,
            inserted_at: &system.inserted_at,
            updated_at: &system.updated_at,
            deleted_at: &system.deleted_at,
            deleted: system.deleted,
            function_ids: &system.function_ids,
            state: &system.state,
            payload_url,
        }
    }
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
        let system = SystemBlock::of(
            &self.collection,
            &r.id,
            (r.ov, r.cv),
            &r.system,
            self.payload_url.as_deref(),
        );
        map.serialize_entry(SYSTEM_KEY, &system)?;
        map.end()
    }
}

/// Write the JSON the API shows for `record` (what [`Shown`] serialises to) into `out`, spliced
/// from its stored data text: the data's members as stored (checked against their checksum, so
/// exactly the JSON once written), then the `_system` block. Returns false, having written
/// nothing, when the text can't be shown as it is: it holds a `_system` key (stored before writes
/// stripped it), so the record must be parsed and shown as a [`Shown`].
pub fn write_text_json(collection: &CollectionName, r: &RecordText, out: &mut Vec<u8>) -> bool {
    let text = r.data_json.trim();
    let Some(members) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else {
        return false;
    };
    if members.contains("\"_system\"") {
        return false;
    }
    let start = out.len();
    out.push(b'{');
    if !members.trim().is_empty() {
        out.extend_from_slice(members.as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"_system\":");
    let system = SystemBlock::of(collection, &r.id, (r.ov, r.cv), &r.system, None);
    if serde_json::to_writer(&mut *out, &system).is_err() {
        out.truncate(start);
        return false;
    }
    out.push(b'}');
    true
}

/// A 200 response of JSON already serialised (see [`write_text_json`]).
pub fn json_response(body: impl Into<axum::body::Body>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.into()).into_response()
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

    fn as_text(r: Record) -> RecordText {
        RecordText {
            data_json: serde_json::to_string(&r.data).unwrap(),
            id: r.id,
            ov: r.ov,
            cv: r.cv,
            write_id: r.write_id,
            system: r.system,
            payload_ref: r.payload_ref,
        }
    }

    fn text_json(c: &CollectionName, r: &RecordText) -> Option<String> {
        let mut out = b"[".to_vec();
        let written = write_text_json(c, r, &mut out);
        assert_eq!(written, out.len() > 1, "nothing written unless it says so");
        written.then(|| String::from_utf8(out[1..].to_vec()).unwrap())
    }

    #[test]
    fn a_record_shown_from_its_stored_text_is_the_json_shown_from_its_parsed_data() {
        let c: CollectionName = "notes".parse().unwrap();
        for data in [
            json!({"b": 1, "a": [true, null, {"x": "y"}]}),
            json!({}),
            json!({"s": "é \" \\ \n \u{1F600} <>&", "n": -1.5e-7, "big": 12345678901234567u64}),
            json!({"nested": {"_system": "a value, not the key"}}),
        ] {
            let r = record(data);
            let shown = serde_json::to_string(&Shown {
                collection: c.clone(),
                record: r.clone(),
                payload_url: None,
            })
            .unwrap();
            let text = as_text(r);
            // A nested `_system` key is only looked for as text: such a record takes the parsed path.
            match text_json(&c, &text) {
                Some(spliced) => assert_eq!(spliced, shown),
                None => assert!(text.data_json.contains("\"_system\"")),
            }
        }
        // Stored text that is not compact still shows the same JSON value.
        let mut spaced = as_text(record(json!({"a": 1})));
        spaced.data_json = " {\n  \"a\" : 1 \n} ".into();
        let spliced: Value = serde_json::from_str(&text_json(&c, &spaced).unwrap()).unwrap();
        assert_eq!(spliced, record_json(&c, record(json!({"a": 1}))));
        let mut empty = as_text(record(json!({})));
        empty.data_json = "{ }".into();
        let spliced: Value = serde_json::from_str(&text_json(&c, &empty).unwrap()).unwrap();
        assert_eq!(spliced, record_json(&c, record(json!({}))));
    }

    #[test]
    fn stored_text_with_a_system_key_is_left_to_the_parsed_path_which_drops_it() {
        let c: CollectionName = "notes".parse().unwrap();
        let r = record(json!({"b": 1, "_system": {"forged": true}}));
        assert_eq!(text_json(&c, &as_text(r.clone())), None);
        let parsed = as_text(r).parse(&c).unwrap();
        assert_eq!(record_json(&c, parsed)["_system"]["id"], "i1");
    }
}
