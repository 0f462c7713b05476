//! The HTTP/1.1 server of a metrics page (`GET /metrics`).
//!
//! Any pod may reach the port, so the server is hyper's with hard bounds: at
//! most [`MAX_CONNECTIONS`] open at once (more are closed as soon as they are
//! accepted), request headers within [`HEADER_TIMEOUT`], a whole connection
//! within [`CONNECTION_TIMEOUT`], one request per connection, and a pause
//! after a failed accept (out of fds) instead of a busy loop. One page is
//! made at a time, whatever the number of scrapers: a page takes one of the
//! driver's blocking threads until it is made, even if its client left.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::work::blocking;

/// Connections served at once; a scraper needs one.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a whole connection may last, answer included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause after failed accepts, doubling from 10 ms.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Makes the text of one scrape; runs on the blocking pool.
pub type Page = Arc<dyn Fn() -> std::result::Result<String, String> + Send + Sync>;

/// A page and the right to make it, which one scrape holds at a time.
#[derive(Clone)]
struct Maker {
    page: Page,
    turn: Arc<Semaphore>,
}

/// Answers scrapes of `page` on `listener` for as long as the process runs.
pub async fn serve_page(listener: TcpListener, page: Page) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let turn = Arc::new(Semaphore::new(1));
    let mut backoff = Duration::ZERO;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(err) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tracing::warn!(%err, ?backoff, "metrics: accept failed; pausing");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        // Over the cap, the connection is closed at once (dropped): it
        // costs nothing further, and the client sees why.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("metrics: {MAX_CONNECTIONS} connections open; one refused");
            continue;
        };
        let maker = Maker {
            page: Arc::clone(&page),
            turn: Arc::clone(&turn),
        };
        tokio::spawn(async move {
            let _slot = slot;
            connection(maker, stream).await;
        });
    }
}

/// Serves one request on `stream` within the timeouts.
async fn connection(maker: Maker, stream: TcpStream) {
    let service = hyper::service::service_fn(move |request| answer(maker.clone(), request));
    let serving = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(8192)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_TIMEOUT, serving).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!(%err, "metrics: connection ended"),
        Err(_) => tracing::debug!("metrics: connection outlived {CONNECTION_TIMEOUT:?}; closed"),
    }
}

async fn answer(
    maker: Maker,
    request: Request<hyper::body::Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = if request.method() == Method::GET && request.uri().path() == "/metrics" {
        let turn = maker.turn.acquire_owned().await.expect("never closed");
        // The turn goes with the work: it ends when the page is made.
        let scraped = blocking(move || {
            let _turn = turn;
            Ok((maker.page)())
        })
        .await;
        match scraped.map_err(|e| e.to_string()).and_then(|page| page) {
            Ok(text) => (StatusCode::OK, text),
            Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
        }
    } else {
        (
            StatusCode::NOT_FOUND,
            "only GET /metrics is served\n".to_owned(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        ),
    );
    Ok(response)
}
