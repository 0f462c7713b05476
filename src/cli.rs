//! Command-line interface: `serve` runs the driver, `demo` shows it working.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::driver::DriverConfig;
use crate::error::{Error, Result};
use crate::ids::PoolName;
use crate::validate;

/// Percent of a pool's filesystem in use at which it is nearly full, unless
/// `--pool-nearly-full-percent` says otherwise.
pub const DEFAULT_NEARLY_FULL_PERCENT: u8 = 90;

/// The driver name used when none is given.
pub const DEFAULT_DRIVER_NAME: &str = "hostpath-csi.dev";

#[derive(Debug, Parser)]
#[command(
    name = "hostpath-csi",
    version,
    about = "A CSI driver for node-local volumes"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "HOSTPATH_CSI_LOG_FORMAT",
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs on stderr in `format`, at the level `RUST_LOG` sets (default info).
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve CSI on a unix socket: Identity, Controller and Node (node mode)
    /// or Identity and expansion (controller mode).
    Serve(Box<ServeArgs>),
    /// Start a driver on a temporary pool and socket and walk one volume
    /// through its whole lifecycle, printing each call (needs root: it mounts).
    Demo,
    /// Show this node's pools and volumes, read from the pools themselves
    /// (safe while the driver serves them: nothing is changed).
    Status(StatusArgs),
}

/// How `status` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// A pool as NAME=PATH; repeat for several. Default: the pools of the
    /// `hostpath-csi serve` running here, from its command line.
    #[arg(long = "pool", env = "HOSTPATH_CSI_POOLS", value_delimiter = ',')]
    pub pools: Vec<String>,
    /// A table, or JSON for scripts.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
    /// Percent of a pool's filesystem in use at which it counts as nearly
    /// full, as the server's flag of the same name. Default: that of the
    /// `hostpath-csi serve` the pools are taken from, else 90.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub pool_nearly_full_percent: Option<u8>,
}

/// What a `serve` process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// On every node: Identity, Controller and Node over this node's pools.
    Node,
    /// Centrally, beside csi-resizer: Identity and expansion only, no pools.
    Controller,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Node or controller mode.
    #[arg(long, value_enum, env = "HOSTPATH_CSI_MODE", default_value = "node")]
    pub mode: Mode,
    /// Socket to serve on, e.g. unix:///csi/csi.sock.
    #[arg(
        long,
        env = "CSI_ENDPOINT",
        default_value = "unix:///run/hostpath-csi/csi.sock"
    )]
    pub endpoint: String,
    /// This node's id (the Kubernetes node name); defaults to the hostname.
    #[arg(long, env = "HOSTPATH_CSI_NODE_ID")]
    pub node_id: Option<String>,
    /// The CSI driver name (a DNS-like name of at most 63 characters).
    #[arg(long, env = "HOSTPATH_CSI_DRIVER_NAME", default_value = DEFAULT_DRIVER_NAME)]
    pub driver_name: String,
    /// A storage pool as NAME=PATH; repeat for several (node mode needs one).
    #[arg(long = "pool", env = "HOSTPATH_CSI_POOLS", value_delimiter = ',')]
    pub pools: Vec<String>,
    /// The pool used when a StorageClass names none (default: the first --pool).
    #[arg(long, env = "HOSTPATH_CSI_DEFAULT_POOL")]
    pub default_pool: Option<String>,
    /// The kubelet's root directory: targets of publish and unpublish must
    /// lie beneath it.
    #[arg(
        long,
        env = "HOSTPATH_CSI_KUBELET_DIR",
        default_value = "/var/lib/kubelet"
    )]
    pub kubelet_dir: PathBuf,
    /// Serve Prometheus metrics on this IP:PORT (GET /metrics); off if unset.
    #[arg(long, env = "HOSTPATH_CSI_METRICS_ADDRESS")]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Most volumes this node holds; 0 means no limit.
    #[arg(long, env = "HOSTPATH_CSI_MAX_VOLUMES", default_value_t = 0)]
    pub max_volumes: u64,
    /// RAM that memory volumes may take in all, as a quantity (e.g. 4Gi);
    /// default a quarter of the node's memory.
    #[arg(long, env = "HOSTPATH_CSI_MEMORY_BUDGET")]
    pub memory_budget: Option<String>,
    /// Turn quotas on in btrfs pools where they are off, so directory
    /// volumes get enforced limits.
    #[arg(long, env = "HOSTPATH_CSI_ENABLE_QUOTAS")]
    pub enable_quotas: bool,
    /// A host directory beneath which static hostPath volumes may be
    /// published; repeat for several. None by default.
    #[arg(
        long = "allow-host-path",
        env = "HOSTPATH_CSI_ALLOW_HOST_PATHS",
        value_delimiter = ','
    )]
    pub allowed_host_paths: Vec<PathBuf>,
    /// Percent of a pool's filesystem in use at which NodeGetStorageHealth
    /// reports it nearly full; 0 never does.
    #[arg(
        long,
        env = "HOSTPATH_CSI_POOL_NEARLY_FULL_PERCENT",
        default_value_t = DEFAULT_NEARLY_FULL_PERCENT,
        value_parser = clap::value_parser!(u8).range(0..=100)
    )]
    pub pool_nearly_full_percent: u8,
    /// Also serve each volume's capacity and (where O(1) to read) usage as
    /// metrics of its own, for at most 1000 volumes: a series per volume.
    #[arg(long, env = "HOSTPATH_CSI_VOLUME_METRICS")]
    pub volume_metrics: bool,
}

impl ServeArgs {
    /// Checks the arguments of node mode and turns them into a driver
    /// configuration.
    pub fn config(&self) -> Result<DriverConfig> {
        if self.pools.is_empty() {
            return Err(Error::Invalid(
                "node mode needs at least one --pool NAME=PATH".into(),
            ));
        }
        let node_id = match &self.node_id {
            Some(id) => id.clone(),
            None => nix::unistd::gethostname()
                .map_err(|e| Error::failed("gethostname", e))?
                .to_string_lossy()
                .into_owned(),
        };
        if node_id.is_empty() || node_id.len() > 192 || node_id.chars().any(char::is_control) {
            return Err(Error::Invalid(format!("node id {node_id:?} is malformed")));
        }
        let mut pools = parse_pools(&self.pools)?;
        if let Some(default) = &self.default_pool {
            let at = pools
                .iter()
                .position(|(name, _)| name.as_str() == default)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "--default-pool {default} is not one of the --pool names"
                    ))
                })?;
            // The driver treats the first pool as the default.
            let chosen = pools.remove(at);
            pools.insert(0, chosen);
        }
        Ok(DriverConfig {
            driver_name: validate::driver_name(&self.driver_name)?.to_owned(),
            node_id,
            pools,
            max_volumes: self.max_volumes,
            enable_quotas: self.enable_quotas,
            memory_budget: match &self.memory_budget {
                Some(raw) => validate::quantity("--memory-budget", raw)?,
                None => default_memory_budget()?,
            },
            kubelet_dir: validate::host_path("--kubelet-dir", &self.kubelet_dir.to_string_lossy())?,
            allowed_host_paths: self
                .allowed_host_paths
                .iter()
                .map(|p| allowed_prefix(p))
                .collect::<Result<_>>()?,
            nearly_full_percent: self.pool_nearly_full_percent,
            volume_metrics: self.volume_metrics,
        })
    }
}

/// The share of the node's RAM memory volumes get by default.
const DEFAULT_MEMORY_SHARE: u64 = 4;

/// A quarter of MemTotal from /proc/meminfo.
fn default_memory_budget() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| Error::failed("read /proc/meminfo", e))?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .ok_or_else(|| Error::Broken("/proc/meminfo has no MemTotal".into()))?;
    Ok(kib * 1024 / DEFAULT_MEMORY_SHARE)
}

/// An `--allow-host-path` prefix: absolute, normal components, not `/`.
fn allowed_prefix(path: &std::path::Path) -> Result<PathBuf> {
    if path == std::path::Path::new("/") {
        return Err(Error::Invalid(
            "--allow-host-path / would allow the whole host".into(),
        ));
    }
    validate::host_path("--allow-host-path", &path.to_string_lossy())
}

/// Each `NAME=PATH` of `--pool` → (name, absolute path).
pub fn parse_pools(specs: &[String]) -> Result<Vec<(PoolName, PathBuf)>> {
    specs.iter().map(|spec| parse_pool(spec)).collect()
}

/// `NAME=PATH` → (name, absolute path).
fn parse_pool(spec: &str) -> Result<(PoolName, PathBuf)> {
    let (name, path) = spec
        .split_once('=')
        .ok_or_else(|| Error::Invalid(format!("pool {spec:?} is malformed: expected NAME=PATH")))?;
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(Error::Invalid(format!(
            "pool {name}: path {} is not absolute",
            path.display()
        )));
    }
    Ok((PoolName::parse(name)?, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse() {
        let (name, path) = parse_pool("fast=/mnt/nvme").unwrap();
        assert_eq!((name.as_str(), path), ("fast", PathBuf::from("/mnt/nvme")));
        for bad in ["fast", "fast=relative", "Fast=/x", "=/x"] {
            assert!(parse_pool(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serve_flags_become_a_config() {
        let cli = Cli::try_parse_from([
            "hostpath-csi",
            "serve",
            "--pool",
            "a=/a",
            "--pool",
            "b=/b",
            "--node-id",
            "n1",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let config = args.config().unwrap();
        assert_eq!(config.driver_name, DEFAULT_DRIVER_NAME);
        assert_eq!(config.node_id, "n1");
        assert_eq!(config.pools.len(), 2);
        let defaulted = Cli::try_parse_from([
            "hostpath-csi",
            "serve",
            "--pool=a=/a",
            "--pool=b=/b",
            "--default-pool=b",
        ])
        .unwrap();
        let Command::Serve(args) = defaulted.command else {
            panic!("not serve")
        };
        assert_eq!(args.config().unwrap().pools[0].0.as_str(), "b");
        let unknown =
            Cli::try_parse_from(["hostpath-csi", "serve", "--pool=a=/a", "--default-pool=c"])
                .unwrap();
        let Command::Serve(args) = unknown.command else {
            panic!("not serve")
        };
        assert!(args.config().is_err());
        assert!(config.memory_budget > 0, "a quarter of RAM by default");
        let sized = Cli::try_parse_from([
            "hostpath-csi",
            "serve",
            "--pool=a=/a",
            "--memory-budget=2Gi",
            "--allow-host-path=/srv/data",
        ])
        .unwrap();
        let Command::Serve(args) = sized.command else {
            panic!("not serve")
        };
        let config = args.config().unwrap();
        assert_eq!(config.memory_budget, 2 << 30);
        assert_eq!(config.allowed_host_paths, vec![PathBuf::from("/srv/data")]);
        let bare = Cli::try_parse_from(["hostpath-csi", "serve"]).unwrap();
        let Command::Serve(args) = bare.command else {
            panic!("not serve")
        };
        assert!(args.config().is_err(), "node mode needs a pool");
        let controller =
            Cli::try_parse_from(["hostpath-csi", "serve", "--mode=controller"]).unwrap();
        let Command::Serve(args) = controller.command else {
            panic!("not serve")
        };
        assert_eq!(args.mode, Mode::Controller);
        let bad = Cli::try_parse_from([
            "hostpath-csi",
            "serve",
            "--pool",
            "a=/a",
            "--driver-name=-x",
        ])
        .unwrap();
        let Command::Serve(args) = bad.command else {
            panic!("not serve")
        };
        assert!(args.config().is_err());
    }
}
