//! Prometheus metrics: the bounded HTTP server pages are served by, the node
//! plugin's page, and the per-call gRPC metrics it includes.

mod http;
pub mod node;
pub mod rpc;

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::driver::Driver;
pub use http::{CONNECTION_TIMEOUT, HEADER_TIMEOUT, MAX_CONNECTIONS, Page, serve_page};

/// Answers scrapes of a node's metrics on `listener` for as long as the
/// process runs.
pub async fn serve(driver: Arc<Driver>, listener: TcpListener) {
    serve_page(
        listener,
        Arc::new(move || node::render(&driver).map_err(|e| e.to_string())),
    )
    .await;
}
