//! `metav1.Status` error answers: the body client-go decodes into a readable error, so the
//! HPA's condition says why a metric failed instead of a bare HTTP code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A failed request, answered as a Kubernetes `Status` object with the matching HTTP code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The HTTP code, repeated in the body's `code`.
    pub code: StatusCode,
    /// The `reason` field: `NotFound`, `BadRequest`, `ServiceUnavailable`, ...
    pub reason: &'static str,
    /// What went wrong, for the HPA's condition message.
    pub message: String,
}

impl Status {
    /// 404: no such metric, namespace or path.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// 400: the request itself is wrong (a bad label selector).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 503: the metric exists but has no current value; the HPA holds its replicas.
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    }

    /// 401: no credentials, or credentials nobody vouches for.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    /// 403: the caller is known but may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// 500: a value that cannot be served (NaN).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// 406: the client accepts no media type the path is served in.
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_ACCEPTABLE, "NotAcceptable", message)
    }

    /// 413: a request body over the limit.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            message,
        )
    }

    /// 431: request headers over the limit. metav1 has no reason of its own for it; the code
    /// says what it is, and BadRequest is the reason client-go maps other 4xx to.
    pub fn header_fields_too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "BadRequest",
            message,
        )
    }

    /// 429: a limit of the server's (bearer-token reviews) is reached; retry later.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message)
    }

    /// 405: the path exists but not for this method.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }
}

/// The wire form of `metav1.Status`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusBody<'a> {
    kind: &'static str,
    api_version: &'static str,
    metadata: serde_json::Map<String, serde_json::Value>,
    status: &'static str,
    message: &'a str,
    reason: &'static str,
    code: u16,
}

impl IntoResponse for Status {
    fn into_response(self) -> Response {
        let body = StatusBody {
            kind: "Status",
            api_version: "v1",
            metadata: serde_json::Map::new(),
            status: "Failure",
            message: &self.message,
            reason: self.reason,
            code: self.code.as_u16(),
        };
        (self.code, Json(body)).into_response()
    }
}
