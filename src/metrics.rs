//! Prometheus metrics over HTTP/1.1 (`GET /metrics`): each pool's
//! enforcement mode, room and promises, the memory budget, volume counts,
//! snapshot counts by how they were made and copies still running.
//!
//! Any pod may reach the port, so the server is hyper's with hard bounds: at
//! most [`MAX_CONNECTIONS`] open at once (more are closed as soon as they are
//! accepted), request headers within [`HEADER_TIMEOUT`], a whole connection
//! within [`CONNECTION_TIMEOUT`], one request per connection, and a pause
//! after a failed accept (out of fds) instead of a busy loop.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::driver::Driver;
use crate::error::Result;
use crate::health::{self, Reason};
use crate::kind::Backing;
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

/// Answers scrapes of a node's metrics on `listener` for as long as the
/// process runs.
pub async fn serve(driver: Arc<Driver>, listener: TcpListener) {
    serve_page(
        listener,
        Arc::new(move || render(&driver).map_err(|e| e.to_string())),
    )
    .await;
}

/// Answers scrapes of `page` on `listener` for as long as the process runs.
pub async fn serve_page(listener: TcpListener, page: Page) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let page = Arc::clone(&page);
        tokio::spawn(async move {
            let _slot = slot;
            connection(page, stream).await;
        });
    }
}

/// Serves one request on `stream` within the timeouts.
async fn connection(page: Page, stream: TcpStream) {
    let service = hyper::service::service_fn(move |request| answer(Arc::clone(&page), request));
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
    page: Page,
    request: Request<hyper::body::Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = if request.method() == Method::GET && request.uri().path() == "/metrics" {
        let scraped = blocking(move || Ok(page())).await;
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
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(response)
}

/// The metrics in the Prometheus text format.
pub fn render(driver: &Driver) -> Result<String> {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let pools = driver.pools();
    let mut enforcement = Vec::new();
    let mut free = Vec::new();
    let mut promised = Vec::new();
    for pool in pools {
        let (mode, on) = (
            pool.enforcement.mode(),
            u64::from(pool.enforcement.available()),
        );
        enforcement.push((format!("{{pool=\"{}\",mode=\"{mode}\"}}", pool.name), on));
        free.push((
            format!("{{pool=\"{}\"}}", pool.name),
            pool.space()?.free_bytes,
        ));
        let disk = Backing::Disk(pool.name.clone());
        promised.push((
            format!("{{pool=\"{}\"}}", pool.name),
            driver.table().promised(&disk),
        ));
    }
    let mut snapshots = Vec::new();
    let mut copying = Vec::new();
    for pool in pools {
        let (by_method, pending) = driver.snapshots().counts(&pool.name);
        snapshots.extend(by_method.into_iter().map(|(method, n)| {
            (
                format!("{{pool=\"{}\",method=\"{}\"}}", pool.name, method.as_str()),
                n,
            )
        }));
        copying.push((format!("{{pool=\"{}\"}}", pool.name), pending));
    }
    let mut volumes: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for pool in pools {
        for record in driver.table().records_in(&pool.name) {
            *volumes
                .entry((pool.name.to_string(), record.kind.as_str()))
                .or_default() += 1;
        }
    }
    // Health: each volume's backing is looked at outside the table's lock.
    let served: Vec<_> = driver.table().iter().cloned().collect();
    let mut problems: BTreeMap<(String, &str, &str), u64> = BTreeMap::new();
    for volume in &served {
        let findings = health::of_volume(driver, volume);
        driver.observe(&volume.record.id, &findings);
        for finding in findings {
            *problems
                .entry((
                    volume.record.pool.to_string(),
                    volume.record.kind.as_str(),
                    finding.reason.as_str(),
                ))
                .or_default() += 1;
        }
    }
    let unreadable = driver.unreadable_count();
    let pool_problems = driver.storage_findings();
    family(
        "hostpath_csi_volume_problems",
        "Volumes with a health problem now, per pool, kind and reason (as NodeGetVolumeHealth reports them).",
        problems
            .into_iter()
            .map(|((pool, kind, reason), n)| {
                (
                    format!("{{pool=\"{pool}\",kind=\"{kind}\",reason=\"{reason}\"}}"),
                    n,
                )
            })
            .chain((unreadable > 0).then(|| {
                (
                    format!("{{reason=\"{}\"}}", Reason::RecordUnreadable.as_str()),
                    unreadable,
                )
            }))
            .collect(),
    );
    family(
        "hostpath_csi_pool_problem",
        "1 for each health problem a pool has now, per pool and reason (as NodeGetStorageHealth reports them).",
        pool_problems
            .into_iter()
            .map(|f| {
                (
                    format!("{{pool=\"{}\",reason=\"{}\"}}", f.pool, f.reason.as_str()),
                    1,
                )
            })
            .collect(),
    );
    family(
        "hostpath_csi_pool_enforcement",
        "Whether the pool holds directory volumes to their capacity (1) or only tracks it (0), and how.",
        enforcement,
    );
    family(
        "hostpath_csi_pool_free_bytes",
        "Free bytes of the pool's filesystem.",
        free,
    );
    family(
        "hostpath_csi_pool_promised_bytes",
        "Capacity promised to the disk volumes of the pool.",
        promised,
    );
    family(
        "hostpath_csi_memory_budget_bytes",
        "RAM that memory volumes may take in all.",
        vec![(String::new(), driver.config.memory_budget)],
    );
    family(
        "hostpath_csi_memory_promised_bytes",
        "RAM promised to memory volumes.",
        vec![(String::new(), driver.table().promised(&Backing::Memory))],
    );
    family(
        "hostpath_csi_volumes",
        "Volumes on this node, per pool and kind.",
        volumes
            .into_iter()
            .map(|((pool, kind), n)| (format!("{{pool=\"{pool}\",kind=\"{kind}\"}}"), n))
            .collect(),
    );
    family(
        "hostpath_csi_snapshots",
        "Snapshots on this node, per pool and how they were made (btrfs-snapshot, reflink, reflink-tree, copy).",
        snapshots,
    );
    family(
        "hostpath_csi_snapshots_not_ready",
        "Snapshots of the pool whose copy has not ended (running, waiting for a copier, or failed).",
        copying,
    );
    Ok(out)
}
