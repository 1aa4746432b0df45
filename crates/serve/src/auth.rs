//! Credentials: `--token T` (`Authorization: Bearer T`) and A1111's `--api-auth user:pass`
//! (HTTP Basic). With neither, every request is served (loopback only: `run` refuses to
//! listen elsewhere without one).
use anyhow::{bail, Result};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::error::ApiError;
use super::Shared;

#[derive(Debug, Default)]
pub struct Auth {
    /// Accepted `Authorization` header values.
    accepted: Vec<String>,
}

impl Auth {
    pub fn from_args(token: Option<&str>, api_auth: Option<&str>) -> Result<Self> {
        let mut accepted = Vec::new();
        if let Some(token) = token {
            if token.trim().is_empty() {
                bail!("--token is empty — give a secret string");
            }
            accepted.push(format!("Bearer {token}"));
        }
        if let Some(pair) = api_auth {
            for one in pair.split(',') {
                if !one.contains(':') {
                    bail!("--api-auth {one}: expected user:pass");
                }
                let encoded = base64::engine::general_purpose::STANDARD.encode(one);
                accepted.push(format!("Basic {encoded}"));
            }
        }
        Ok(Self { accepted })
    }

    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if self.accepted.is_empty() {
            return true;
        }
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        self.accepted
            .iter()
            .any(|a| same(a.as_bytes(), given.trim().as_bytes()))
    }
}

/// Constant-time comparison (a wrong guess takes as long as a near one).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a request to a loopback-only server names a loopback host: a web page that
/// rebinds its own name to 127.0.0.1 sends its own name, and is refused.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return true; // HTTP/1.0 without Host: not a browser
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Middleware: 401 without the credentials; 421 for a loopback server reached by another name.
pub async fn require(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if state.loopback && !loopback_host(request.headers()) {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "this server listens on loopback only: use http://127.0.0.1 or http://localhost (listen elsewhere with --listen and --token)",
        )
        .into_response();
    }
    if state.auth.allows(request.headers()) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong credentials — send `Authorization: Bearer <token>` (or Basic user:pass as set by --api-auth)",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer, Basic realm=\"hiresfix\""),
    );
    response
}
