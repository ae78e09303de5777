//! The HTTP uplink: POSTs batches of records as one JSON array and classifies the answer.
//!
//! Contract:
//! - One delivery is one `POST` with `Content-Type: application/json` and a JSON array of the
//!   records, in order, plus the configured headers.
//! - 2xx: `Delivered`. 408, 429 and 5xx, a connection error or no complete answer within
//!   `timeout`: `Offline` (retried later with backoff; the server may have processed the
//!   request, so the batch may arrive twice).
//! - 401, 403, 407: `Unauthorized`: the hub refuses our credentials, not the records. The
//!   daemon retries with the same backoff for as long as it lasts (an expired token is fixed
//!   by an operator, then the backlog flows) and `/health` warns meanwhile.
//! - 413: `TooLarge`: the daemon splits the batch in halves and sends the parts at once; a
//!   single record answered 413 is dead-lettered (`HTTP 413 …: record larger than the hub
//!   accepts`) and delivery goes on.
//! - Any other status (4xx, also 1xx/3xx that a server should not send to a POST here):
//!   `Rejected`, permanently: the daemon moves the batch to its dead-letter tree, counts it
//!   and goes on.
//! - Connections are pooled (HTTP/1.1 keep-alive); a request that times out takes its
//!   connection with it.

mod config;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::SinkError;
pub use crate::http::config::{HttpConfig, RawHttpSink};
use crate::record::{Delivery, OutRecord};
use crate::tls::client_config;

/// How much of an error response's body is kept for the log.
const ERROR_BODY_BYTES: usize = 512;

/// What an HTTP status means for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 2xx.
    Delivered,
    /// 408, 429, 5xx: try again later.
    Retry,
    /// 401, 403, 407: our credentials are refused; try again later, and tell the operator.
    Unauthorized,
    /// 413: the batch is too large; split it.
    TooLarge,
    /// Anything else: the server will never take this batch.
    Reject,
}

/// Classifies a response status (see the module docs).
pub fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Delivered,
        408 | 429 | 500..=599 => StatusClass::Retry,
        401 | 403 | 407 => StatusClass::Unauthorized,
        413 => StatusClass::TooLarge,
        _ => StatusClass::Reject,
    }
}

/// POSTs records to an HTTP endpoint (the hub).
pub struct HttpSink {
    config: HttpConfig,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpSink {
    /// Prepares the uplink (parses the URL and headers, reads the TLS files).
    pub fn new(config: HttpConfig) -> Result<HttpSink, SinkError> {
        let uri: Uri = config.url.parse().map_err(|error| SinkError::Invalid {
            what: "url",
            reason: format!("`{}`: {error}", eddy_common::redact_url(&config.url)),
        })?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(SinkError::Invalid {
                    what: "url",
                    reason: format!(
                        "`{}` must start with http:// or https://",
                        eddy_common::redact_url(&config.url)
                    ),
                })
            }
        };
        if uri.host().is_none() {
            return Err(SinkError::Invalid {
                what: "url",
                reason: format!("`{}` has no host", eddy_common::redact_url(&config.url)),
            });
        }
        let mut headers = Vec::new();
        for (name, value) in &config.headers {
            let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|error| {
                SinkError::Invalid { what: "header name", reason: format!("`{name}`: {error}") }
            })?;
            let mut header_value = HeaderValue::from_str(value.expose()).map_err(|_| SinkError::Invalid {
                what: "header value",
                reason: format!("the value of `{name}` has characters a header cannot carry"),
            })?;
            header_value.set_sensitive(true);
            headers.push((header_name, header_value));
        }
        let tls = if https {
            client_config(&config.tls, &[b"http/1.1"])?
        } else {
            // Never used for http:// URLs, but the connector wants one.
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|error| SinkError::Invalid { what: "TLS", reason: error.to_string() })?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(connector);
        Ok(HttpSink { config, uri, headers, client })
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// POSTs `records` as one JSON array; see the module docs.
    pub(crate) async fn deliver(&mut self, records: &[OutRecord]) -> Delivery {
        if records.is_empty() {
            return Delivery::Delivered;
        }
        let body = encode_array(records);
        match tokio::time::timeout(self.config.timeout, self.post(body)).await {
            Ok(Ok((status, text))) => match classify_status(status.as_u16()) {
                StatusClass::Delivered => Delivery::Delivered,
                StatusClass::Retry => Delivery::Offline { reason: format!("HTTP {status}: {text}") },
                StatusClass::Unauthorized => Delivery::Unauthorized {
                    status: status.as_u16(),
                    reason: format!("HTTP {status}: {text}"),
                },
                StatusClass::TooLarge => Delivery::TooLarge { reason: format!("HTTP {status}: {text}") },
                StatusClass::Reject => Delivery::Rejected { reason: format!("HTTP {status}: {text}") },
            },
            Ok(Err(reason)) => Delivery::Offline { reason },
            Err(_) => Delivery::Offline {
                reason: format!(
                    "no complete answer from {} within {:?}",
                    eddy_common::redact_url(&self.config.url),
                    self.config.timeout
                ),
            },
        }
    }

    /// Nothing to release: pooled connections close when idle or when the sink is dropped.
    pub(crate) async fn close(&mut self) {}

    async fn post(&self, body: Vec<u8>) -> Result<(StatusCode, String), String> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("eddy/", env!("CARGO_PKG_VERSION")));
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request =
            request.body(Full::new(Bytes::from(body))).map_err(|error| format!("bad request: {error}"))?;
        let response = self.client.request(request).await.map_err(|error| {
            format!(
                "POST {} failed: {}",
                eddy_common::redact_url(&self.config.url),
                crate::error::reason_of(&error)
            )
        })?;
        let status = response.status();
        // Read the body whole (the connection is reused only then); keep a bit for the log.
        let collected = Limited::new(response.into_body(), 1 << 20).collect().await;
        let text = match collected {
            Ok(body) => {
                let bytes = body.to_bytes();
                String::from_utf8_lossy(&bytes[..bytes.len().min(ERROR_BODY_BYTES)]).into_owned()
            }
            Err(error) => format!("(body unreadable: {error})"),
        };
        Ok((status, if status.is_success() { String::new() } else { text }))
    }
}

impl fmt::Debug for HttpSink {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("HttpSink").field("config", &self.config).finish_non_exhaustive()
    }
}

/// `[payload,payload,…]`.
fn encode_array(records: &[OutRecord]) -> Vec<u8> {
    let size: usize = records.iter().map(|record| record.payload.len() + 1).sum();
    let mut body = Vec::with_capacity(size + 2);
    body.push(b'[');
    for (idx, record) in records.iter().enumerate() {
        if idx > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&record.payload);
    }
    body.push(b']');
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_delivered_retried_refused_split_or_rejected() {
        for (status, class) in [
            (200, StatusClass::Delivered),
            (204, StatusClass::Delivered),
            (400, StatusClass::Reject),
            (401, StatusClass::Unauthorized),
            (403, StatusClass::Unauthorized),
            (407, StatusClass::Unauthorized),
            (404, StatusClass::Reject),
            (422, StatusClass::Reject),
            (413, StatusClass::TooLarge),
            (408, StatusClass::Retry),
            (429, StatusClass::Retry),
            (500, StatusClass::Retry),
            (503, StatusClass::Retry),
            (302, StatusClass::Reject),
        ] {
            assert_eq!(classify_status(status), class, "{status}");
        }
    }

    #[test]
    fn a_batch_is_one_json_array_in_order() {
        let records: Vec<OutRecord> = (1..=3)
            .map(|seq| OutRecord {
                seq,
                kind: "window".into(),
                group: String::new(),
                payload: format!("{{\"n\":{seq}}}").into_bytes(),
            })
            .collect();
        let body: serde_json::Value = serde_json::from_slice(&encode_array(&records)).unwrap();
        assert_eq!(body, serde_json::json!([{"n":1},{"n":2},{"n":3}]));
    }
}
