//! Prometheus metrics over plain HTTP (`GET /metrics`): each pool's
//! enforcement mode, room and promises, the memory budget, volume counts.
//! Read-only; meant for a scrape on the node's own network.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::driver::{Driver, blocking};
use crate::error::Result;
use crate::kind::Backing;

/// Largest request read; anything longer is answered from what was read.
const MAX_REQUEST: usize = 8192;

/// Answers scrapes on `listener` for as long as the process runs.
pub async fn serve(driver: Arc<Driver>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(Arc::clone(&driver), stream));
            }
            Err(err) => tracing::warn!(%err, "metrics: accept failed"),
        }
    }
}

async fn answer(driver: Arc<Driver>, mut stream: TcpStream) {
    let mut request = vec![0u8; MAX_REQUEST];
    let mut read = 0;
    while read < request.len() && !request[..read].windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut request[read..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    let wanted = request[..read].starts_with(b"GET /metrics ");
    let (status, body) = if wanted {
        match blocking(move || render(&driver)).await {
            Ok(text) => ("200 OK", text),
            Err(err) => ("500 Internal Server Error", format!("{err}\n")),
        }
    } else {
        ("404 Not Found", "only GET /metrics is served\n".to_owned())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if let Err(err) = stream.write_all(format!("{head}{body}").as_bytes()).await {
        tracing::debug!(%err, "metrics: client went away");
    }
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
    let mut volumes: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for pool in pools {
        for record in driver.table().records_in(&pool.name) {
            *volumes
                .entry((pool.name.to_string(), record.kind.as_str()))
                .or_default() += 1;
        }
    }
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
    Ok(out)
}
