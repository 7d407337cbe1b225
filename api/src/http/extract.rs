//! Extractors whose rejections are [`AppError`]s, so a malformed body, query
//! or path answers a JSON 400 naming the field instead of axum's plain text.
//!
//! They also refuse NUL characters anywhere in a body, query or path:
//! Postgres cannot store them in `text`, so letting one through would turn
//! bad input into a 500.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::http::error::AppError;

const NUL_MESSAGE: &str = "text must not contain NUL (\\u0000) characters";

/// A JSON body. Requires `Content-Type: application/json` (415 otherwise).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

fn is_json_content_type(parts_headers: &axum::http::HeaderMap) -> bool {
    parts_headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime_like::Essence>().ok())
        .is_some_and(|m| m.is_json())
}

/// The essence of a media type (`type/subtype`, parameters dropped).
mod mime_like {
    pub struct Essence(String);

    impl std::str::FromStr for Essence {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let essence = s.split(';').next().ok_or(())?.trim().to_ascii_lowercase();
            if essence.contains('/') {
                Ok(Self(essence))
            } else {
                Err(())
            }
        }
    }

    impl Essence {
        pub fn is_json(&self) -> bool {
            self.0 == "application/json"
                || (self.0.starts_with("application/") && self.0.ends_with("+json"))
        }
    }
}

/// True when the raw JSON text escapes a NUL (`\u0000`) outside an escaped
/// backslash. A literal NUL byte is invalid JSON and fails parsing anyway.
fn json_escapes_nul(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1..i + 6) == Some(b"u0000") {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body): (Parts, Body) = req.into_parts();
        if !is_json_content_type(&parts.headers) {
            return Err(AppError::Rejection {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message: "expected a request with `Content-Type: application/json`".into(),
            });
        }
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|err| {
                let too_large = err
                    .into_inner()
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                if too_large {
                    AppError::Rejection {
                        status: StatusCode::PAYLOAD_TOO_LARGE,
                        message: "request body is too large".into(),
                    }
                } else {
                    AppError::bad_request("cannot read the request body")
                }
            })?;
        if json_escapes_nul(&bytes) {
            return Err(AppError::bad_request(NUL_MESSAGE));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Json(value))
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn refuse_encoded_nul(parts: &Parts) -> Result<(), AppError> {
    let uri = parts.uri.to_string();
    if uri.contains("%00") {
        return Err(AppError::bad_request(NUL_MESSAGE));
    }
    Ok(())
}

/// Query parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        refuse_encoded_nul(parts)?;
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// Path parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        refuse_encoded_nul(parts)?;
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_escaped_nul_but_not_escaped_backslash() {
        assert!(json_escapes_nul(br#"{"a":"x\u0000y"}"#));
        assert!(!json_escapes_nul(br#"{"a":"x\\u0000y"}"#));
        assert!(json_escapes_nul(br#"{"a":"x\\\u0000y"}"#));
        assert!(!json_escapes_nul(br#"{"a":"\u0001"}"#));
    }

    #[test]
    fn json_content_types() {
        let mut h = axum::http::HeaderMap::new();
        assert!(!is_json_content_type(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().expect("v"),
        );
        assert!(is_json_content_type(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/problem+json".parse().expect("v"),
        );
        assert!(is_json_content_type(&h));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().expect("v"));
        assert!(!is_json_content_type(&h));
    }
}
