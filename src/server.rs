//! The gRPC server on a unix socket: socket set-up, serving, graceful stop.

use std::future::Future;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::stat::{Mode, umask};
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};
use tower::util::{Either, option_layer};

use crate::authority::LocalAuthority;
use crate::csi::controller_server::ControllerServer;
use crate::csi::identity_server::IdentityServer;
use crate::csi::node_server::NodeServer;
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::metrics::rpc::RecordLayer;
use crate::service::controller::ControllerService;
use crate::service::expansion_only::ExpansionOnlyController;
use crate::service::identity::IdentityService;
use crate::service::node::NodeService;

/// The socket path of an endpoint: `unix:///path`, `unix:/path` or `/path`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(Error::Invalid(format!(
            "endpoint {endpoint:?} is not a unix socket: expected unix:///absolute/path"
        )));
    }
    Ok(PathBuf::from(path))
}

/// Creates the listening socket with mode 0600. An old path is replaced only
/// if it is a socket; anything else there is an error.
pub fn listen(socket: &Path) -> Result<UnixListener> {
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(socket)
            .map_err(|e| Error::failed(format!("remove stale socket {}", socket.display()), e))?,
        Ok(_) => {
            return Err(Error::WrongState(format!(
                "{} exists and is not a socket; refusing to replace it",
                socket.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::failed(format!("stat {}", socket.display()), e)),
    }
    // The umask makes bind(2) create the socket 0600: no window with wider
    // access. It is process-wide, so this runs at start, before any volume work.
    let previous = umask(Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(socket);
    umask(previous);
    listener.map_err(|e| Error::failed(format!("listen on {}", socket.display()), e))
}

/// Serves Identity, Controller and Node on `listener` until `shutdown`
/// resolves, then lets in-flight calls finish and removes the socket.
pub async fn serve(
    driver: Arc<Driver>,
    listener: UnixListener,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let name = driver.config.driver_name.clone();
    let router = builder()
        .layer(option_layer(Some(RecordLayer(driver.rpcs.clone()))))
        .add_service(IdentityServer::new(IdentityService::new(
            name,
            Some(Arc::clone(&driver)),
        )))
        .add_service(ControllerServer::new(ControllerService::new(Arc::clone(
            &driver,
        ))))
        .add_service(NodeServer::new(NodeService::new(driver)));
    run(router, listener, socket, shutdown).await
}

/// Serves controller mode (Identity and an expansion-only Controller, no
/// pools) on `listener`, like [`serve`].
pub async fn serve_controller(
    driver_name: String,
    listener: UnixListener,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let router = builder()
        // Controller mode serves no metrics page: nothing is counted.
        .layer(option_layer(None))
        .add_service(IdentityServer::new(IdentityService::new(driver_name, None)))
        .add_service(ControllerServer::new(ExpansionOnlyController));
    run(router, listener, socket, shutdown).await
}

/// Calls one connection may have open at once (HTTP/2
/// SETTINGS_MAX_CONCURRENT_STREAMS): a client with more queues them itself,
/// as gRPC clients do, instead of the driver holding them all. Not below
/// 100: grpc-go and hyper (tonic) clients open that many before they have
/// read this setting, and the streams over it would be refused, which tonic
/// does not retry.
const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// The server every mode builds on: bounded streams per connection, and
/// HTTP/2 keepalive pings so a peer that vanished is noticed.
fn builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}

/// How long a stopping server waits for clients to close their connections.
const DRAIN_PATIENCE: Duration = Duration::from_secs(5);

/// A router whose calls are counted, or not.
type Recording = Stack<Either<RecordLayer, Identity>, Identity>;

async fn run(
    router: Router<Recording>,
    listener: UnixListener,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let (stopping, stop_seen) = tokio::sync::oneshot::channel::<()>();
    let signalled = async move {
        shutdown.await;
        stopping.send(()).ok();
    };
    // Every client is served whatever :authority it sends (see authority.rs).
    let incoming = UnixListenerStream::new(listener).map(|c| c.map(LocalAuthority::new));
    let serving = router.serve_with_incoming_shutdown(incoming, signalled);
    // After the signal, calls in flight finish and clients close their
    // connections; a client that keeps one open is not waited for forever.
    let patience = async {
        match stop_seen.await {
            Ok(()) => tokio::time::sleep(DRAIN_PATIENCE).await,
            Err(_) => std::future::pending().await,
        }
    };
    let served = tokio::select! {
        served = serving => served,
        () = patience => {
            tracing::warn!("connections still open {DRAIN_PATIENCE:?} after the stop signal: closed");
            Ok(())
        }
    };
    std::fs::remove_file(socket).ok();
    served.map_err(|e| Error::failed(format!("gRPC server on {}", socket.display()), e))
}

/// Installs SIGTERM and SIGINT handlers now (so a signal that arrives
/// before serving starts is not fatal) and returns a future that resolves on
/// the first of them.
pub fn termination_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let install =
        |kind: SignalKind| signal(kind).map_err(|e| Error::failed("install signal handler", e));
    let (mut term, mut int) = (
        install(SignalKind::terminate())?,
        install(SignalKind::interrupt())?,
    );
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/csi.sock").unwrap(),
            PathBuf::from("/run/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/run/csi.sock").unwrap(),
            PathBuf::from("/run/csi.sock")
        );
        assert_eq!(
            socket_path("/run/csi.sock").unwrap(),
            PathBuf::from("/run/csi.sock")
        );
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
        assert!(socket_path("unix://relative").is_err());
    }

    #[tokio::test]
    async fn socket_is_private_and_only_sockets_are_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("csi.sock");
        drop(listen(&socket).unwrap());
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(listen(&socket).unwrap());
        let file = tmp.path().join("file");
        std::fs::write(&file, b"keep").unwrap();
        assert!(listen(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }
}
