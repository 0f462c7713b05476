//! `hostpath-csi status`: what this node's pools hold, read from the pools
//! and their records without the server, as a table or as JSON.
//!
//! Safe while a driver serves the pools: nothing is locked, created, moved
//! or removed (pools are opened with [`Pool::inspect`]; record files are
//! listed without the clean-up of temp files the server does at start).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Serialize;

use crate::beneath;
use crate::cli::{
    Cli, Command, DEFAULT_NEARLY_FULL_PERCENT, Mode, Output, StatusArgs, parse_pools,
};
use crate::error::{Error, Result, SysContext};
use crate::health::{self, PoolReason};
use crate::ids::PoolName;
use crate::kind::Backing;
use crate::mounts::MountIndex;
use crate::pool::Pool;
use crate::record::{self, VolumeRecord};

/// The command: the report on the pools given, or on those of the driver
/// serving here, in the format asked.
pub fn run(args: &StatusArgs) -> Result<String> {
    let (pools, served_percent) = match parse_pools(&args.pools)? {
        given if !given.is_empty() => (given, DEFAULT_NEARLY_FULL_PERCENT),
        _ => served_pools()?,
    };
    let nearly_full = args.pool_nearly_full_percent.unwrap_or(served_percent);
    let report = gather(&pools, nearly_full)?;
    Ok(match args.output {
        Output::Table => table(&report),
        Output::Json => json(&report),
    })
}

/// The pools of the first `hostpath-csi serve` process in this PID
/// namespace (the driver container's, under `kubectl exec`), parsed from
/// its command line as it parsed it, and the percent at which it calls a
/// pool nearly full.
fn served_pools() -> Result<(Vec<(PoolName, PathBuf)>, u8)> {
    let own = std::process::id().to_string();
    let processes = std::fs::read_dir("/proc").map_err(|e| Error::failed("list /proc", e))?;
    for process in processes.flatten() {
        let pid = process.file_name();
        if pid == own.as_str() || !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Processes come and go: one that cannot be read is passed over.
        let Ok(cmdline) = std::fs::read(process.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_driver = argv
            .first()
            .is_some_and(|a| Path::new(a).file_name() == Some("hostpath-csi".as_ref()));
        if !is_driver {
            continue;
        }
        if let Ok(Cli {
            command: Command::Serve(serve),
            ..
        }) = Cli::try_parse_from(&argv)
            && serve.mode == Mode::Node
        {
            return Ok((parse_pools(&serve.pools)?, serve.pool_nearly_full_percent));
        }
    }
    Err(Error::Invalid(
        "no --pool given, and no `hostpath-csi serve` in node mode runs here to take them from"
            .into(),
    ))
}

/// What `status` reports.
#[derive(Debug, Serialize)]
pub struct Report {
    pub pools: Vec<PoolStatus>,
    pub volumes: Vec<VolumeStatus>,
}

#[derive(Debug, Default, Serialize)]
pub struct PoolStatus {
    pub name: String,
    pub path: String,
    /// How directory volumes are held to their capacity (`tracked`: not).
    pub mode: String,
    pub size_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    /// Capacity promised to the pool's disk volumes.
    pub promised_bytes: u64,
    /// Capacity promised to its memory volumes (drawn from RAM).
    pub memory_promised_bytes: u64,
    pub volumes: u64,
    /// Health problems of the pool, as NodeGetStorageHealth reports them.
    pub problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
pub struct VolumeStatus {
    pub id: String,
    /// The name it was created with (the PV's name under Kubernetes).
    pub name: String,
    pub pool: String,
    pub kind: String,
    pub capacity_bytes: u64,
    /// Bytes it uses, where that is O(1) to read (an image, a quota, a
    /// tmpfs); `None` for a directory only a tree walk could measure.
    pub used_bytes: Option<u64>,
    /// Where it is mounted besides its backing (published targets).
    pub published: Vec<String>,
    /// Its health problems, as NodeGetVolumeHealth reports them; none: OK.
    pub problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    pub reason: String,
    pub message: String,
}

impl Problem {
    fn new(reason: &str, message: String) -> Problem {
        Problem {
            reason: reason.to_owned(),
            message,
        }
    }
}

/// Reads `pools` (name and path) as they are now; a pool is nearly full
/// at `nearly_full` percent in use. A pool that cannot be read is reported
/// with the problem, and the others as usual.
pub fn gather(pools: &[(PoolName, PathBuf)], nearly_full: u8) -> Result<Report> {
    let mounts = MountIndex::read()?;
    let mut report = Report {
        pools: Vec::new(),
        volumes: Vec::new(),
    };
    for (name, path) in pools {
        let status = one_pool(name, path, nearly_full, &mounts, &mut report.volumes)
            .unwrap_or_else(|err| PoolStatus {
                name: name.to_string(),
                path: path.display().to_string(),
                mode: "?".to_owned(),
                problems: vec![Problem::new(
                    PoolReason::PoolCheckFailed.as_str(),
                    err.to_string(),
                )],
                ..PoolStatus::default()
            });
        report.pools.push(status);
    }
    report
        .volumes
        .sort_by(|a, b| (&a.pool, &a.id).cmp(&(&b.pool, &b.id)));
    Ok(report)
}

/// The status of one pool; its volumes go to `volumes`.
fn one_pool(
    name: &PoolName,
    path: &Path,
    nearly_full: u8,
    mounts: &MountIndex,
    volumes: &mut Vec<VolumeStatus>,
) -> Result<PoolStatus> {
    let pool = Pool::inspect(name.clone(), path)?;
    let listed = list_records(&pool)?;
    let loaded = record::load::<VolumeRecord>(&pool.meta, &pool.shown().to_string(), &listed);
    let space = pool.space()?;
    let mut status = PoolStatus {
        name: name.to_string(),
        path: pool.shown().to_string(),
        mode: pool.enforcement.mode().to_owned(),
        size_bytes: space.size_bytes,
        free_bytes: space.free_bytes,
        used_bytes: space.used_bytes,
        promised_bytes: 0,
        memory_promised_bytes: 0,
        volumes: (loaded.records.len() + loaded.unreadable.len()) as u64,
        problems: health::of_pool(&pool, nearly_full)
            .into_iter()
            .map(|f| Problem::new(f.reason.as_str(), f.message))
            .collect(),
    };
    for record in &loaded.records {
        match record.kind.backing(&pool.name) {
            Backing::Disk(_) => status.promised_bytes += record.capacity_bytes,
            Backing::Memory => status.memory_promised_bytes += record.capacity_bytes,
        }
        volumes.push(volume(&pool, record, mounts));
    }
    for bad in loaded.unreadable {
        volumes.push(VolumeStatus {
            id: bad.id.map_or_else(|| "?".to_owned(), |id| id.to_string()),
            name: String::new(),
            pool: name.to_string(),
            kind: "?".to_owned(),
            capacity_bytes: 0,
            used_bytes: None,
            published: Vec::new(),
            problems: vec![Problem::new(
                health::Reason::RecordUnreadable.as_str(),
                bad.problem,
            )],
        });
    }
    Ok(status)
}

/// The record files of the pool's `meta/` (hidden names, such as temp
/// files of a write in progress, are not records).
fn list_records(pool: &Pool) -> Result<Vec<record::Listed>> {
    let entries = beneath::list(&pool.meta).context(|| format!("list {}/meta", pool.shown()))?;
    Ok(entries
        .into_iter()
        .filter(|e| !e.name.to_bytes().starts_with(b"."))
        .map(|e| record::Listed {
            shown: e.name.to_string_lossy().into_owned(),
            name: e.name,
            inode: e.inode,
        })
        .collect())
}

/// One volume's status; what cannot be read is reported as a problem.
fn volume(pool: &Pool, record: &VolumeRecord, mounts: &MountIndex) -> VolumeStatus {
    let backend = record.kind.backend();
    let mut problems = Vec::new();
    let mut failed = |what: &str, err: crate::error::Error| {
        problems.push(Problem::new(
            health::Reason::CheckFailed.as_str(),
            format!("volume {}: {what}: {err}", record.id),
        ))
    };
    let published: Vec<String> = match backend.users(pool, &record.id, mounts) {
        Ok(users) => users
            .into_iter()
            .map(|u| u.mount_point.display().to_string())
            .collect(),
        Err(err) => {
            failed("find its mounts", err);
            Vec::new()
        }
    };
    let used_bytes = backend.used_cheaply(pool, record).unwrap_or_else(|err| {
        failed("read its usage", err);
        None
    });
    match backend.health(pool, record, !published.is_empty()) {
        Ok(findings) => problems.extend(
            findings
                .into_iter()
                .map(|f| Problem::new(f.reason.as_str(), f.message)),
        ),
        Err(err) => failed("check its health", err),
    }
    VolumeStatus {
        id: record.id.to_string(),
        name: record.name.clone(),
        pool: record.pool.to_string(),
        kind: record.kind.as_str().to_owned(),
        capacity_bytes: record.capacity_bytes,
        used_bytes,
        published,
        problems,
    }
}

/// The report as JSON.
pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("a report is always serializable") + "\n"
}

/// The report as two aligned tables, pools then volumes.
pub fn table(report: &Report) -> String {
    let pools: Vec<Vec<String>> = report
        .pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.mode.clone(),
                bytes(p.size_bytes),
                bytes(p.free_bytes),
                bytes(p.used_bytes),
                bytes(p.promised_bytes),
                bytes(p.memory_promised_bytes),
                p.volumes.to_string(),
                reasons(&p.problems),
                p.path.clone(),
            ]
        })
        .collect();
    let volumes: Vec<Vec<String>> = report
        .volumes
        .iter()
        .map(|v| {
            vec![
                v.id.clone(),
                v.pool.clone(),
                v.kind.clone(),
                bytes(v.capacity_bytes),
                v.used_bytes.map_or_else(|| "-".to_owned(), bytes),
                reasons(&v.problems),
                v.published.len().to_string(),
                v.name.clone(),
            ]
        })
        .collect();
    let mut out = aligned(
        &[
            "POOL",
            "MODE",
            "SIZE",
            "FREE",
            "USED",
            "PROMISED",
            "MEMORY",
            "VOLUMES",
            "CONDITION",
            "PATH",
        ],
        &pools,
    );
    out.push('\n');
    out += &aligned(
        &[
            "VOLUME",
            "POOL",
            "KIND",
            "CAPACITY",
            "USED",
            "CONDITION",
            "PUBLISHED",
            "NAME",
        ],
        &volumes,
    );
    out
}

/// `OK`, or the reasons of the problems.
fn reasons(problems: &[Problem]) -> String {
    if problems.is_empty() {
        return "OK".to_owned();
    }
    let reasons: Vec<&str> = problems.iter().map(|p| p.reason.as_str()).collect();
    reasons.join(",")
}

/// Bytes in binary units, as Kubernetes quantities are written (`1.5Gi`).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        return n.to_string();
    }
    let shown = format!("{value:.1}");
    format!("{}{}", shown.trim_end_matches(".0"), UNITS[unit])
}

/// Rows under `header`, each column as wide as its widest cell; names
/// are shown as they are, control characters escaped.
fn aligned(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|cell| cell.escape_debug().to_string())
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(bytes(0), "0");
        assert_eq!(bytes(1023), "1023");
        assert_eq!(bytes(1 << 20), "1Mi");
        assert_eq!(bytes(3 << 29), "1.5Gi");
    }

    #[test]
    fn columns_align_and_control_characters_are_escaped() {
        let shown = aligned(
            &["A", "B"],
            &[
                vec!["long-cell".into(), "x".into()],
                vec!["a\nb".into(), "y".into()],
            ],
        );
        assert_eq!(shown, "A          B\nlong-cell  x\na\\nb       y\n");
    }
}
