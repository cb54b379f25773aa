//! Problem documents (RFC 9457, `application/problem+json`): every refusal of the API
//! and of the fake providers is one, with `type`, `title`, `status` and `detail`, plus
//! extension members where they help (`sku`, `errors`, `order_id`).
//!
//! Types are absolute URIs under [`TYPE_BASE`]; `docs/production-service.md` lists them.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// Prefix of every problem `type`.
pub const TYPE_BASE: &str = "https://example.invalid/reprise-shop/problems/";

/// A problem document. Build with [`Problem::new`], add members with [`Problem::with`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
    /// Ask the client to close the connection (draining).
    #[serde(skip)]
    pub close: bool,
}

impl Problem {
    /// A problem of type [`TYPE_BASE`]`slug`.
    #[must_use]
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            kind: format!("{TYPE_BASE}{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            extensions: Map::new(),
            retry_after_secs: None,
            close: false,
        }
    }

    /// Adds an extension member.
    #[must_use]
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(name.to_owned(), value.into());
        self
    }

    /// Adds a `Retry-After` header.
    #[must_use]
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Adds `Connection: close`.
    #[must_use]
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The slug of the type (what follows [`TYPE_BASE`]).
    #[must_use]
    pub fn slug(&self) -> &str {
        self.kind.strip_prefix(TYPE_BASE).unwrap_or(&self.kind)
    }

    /// 404 for any unknown path.
    #[must_use]
    pub fn not_found(path: &str) -> Self {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("there is nothing at {path}"),
        )
    }

    /// 503 while the service is starting or draining, or a dependency is down.
    #[must_use]
    pub fn unavailable(slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, slug, title, detail).retry_after(1)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A JSON (not problem) response.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = (status, body).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            format!("the answer could not be encoded: {error}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_serialises_with_rfc_9457_members_and_extensions() {
        let problem = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-sku",
            "Unknown SKU",
            "no such sku",
        )
        .with("sku", "nope");
        let value: Value = serde_json::to_value(&problem).unwrap();
        assert_eq!(value["type"], format!("{TYPE_BASE}unknown-sku"));
        assert_eq!(value["title"], "Unknown SKU");
        assert_eq!(value["status"], 422);
        assert_eq!(value["detail"], "no such sku");
        assert_eq!(value["sku"], "nope");
        assert_eq!(problem.slug(), "unknown-sku");
        let response = problem.retry_after(3).into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
