//! The one rule every state-changing request passes before anything reads its body: it must
//! be declared `application/json` (the native endpoint also takes `application/toml`), parsed
//! as a media type (RFC 9110 §8.3.1), not searched for a substring. A web page can send
//! `text/plain`, form and multipart bodies — or none — to any address without asking first
//! (CORS "simple" requests); a JSON or TOML content type needs a preflight this server never
//! approves, so a page cannot run jobs, switch models or interrupt one.
//!
//! One exception keeps A1111's clients working: `POST /interrupt`, `/skip`, `/refresh-*` and
//! `/unload-checkpoint` / `/reload-checkpoint` take no body, and `requests.post(url)`
//! (webuiapi) sends none and no content type. Such a request is accepted when nothing in it says a browser made it — a browser always sends
//! `Origin` (and `Sec-Fetch-*`) on a POST, a script outside a browser does not.
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{cut, ApiError};

/// A parsed `Content-Type`: type and subtype in lower case, parameters as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    pub kind: String,
    pub subtype: String,
    pub parameters: Vec<(String, String)>,
}

impl MediaType {
    pub fn is(&self, kind: &str, subtype: &str) -> bool {
        self.kind == kind && self.subtype == subtype
    }
}

/// RFC 9110 `tchar`.
fn tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn token(s: &str) -> Option<&str> {
    (!s.is_empty() && s.chars().all(tchar)).then_some(s)
}

/// `type "/" subtype *( OWS ";" OWS parameter )`, where a parameter is `token "=" ( token /
/// quoted-string )`; anything else (a list, a bare word, stray bytes) is refused.
pub fn parse(value: &str) -> Result<MediaType, String> {
    let bad = |why: &str| format!("`{}` is not a media type ({why})", cut(value, 80));
    let mut rest = value.trim_matches([' ', '\t']);
    let end = rest.find([';', ' ', '\t']).unwrap_or(rest.len());
    let (essence, tail) = rest.split_at(end);
    let (kind, subtype) = essence
        .split_once('/')
        .ok_or_else(|| bad("no type/subtype"))?;
    let (kind, subtype) = match (token(kind), token(subtype)) {
        (Some(k), Some(s)) => (k.to_ascii_lowercase(), s.to_ascii_lowercase()),
        _ => return Err(bad("type and subtype must be tokens")),
    };
    rest = tail;
    let mut parameters = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            break;
        }
        rest = rest.strip_prefix(';').ok_or_else(|| bad("expected `;`"))?;
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            break; // a trailing `;` is allowed by the grammar (an empty parameter)
        }
        let eq = rest
            .find('=')
            .ok_or_else(|| bad("a parameter without `=`"))?;
        let name = token(&rest[..eq]).ok_or_else(|| bad("a parameter name is not a token"))?;
        rest = &rest[eq + 1..];
        let (value, after) = parameter_value(rest).ok_or_else(|| bad("a parameter value"))?;
        parameters.push((name.to_ascii_lowercase(), value));
        rest = after;
    }
    Ok(MediaType {
        kind,
        subtype,
        parameters,
    })
}

/// A parameter's value (a token or a quoted string) and what follows it.
fn parameter_value(s: &str) -> Option<(String, &str)> {
    let Some(quoted) = s.strip_prefix('"') else {
        let end = s.find([';', ' ', '\t']).unwrap_or(s.len());
        return Some((token(&s[..end])?.to_owned(), &s[end..]));
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &quoted[i + 1..])),
            '\\' => value.push(chars.next()?.1),
            c if c == '\t' || (' '..='~').contains(&c) => value.push(c),
            _ => return None,
        }
    }
    None // no closing quote
}

/// What a POST may declare: the body's media type, or none (the body-less exception).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    Json,
    Toml,
    Nothing,
}

/// The endpoints that take no body (A1111 clients post to them without one).
pub fn body_less(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "/sdapi/v1/interrupt"
            | "/sdapi/v1/skip"
            | "/sdapi/v1/refresh-checkpoints"
            | "/sdapi/v1/refresh-loras"
            | "/sdapi/v1/refresh-vae"
            | "/sdapi/v1/refresh-embeddings"
            | "/sdapi/v1/unload-checkpoint"
            | "/sdapi/v1/reload-checkpoint"
    )
}

/// Whether a request says a browser sent it (a POST from a page always carries `Origin`).
fn from_a_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN)
        || headers.contains_key("sec-fetch-site")
        || headers.contains_key("sec-fetch-mode")
}

/// The admission rule for a state-changing request to `path` (see the module's text): what its
/// body is, or a 415 naming what to send.
pub fn admit(path: &str, headers: &HeaderMap) -> Result<Declared, ApiError> {
    let native = path.starts_with("/hiresfix/");
    let wanted = match native {
        true => "Content-Type: application/json or application/toml",
        false => "Content-Type: application/json",
    };
    let refuse = |got: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("this endpoint takes {wanted} (got {got}) — web pages cannot post here"),
        )
    };
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        let empty = headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
            && !headers.contains_key(header::TRANSFER_ENCODING);
        return match body_less(path) && empty && !from_a_browser(headers) {
            true => Ok(Declared::Nothing),
            false => Err(refuse("no Content-Type")),
        };
    };
    if values.next().is_some() {
        return Err(refuse("two Content-Type headers"));
    }
    let text = String::from_utf8_lossy(value.as_bytes());
    let media = parse(&text).map_err(|e| refuse(&e))?;
    if media.is("application", "json") {
        return Ok(Declared::Json);
    }
    if native && media.is("application", "toml") {
        return Ok(Declared::Toml);
    }
    Err(refuse(&format!(
        "`{}/{}`",
        cut(&media.kind, 40),
        cut(&media.subtype, 40)
    )))
}

/// Middleware: every request but GET/HEAD passes [`admit`] before its handler runs or its body
/// is read.
pub async fn require(request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    match admit(request.uri().path(), request.headers()) {
        Ok(declared) => {
            let mut request = request;
            request.extensions_mut().insert(declared);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_parsed_not_searched() {
        let json = |v: &str| parse(v).is_ok_and(|m| m.is("application", "json"));
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"utf-8\"",
            " application/json ; charset=UTF-8 ;",
            "application/json;",
        ] {
            assert!(json(ok), "{ok}");
        }
        for refused in [
            "text/plain;json=1",
            "application/jsonx",
            "application/json-patch+json",
            "application/json, text/plain",
            "json",
            "application/ json",
            "application/json; charset",
            "application/json; a=\"unterminated",
            "",
        ] {
            assert!(!json(refused), "{refused}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_body_less_exception_is_for_scripts_only() {
        let interrupt = "/sdapi/v1/interrupt";
        assert_eq!(admit(interrupt, &headers(&[])).unwrap(), Declared::Nothing);
        let browser = headers(&[("origin", "http://evil.example")]);
        assert_eq!(admit(interrupt, &browser).unwrap_err().status, 415);
        let with_body = headers(&[("content-length", "2")]);
        assert_eq!(admit(interrupt, &with_body).unwrap_err().status, 415);
        assert_eq!(
            admit("/sdapi/v1/txt2img", &headers(&[]))
                .unwrap_err()
                .status,
            415
        );
        let toml = headers(&[("content-type", "application/toml")]);
        assert_eq!(
            admit("/hiresfix/v1/generate", &toml).unwrap(),
            Declared::Toml
        );
        assert_eq!(admit("/sdapi/v1/txt2img", &toml).unwrap_err().status, 415);
        let two = headers(&[
            ("content-type", "application/json"),
            ("content-type", "text/plain"),
        ]);
        assert_eq!(admit("/sdapi/v1/txt2img", &two).unwrap_err().status, 415);
    }
}
