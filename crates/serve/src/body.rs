//! A state-changing request's body: admitted by its content type ([`content_type::admit`],
//! already run by the middleware), read within the server's body timeout and size limit, and
//! refused when empty — an empty body is not `{}`.
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::content_type::{admit, Declared};
use super::error::{ApiError, ApiResult};
use super::Shared;

const EMPTY: &str = "the body is empty — send a JSON object (`{}` when there is nothing to set)";

/// A request's body bytes and what its content type declared them to be.
pub struct Payload {
    pub declared: Declared,
    pub bytes: Bytes,
}

impl FromRequest<Shared> for Payload {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Shared) -> ApiResult<Self> {
        let declared = match request.extensions().get::<Declared>() {
            Some(declared) => *declared,
            None => admit(request.uri().path(), request.headers())?,
        };
        let limit = state.body_timeout;
        let bytes = match tokio::time::timeout(limit, Bytes::from_request(request, state)).await {
            Ok(read) => body_bytes(read)?,
            Err(_) => return Err(timed_out(limit)),
        };
        Ok(Self { declared, bytes })
    }
}

fn timed_out(limit: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body was not all sent within {} s — send it at once",
            limit.as_secs_f64()
        ),
    )
}

/// The body's bytes; too large is 413.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError {
            field: Some("body".into()),
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than this server accepts (--max-body-mb)",
            )
        },
        status => ApiError::new(status, "cannot read the request body"),
    })
}

impl Payload {
    /// The body as text; empty or all whitespace is refused.
    pub fn text(&self) -> ApiResult<&str> {
        let text = std::str::from_utf8(&self.bytes)
            .map_err(|_| ApiError::bad_request("the body is not UTF-8 text"))?;
        if text.trim().is_empty() {
            return Err(ApiError::bad_request(EMPTY));
        }
        Ok(text)
    }

    /// The body as a JSON object.
    pub fn json_object(&self) -> ApiResult<Map<String, Value>> {
        json_object(self.text()?)
    }

    /// A body-less endpoint's body: none (a script's bare POST), or any JSON object or null,
    /// which is ignored.
    pub fn ignored(&self) -> ApiResult<()> {
        if self.declared == Declared::Nothing {
            return Ok(());
        }
        match serde_json::from_str::<Value>(self.text()?) {
            Ok(Value::Object(_) | Value::Null) => Ok(()),
            Ok(_) => Err(ApiError::bad_request(
                "this endpoint takes no values — send `{}`",
            )),
            Err(e) => Err(ApiError::bad_request(format!("the body is not JSON: {e}"))),
        }
    }
}

/// `text` as a JSON object (what every A1111 endpoint takes).
pub fn json_object(text: &str) -> ApiResult<Map<String, Value>> {
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(EMPTY));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("the body is not JSON: {e}"))),
    }
}
