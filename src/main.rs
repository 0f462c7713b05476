//! Entry point: parse the command line, set up logging, run.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hostpath_csi::cli::{self, Cli, Command, Mode, ServeArgs};
use hostpath_csi::{demo, heap, metrics, server, startup, status, validate};

/// How long a stopping driver waits for operations whose callers went away
/// before it snapshots its records.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// Threads the runtime may start for blocking work (tokio's default is 512).
const MAX_BLOCKING_THREADS: usize = hostpath_csi::work::MAX_BLOCKING_WORK + 8;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logs(cli.log_format);
    // Blocking work (every syscall, fsync) runs on tokio's pool of threads,
    // and glibc gives each thread a malloc arena of its own that keeps what
    // it freed: two arenas hold a node's memory near its live data.
    // SAFETY: mallopt only sets an allocator tunable; no allocation races it
    // here, before any thread starts.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    // Driver work is bounded by `work::MAX_BLOCKING_WORK`; the rest of the
    // blocking pool serves tokio's own file and signal work.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    let outcome = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Demo => runtime.block_on(demo::run()),
        Command::Status(args) => status::run(&args)
            .map(|report| print!("{report}"))
            .map_err(|e| e.to_string()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let socket = server::socket_path(&args.endpoint).map_err(|e| e.to_string())?;
    if args.mode == Mode::Controller {
        if args.metrics_address.is_some() {
            return Err(
                "--metrics-address applies to node mode: controller mode has no pools to report"
                    .into(),
            );
        }
        let name = validate::driver_name(&args.driver_name)
            .map_err(|e| e.to_string())?
            .to_owned();
        let stop = server::termination_signal().map_err(|e| e.to_string())?;
        let listener = server::listen(&socket).map_err(|e| e.to_string())?;
        tracing::info!(socket = %socket.display(), driver = %name, "serving in controller mode");
        return server::serve_controller(name, listener, &socket, stop)
            .await
            .map_err(|e| e.to_string());
    }
    let config = args.config().map_err(|e| e.to_string())?;
    let driver = tokio::task::spawn_blocking(move || startup::open(config))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let stop = server::termination_signal().map_err(|e| e.to_string())?;
    let listener = server::listen(&socket).map_err(|e| e.to_string())?;
    let driver = Arc::new(driver);
    hostpath_csi::snapshots::take::start_when_free(&driver);
    if let Some(address) = args.metrics_address {
        let metrics = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| format!("metrics: listen on {address}: {e}"))?;
        tokio::spawn(metrics::serve(Arc::clone(&driver), metrics));
        tracing::info!(%address, "serving metrics");
    }
    tokio::spawn(heap::trim_after_bursts(driver.guards.clone()));
    tracing::info!(socket = %socket.display(), node = %driver.config.node_id, driver = %driver.config.driver_name, "serving");
    let served = server::serve(Arc::clone(&driver), listener, &socket, stop).await;
    tokio::task::spawn_blocking(move || startup::stop(&driver, STOP_PATIENCE))
        .await
        .map_err(|e| e.to_string())?;
    served.map_err(|e| e.to_string())
}
