//! The local HTTP endpoint (`[api] listen`): `GET /health`, `/metrics` (Prometheus text) and
//! `/status` (JSON). hyper 1's HTTP/1 server on one task, a connection cap and timeouts so a
//! misbehaving scraper cannot hold the daemon's memory or sockets.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::ops::telemetry::Telemetry;

/// Connections served at once; further ones wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// A connection that has not sent its request head within this is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one (keep-alive) connection.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves until `stop` is cancelled. The listener is bound by the caller, so a port in use
/// fails the start-up, not later.
pub(crate) async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let acquired = tokio::select! {
            permit = permits.clone().acquire_owned() => permit,
            () = stop.cancelled() => return,
        };
        let Ok(permit) = acquired else { return };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(%error, "API: accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = respond(&telemetry, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(permit);
        });
    }
}

fn respond(telemetry: &Telemetry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned());
    }
    match request.uri().path() {
        "/health" => match telemetry.health() {
            Ok(()) => {
                let warnings: String =
                    telemetry.warnings().iter().map(|warning| format!("warning: {warning}\n")).collect();
                plain(StatusCode::OK, format!("ok\n{warnings}"))
            }
            Err(problems) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", problems.join("\n"))),
        },
        "/metrics" => {
            with_type(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", telemetry.metrics())
        }
        "/status" => match serde_json::to_string_pretty(&telemetry.status()) {
            Ok(json) => with_type(StatusCode::OK, "application/json", json + "\n"),
            Err(error) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
        },
        _ => plain(StatusCode::NOT_FOUND, "not found: try /health, /metrics or /status\n".to_owned()),
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}
