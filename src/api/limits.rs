//! What a request may bring: headers up to [`MAX_HEADER_BYTES`] and a body up to
//! [`MAX_BODY_BYTES`] (the API is GET-only; only the admission webhook reads a body), each refused
//! with a metav1 Status, plus the hyper connection limits behind them, so one client cannot
//! make the server buffer without bound.

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto::Builder;

use super::status::Status;

/// The most request-line-and-header bytes answered with a Status: far above what the HPA or
/// the aggregator's front proxy sends (a few identity headers), far below hyper's own cap.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// The largest request body accepted; more is a 413. An AdmissionReview of a ScaledObject
/// is a few KiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// hyper's hard cap on a connection: the HTTP/1 read buffer (request line and headers) and the
/// HTTP/2 header list. Above it hyper itself answers a bare 431 and closes the connection;
/// between [`MAX_HEADER_BYTES`] and this, [`limit_requests`] answers with a Status.
pub const CONNECTION_HEADER_LIMIT: usize = 64 * 1024;

/// Applies the connection caps to a server connection builder (both HTTP versions). hyper's
/// HTTP/1 default buffers up to ~400 KiB of headers per connection.
pub fn configure_connections(builder: &mut Builder<TokioExecutor>) {
    builder.http1().max_buf_size(CONNECTION_HEADER_LIMIT);
    builder
        .http2()
        .max_header_list_size(CONNECTION_HEADER_LIMIT as u32);
}

/// Router middleware: 431 for oversized headers, 413 for an oversized body (declared or
/// streamed), 400 for a malformed `Content-Length`; a small body is read whole and passed on.
pub async fn limit_requests(request: Request, next: Next) -> Response {
    let header_bytes = header_bytes(&request);
    if header_bytes > MAX_HEADER_BYTES {
        return Status::header_fields_too_large(format!(
            "the request line and headers are {header_bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"
        ))
        .into_response();
    }
    if let Some(length) = request.headers().get(header::CONTENT_LENGTH) {
        match length
            .to_str()
            .ok()
            .and_then(|l| l.trim().parse::<u64>().ok())
        {
            Some(length) if length > MAX_BODY_BYTES as u64 => return too_large().into_response(),
            Some(_) => {}
            None => {
                return Status::bad_request("the Content-Length header is not a number")
                    .into_response();
            }
        }
    }
    let (parts, body) = request.into_parts();
    let mut kept = Vec::new();
    if body.size_hint().exact() != Some(0) {
        // Read whole, up to the cap: the admission webhook reads it, GET routes ignore it,
        // and an unread body would cost the client its keep-alive connection.
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(chunk) => {
                    if kept.len() + chunk.len() > MAX_BODY_BYTES {
                        return too_large().into_response();
                    }
                    kept.extend_from_slice(&chunk);
                }
                Err(err) => {
                    return Status::bad_request(format!("cannot read the request body: {err}"))
                        .into_response();
                }
            }
        }
    }
    next.run(Request::from_parts(parts, Body::from(kept))).await
}

/// The bytes of `request`'s path, query and headers, counted as on the wire.
pub fn header_bytes<B>(request: &axum::http::Request<B>) -> usize {
    request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len())
        + request
            .headers()
            .iter()
            // ": " and CRLF around each header, as on the wire.
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
}

fn too_large() -> Status {
    Status::payload_too_large(format!(
        "the request body is over {MAX_BODY_BYTES} bytes; this API takes GETs without a body"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What hyper answers `request` with on a connection built with the caps.
    async fn answer(request: String) -> String {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut builder = Builder::new(TokioExecutor::new());
        configure_connections(&mut builder);
        let service = TowerToHyperService::new(super::super::health_router());
        let served = tokio::spawn(async move {
            let _ = builder
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        let (mut read, mut write) = tokio::io::split(client);
        // Written in the background: hyper may answer and close before reading it all.
        tokio::spawn(async move {
            let _ = write.write_all(request.as_bytes()).await;
        });
        let mut bytes = Vec::new();
        let _ = read.read_to_end(&mut bytes).await;
        served.await.unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn connections_cap_headers_above_the_status_limit() {
        let get = |padding: usize| {
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Padding: {}\r\n\r\n",
                "p".repeat(padding)
            )
        };
        const TOO_LARGE: &str = "HTTP/1.1 431 Request Header Fields Too Large";
        assert!(answer(get(10)).await.starts_with("HTTP/1.1 200 OK"));
        // Over the Status limit, under hyper's: our 431 with a Status body.
        let ours = answer(get(MAX_HEADER_BYTES)).await;
        assert!(ours.starts_with(TOO_LARGE), "{ours}");
        assert!(ours.contains(r#""kind":"Status""#), "{ours}");
        // Over hyper's cap (and under its ~400 KiB default): hyper's own bare 431, so the cap
        // is in force and the rest of the headers was never buffered.
        let hypers = answer(get(4 * CONNECTION_HEADER_LIMIT)).await;
        assert!(hypers.starts_with(TOO_LARGE), "{hypers}");
        assert!(!hypers.contains("Status"), "{hypers}");
    }
}
