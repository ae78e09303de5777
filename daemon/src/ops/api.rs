//! The local HTTP endpoint (`[api] listen`): `GET /health`, `/metrics` (Prometheus text) and
//! `/status` (JSON), and `POST /dead-letters/resend[?sink=NAME]` (what `eddy dead-letters
//! --resend` calls while eddy runs: each sink's task marks its dead letters for resend, flushes,
//! answers how many, and delivers them before its next records). hyper 1's HTTP/1 server on one task, a connection cap and timeouts so a
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
/// How long a resend request waits for each sink's task (one delivery in flight at most).
const RESEND_ANSWER_WITHIN: Duration = Duration::from_secs(45);

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
                let telemetry = telemetry.clone();
                async move {
                    let response = if request.method() == Method::POST
                        && request.uri().path() == "/dead-letters/resend"
                    {
                        resend(&telemetry, request.uri().query()).await
                    } else {
                        respond(&telemetry, &request)
                    };
                    Ok::<_, Infallible>(response)
                }
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
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET, or POST /dead-letters/resend\n".to_owned());
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

/// `POST /dead-letters/resend[?sink=NAME]`: asks every sink (or NAME) to mark its dead letters
/// for resend; one line per sink. 200 when every sink answered, 503 when one did not in time
/// (its dead letters are marked when it gets to it), 404 for an unknown sink.
async fn resend(telemetry: &Telemetry, query: Option<&str>) -> Response<Full<Bytes>> {
    let only = query.and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("sink=")));
    let only = only.map(percent_decode);
    let sinks = telemetry.sinks.borrow().clone();
    if let Some(name) = &only {
        if !sinks.iter().any(|(sink, _)| sink == name) {
            return plain(StatusCode::NOT_FOUND, format!("no sink `{name}` is running\n"));
        }
    }
    let asked: Vec<_> = sinks
        .iter()
        .filter(|(sink, _)| only.as_ref().is_none_or(|name| name == sink))
        .map(|(sink, stats)| (sink.clone(), stats.resend.request()))
        .collect();
    let mut body = String::new();
    let mut all_answered = true;
    for (sink, answer) in asked {
        match tokio::time::timeout(RESEND_ANSWER_WITHIN, answer).await {
            Ok(Ok(Ok(count))) => {
                body.push_str(&format!("sink {sink}: {count} dead letters queued for resend\n"))
            }
            Ok(Ok(Err(error))) => {
                all_answered = false;
                body.push_str(&format!("sink {sink}: its dead letters could not be marked: {error}\n"));
            }
            Ok(Err(_)) | Err(_) => {
                all_answered = false;
                body.push_str(&format!(
                    "sink {sink}: no answer within {} s (stopped, restarting, or the store is being opened \
                     again); its dead letters are marked when its task runs again\n",
                    RESEND_ANSWER_WITHIN.as_secs()
                ));
            }
        }
    }
    if body.is_empty() {
        body.push_str("no sink is running\n");
    }
    plain(if all_answered { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

/// `%XX` escapes of a query value decoded (a `+` stays a `+`); invalid escapes stay as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|byte| char::from(*byte).to_digit(16));
        match (bytes[idx], hex(idx + 1), hex(idx + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                idx += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                idx += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("hub"), "hub");
        assert_eq!(percent_decode("hub%20a%2Fb"), "hub a/b");
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
