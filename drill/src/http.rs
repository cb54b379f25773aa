//! The drill's HTTP client: plain HTTP/1.1 on hyper, one pooled client for every call, a
//! deadline on each.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use reprise_shop::gateway::error_chain;

/// What one call came back with.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Why a call has no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// No connection (refused, reset before an answer): the request may or may not have
    /// reached the server.
    Connection(String),
    /// No answer within the deadline.
    Timeout,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Connection(cause) => write!(f, "connection: {cause}"),
            CallError::Timeout => f.write_str("timeout"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    #[must_use]
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build(connector);
        Http { client }
    }

    /// `GET url`.
    ///
    /// # Errors
    /// See [`CallError`].
    pub async fn get(&self, url: &str, deadline: Duration) -> Result<Answer, CallError> {
        self.call(Method::GET, url, &[], Bytes::new(), deadline)
            .await
    }

    /// `POST url` with a JSON body and extra headers.
    ///
    /// # Errors
    /// See [`CallError`].
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        deadline: Duration,
    ) -> Result<Answer, CallError> {
        self.call(Method::POST, url, headers, body, deadline).await
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        deadline: Duration,
    ) -> Result<Answer, CallError> {
        let mut request = Request::builder().method(method).uri(url);
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| CallError::Connection(format!("bad request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| CallError::Connection(error_chain(&e)))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| CallError::Connection(error_chain(&e)))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| CallError::Timeout)?
    }
}
