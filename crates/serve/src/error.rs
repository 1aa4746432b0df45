//! Errors as HTTP answers: a status and a JSON body in A1111's shape (`error`, `detail`,
//! `body`, `errors`) plus the request field at fault, when there is one.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// The request field at fault (`steps`, `sampler_name`).
    pub field: Option<String>,
    pub message: String,
    /// Seconds to wait before trying again (503 when the queue is full).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Longest `detail` line an answer carries: a request's values are echoed in it, and a 1 MB
/// name must not come back as a 1 MB line.
pub const MAX_DETAIL_CHARS: usize = 300;

/// `text` cut to `max` characters, an ellipsis marking the cut (echoed request values).
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            field: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 422: `field` has a value the server cannot use; `message` says why and what to send.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn busy(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let detail = match &self.field {
            Some(field) if !self.message.starts_with(field.as_str()) => {
                format!("{field}: {}", self.message)
            }
            _ => self.message.clone(),
        };
        let detail = cut(&detail, MAX_DETAIL_CHARS - 1);
        let body = serde_json::json!({
            "error": self.status.canonical_reason().unwrap_or("Error"),
            "detail": detail,
            "field": self.field,
            "body": "",
            "errors": detail,
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
