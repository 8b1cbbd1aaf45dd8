//! The one error shape of the HTTP API, `{code, message, details}`, and the one place where
//! errors become HTTP statuses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::engine;

/// Every error response has this body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable code (e.g. `version_conflict`).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// Structured facts about the error (e.g. the current ov of a conflict).
    #[schema(value_type = Object)]
    pub details: Value,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: json!({}),
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

/// Carried in the response's extensions so the request-id middleware can log a 500 with its cause.
#[derive(Clone, Debug)]
pub struct InternalCause(pub String);

impl From<engine::Error> for ApiError {
    fn from(e: engine::Error) -> Self {
        use engine::Error as E;
        let message = e.to_string();
        match e {
            E::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            E::Erased(_) => Self::new(StatusCode::GONE, "erased", message),
            E::VersionConflict { expected, current, .. } => {
                Self::new(StatusCode::CONFLICT, "version_conflict", message)
                    .with_details(json!({"expectedOv": expected, "currentOv": current}))
            }
            E::AlreadyExists(_) | E::RequestKeyTaken(_) => Self::new(StatusCode::CONFLICT, "already_exists", message),
            // The item stayed held by other writers for longer than a write waits.
            E::Contended(_) => Self::new(StatusCode::CONFLICT, "locked", message),
            // The draft standard suggests 422; 409 says the same here (the request conflicts with
            // what the key recorded) and is a status every write route documents.
            E::IdempotencyKeyReused(_) => Self::new(StatusCode::CONFLICT, "idempotency_key_reused", message),
            E::OutcomeUnknown(_) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown", message),
            E::Validation { field, reason } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", message)
                    .with_details(json!({"field": field, "reason": reason}))
            }
            E::TooLarge { actual, limit } => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
                .with_details(json!({"size": actual, "limit": limit})),
            E::Unavailable { backend, .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "backend_unavailable", message)
                    .with_details(json!({"backend": backend.to_string()}))
            }
            E::Unsupported(_) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "backend_unsupported", message),
            E::HistoryPruned {
                oldest_cv,
                pruned_through,
                ..
            } => Self::new(StatusCode::GONE, "history_pruned", message)
                .with_details(json!({"oldestCv": oldest_cv, "prunedThrough": pruned_through})),
            E::Held(_, reason) => {
                Self::new(StatusCode::CONFLICT, "held", message).with_details(json!({"reason": reason}))
            }
            // Don't echo internals to clients; the cause is logged with the request id.
            other => Self::internal("internal error").with_cause(other.to_string()),
        }
    }
}

impl ApiError {
    fn with_cause(self, cause: String) -> Self {
        self.with_details(json!({"cause": cause}))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut details = self.details;
        let cause = if self.status.is_server_error() {
            details
                .as_object_mut()
                .and_then(|d| d.remove("cause"))
                .and_then(|c| c.as_str().map(str::to_owned))
        } else {
            None
        };
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
            details,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.code == "locked" || self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(cause) = cause {
            response.extensions_mut().insert(InternalCause(cause));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_client_statuses() {
        let cases = [
            (engine::Error::NotFound("x".into()), 404, "not_found"),
            (
                engine::Error::VersionConflict {
                    item: "x".into(),
                    expected: 1,
                    current: 2,
                },
                409,
                "version_conflict",
            ),
            (engine::Error::AlreadyExists("x".into()), 409, "already_exists"),
            (engine::Error::RequestKeyTaken("x".into()), 409, "already_exists"),
            (engine::Error::validation("f", "r"), 422, "validation_failed"),
            (
                engine::Error::TooLarge { actual: 2, limit: 1 },
                413,
                "payload_too_large",
            ),
            (engine::Error::metadata("down"), 503, "backend_unavailable"),
            (
                engine::Error::HistoryPruned {
                    after: 1,
                    oldest_cv: Some(5),
                    pruned_through: 4,
                },
                410,
                "history_pruned",
            ),
            (engine::Error::Corrupt("bad".into()), 500, "internal"),
            (engine::Error::Held("x".into(), "litigation".into()), 409, "held"),
            (engine::Error::Erased("x".into()), 410, "erased"),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.status.as_u16(), api.code), (status, code));
        }
    }
}
