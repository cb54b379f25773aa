//! The shop's API as the load generator uses it: `POST /orders`, `GET /orders/{id}`,
//! `GET /catalog`, `GET /metrics`, over one pooled HTTP/1.1 client (hyper-util).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;

/// Why a request did not get the answer it wanted. Reported by kind, counted per second.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// No connection could be made or it broke before an answer.
    Connection,
    /// No answer within the request timeout.
    Timeout,
    /// An answer with an unexpected status.
    Status(u16),
    /// A 2xx answer whose body was not what the API documents.
    Body,
    /// More requests in flight than `--max-in-flight`: not sent at all. A symptom of a
    /// service that stopped answering; counted so that the run cannot look healthy.
    Saturated,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connection => f.write_str("connection"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Status(code) => write!(f, "http-{code}"),
            Failure::Body => f.write_str("bad-body"),
            Failure::Saturated => f.write_str("client-saturated"),
        }
    }
}

/// One HTTP client for the whole run.
#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    timeout: Duration,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// `base` is `http://host:port`. Must be called inside a tokio runtime.
    #[must_use]
    pub fn new(base: &str, timeout: Duration, pool: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(pool)
            .build(connector);
        Api {
            client,
            base: base.trim_end_matches('/').to_owned(),
            timeout,
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|_| Failure::Body)?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|_| Failure::Connection)?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|_| Failure::Connection)?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Failure::Timeout)?
    }

    /// `POST /orders`; the order id of a `202`.
    pub async fn place(&self, body: String, key: &str) -> Result<String, Failure> {
        let headers = [
            ("content-type", "application/json"),
            ("idempotency-key", key),
        ];
        let (status, body) = self
            .exchange(Method::POST, "/orders", &headers, Some(body))
            .await?;
        if status != StatusCode::ACCEPTED {
            return Err(Failure::Status(status.as_u16()));
        }
        let value: Value = serde_json::from_slice(&body).map_err(|_| Failure::Body)?;
        value["order_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or(Failure::Body)
    }

    /// `GET /orders/{id}`; the order's status.
    pub async fn status(&self, order_id: &str) -> Result<String, Failure> {
        let (status, body) = self
            .exchange(Method::GET, &format!("/orders/{order_id}"), &[], None)
            .await?;
        if status != StatusCode::OK {
            return Err(Failure::Status(status.as_u16()));
        }
        let value: Value = serde_json::from_slice(&body).map_err(|_| Failure::Body)?;
        value["status"]
            .as_str()
            .map(str::to_owned)
            .ok_or(Failure::Body)
    }

    /// The SKUs of `GET /catalog`.
    pub async fn skus(&self) -> Result<Vec<String>, String> {
        let (status, body) = self
            .exchange(Method::GET, "/catalog", &[], None)
            .await
            .map_err(|e| format!("GET {}/catalog: {e}", self.base))?;
        if status != StatusCode::OK {
            return Err(format!("GET {}/catalog answered {status}", self.base));
        }
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("GET {}/catalog: not JSON: {e}", self.base))?;
        let items = value
            .as_array()
            .or_else(|| value["items"].as_array())
            .cloned()
            .unwrap_or_default();
        let skus: Vec<String> = items
            .iter()
            .filter_map(|item| item["sku"].as_str().map(str::to_owned))
            .collect();
        if skus.is_empty() {
            return Err(format!("GET {}/catalog lists no SKU", self.base));
        }
        Ok(skus)
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> Result<String, Failure> {
        let (status, body) = self.exchange(Method::GET, "/metrics", &[], None).await?;
        if status != StatusCode::OK {
            return Err(Failure::Status(status.as_u16()));
        }
        String::from_utf8(body.to_vec()).map_err(|_| Failure::Body)
    }
}
