//! `hostpath-csi-node-loss`: the cleanup after nodes gone for good, run
//! beside the driver in the controller Deployment (src/node_loss). A binary
//! of its own, so the node plugin never maps the Kubernetes client.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hostpath_csi::cli::{self, DEFAULT_DRIVER_NAME, LogFormat};
use hostpath_csi::{metrics, node_loss, server, validate};

#[derive(Debug, Parser)]
#[command(
    name = "hostpath-csi-node-loss",
    version,
    about = "Frees the PVs and opted-in claims of nodes that are gone for good"
)]
struct Args {
    /// The CSI driver name: only PVs of this driver are touched.
    #[arg(long, env = "HOSTPATH_CSI_DRIVER_NAME", default_value = DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// Seconds a Node object must stay deleted before its volumes are
    /// written off (a node with the out-of-service taint counts at once);
    /// at least 10, so that watches lagging each other cannot trigger it.
    #[arg(
        long,
        env = "HOSTPATH_CSI_NODE_LOSS_GRACE_SECONDS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(10..)
    )]
    grace_seconds: u64,
    /// This replica's name in the Lease; defaults to the hostname (a pod's
    /// name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Serve Prometheus metrics on this IP:PORT (GET /metrics); off if unset.
    #[arg(long, env = "HOSTPATH_CSI_METRICS_ADDRESS")]
    metrics_address: Option<SocketAddr>,
    /// Log format on stderr.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "HOSTPATH_CSI_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logs(args.log_format);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let driver = validate::driver_name(&args.driver_name)
        .map_err(|e| e.to_string())?
        .to_owned();
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("no Kubernetes API to talk to: {e}"))?;
    let identity = match args.identity {
        Some(identity) => identity,
        None => nix::unistd::gethostname()
            .map_err(|e| format!("gethostname: {e}"))?
            .to_string_lossy()
            .into_owned(),
    };
    let settings = node_loss::Settings {
        driver,
        grace: Duration::from_secs(args.grace_seconds),
        identity,
        namespace: client.default_namespace().to_owned(),
    };
    let counters = Arc::new(node_loss::Counters::default());
    if let Some(address) = args.metrics_address {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| format!("metrics: listen on {address}: {e}"))?;
        let counters = Arc::clone(&counters);
        tokio::spawn(metrics::serve_page(
            listener,
            Arc::new(move || Ok(counters.render())),
        ));
        tracing::info!(%address, "serving metrics");
    }
    let stop = server::termination_signal().map_err(|e| e.to_string())?;
    tokio::select! {
        () = node_loss::run(client, settings, counters) => Err("the watches ended".into()),
        () = stop => Ok(()),
    }
}
