//! Per-call gRPC metrics: a tower layer around the CSI services that counts
//! each call by method and gRPC code and times it.
//!
//! Every CSI call is unary, and tonic answers a failed unary call with its
//! status in the response headers (trailers-only); a response without one
//! carries its message, which only a success does. So the code is known when
//! the headers are, and the time measured is the handler's. A call whose
//! caller went away first (its deadline passed: the server drops the call)
//! is counted as `Canceled`, with the time it had run.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::Code;

/// The CSI methods the driver serves: the `method` label takes one of these
/// or `other`, so no client can grow the number of series.
pub const METHODS: &[&str] = &[
    "GetPluginInfo",
    "GetPluginCapabilities",
    "Probe",
    "CreateVolume",
    "DeleteVolume",
    "ControllerPublishVolume",
    "ControllerUnpublishVolume",
    "ValidateVolumeCapabilities",
    "ListVolumes",
    "ControllerListVolumeHealth",
    "ControllerGetVolumeHealth",
    "GetCapacity",
    "ControllerGetCapabilities",
    "CreateSnapshot",
    "DeleteSnapshot",
    "ListSnapshots",
    "GetSnapshot",
    "ControllerExpandVolume",
    "ControllerGetVolume",
    "ControllerModifyVolume",
    "ControllerGetNodeInfo",
    "NodeStageVolume",
    "NodeUnstageVolume",
    "NodePublishVolume",
    "NodeUnpublishVolume",
    "NodeGetVolumeStats",
    "NodeGetVolumeHealth",
    "NodeGetStorageHealth",
    "NodeExpandVolume",
    "NodeGetCapabilities",
    "NodeGetInfo",
];

/// Upper bounds of the latency buckets, in seconds: from a cached lookup to
/// a copy or a mkfs.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

type CallLabels = [(&'static str, &'static str); 2];
type MethodLabel = [(&'static str, &'static str); 1];

/// Counts and latencies of the calls served, shared by the layer (which
/// records) and the metrics page (which reads).
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    calls: Family<CallLabels, Counter>,
    latency: Family<MethodLabel, Histogram>,
}

impl Default for RpcMetrics {
    fn default() -> RpcMetrics {
        RpcMetrics {
            calls: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
        }
    }
}

impl RpcMetrics {
    /// Notes one call of `method` (one of [`METHODS`], or `other`), its
    /// code and time.
    fn record(&self, method: &'static str, code: Code, seconds: f64) {
        self.calls
            .get_or_create(&[("method", method), ("code", code_name(code))])
            .inc();
        self.latency
            .get_or_create(&[("method", method)])
            .observe(seconds);
    }

    /// Adds the two families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "hostpath_csi_rpc_requests",
            "CSI calls served, by method and gRPC code (OK included)",
            self.calls.clone(),
        );
        registry.register(
            "hostpath_csi_rpc_duration_seconds",
            "Time to answer a CSI call, by method",
            self.latency.clone(),
        );
    }
}

/// The method of a request path `/csi.v1.<Service>/<Method>`, or `other`.
fn method_of(path: &str) -> &'static str {
    path.strip_prefix("/csi.v1.")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(_, method)| METHODS.iter().find(|known| **known == method))
        .copied()
        .unwrap_or("other")
}

/// The code's name as gRPC spells it (the Go clients' `grpc_code` values).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The layer that wraps the CSI services in [`Recorded`].
#[derive(Clone, Debug)]
pub struct RecordLayer(pub RpcMetrics);

impl<S> tower::Layer<S> for RecordLayer {
    type Service = Recorded<S>;
    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// A service that records each call it passes on.
#[derive(Clone, Debug)]
pub struct Recorded<S> {
    inner: S,
    metrics: RpcMetrics,
}

impl<S, B, R> tower::Service<http::Request<B>> for Recorded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = Call {
            metrics: self.metrics.clone(),
            method: method_of(request.uri().path()),
            started: Instant::now(),
            code: Code::Cancelled,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            // The whole record moves in (a field alone, being Copy, would
            // be copied and the record dropped at once).
            let mut call = call;
            let answered = answer.await;
            call.code = match &answered {
                Ok(response) => tonic::Status::from_header_map(response.headers())
                    .map_or(Code::Ok, |status| status.code()),
                Err(_) => Code::Unavailable,
            };
            answered
        })
    }
}

/// One call in flight, recorded when it is dropped: with the code it ended
/// with, or `Cancelled` if it never ended.
struct Call {
    metrics: RpcMetrics,
    method: &'static str,
    started: Instant,
    code: Code,
}

impl Drop for Call {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics.record(self.method, self.code, seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_methods_are_those_of_the_services_served() {
        let proto = include_str!("../../proto/csi.proto");
        let mut served = Vec::new();
        let mut in_served = false;
        for line in proto.lines() {
            if let Some(service) = line.strip_prefix("service ") {
                in_served = ["Identity ", "Controller ", "Node "]
                    .iter()
                    .any(|s| service.starts_with(s));
            } else if in_served && let Some(rpc) = line.trim().strip_prefix("rpc ") {
                served.push(rpc.split('(').next().unwrap().to_owned());
            }
        }
        assert_eq!(served, METHODS);
    }

    /// The page of `metrics` alone.
    fn page(metrics: &RpcMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn calls_are_counted_by_code_and_those_given_up_as_canceled() {
        use tower::{Layer, Service, ServiceExt};
        let metrics = RpcMetrics::default();
        let mut answering = RecordLayer(metrics.clone()).layer(tower::service_fn(
            |request: http::Request<()>| async move {
                let mut response = http::Response::new(());
                if request.uri().path().ends_with("NodePublishVolume") {
                    response
                        .headers_mut()
                        .insert("grpc-status", http::HeaderValue::from_static("5"));
                }
                Ok::<_, std::convert::Infallible>(response)
            },
        ));
        let ok = "/csi.v1.Controller/CreateVolume";
        for path in [ok, "/csi.v1.Node/NodePublishVolume"] {
            let service = answering.ready().await.unwrap();
            service.call(request(path)).await.unwrap();
        }
        let mut hanging =
            RecordLayer(metrics.clone()).layer(tower::service_fn(|_: http::Request<()>| {
                std::future::pending::<Result<http::Response<()>, std::convert::Infallible>>()
            }));
        let call = hanging.ready().await.unwrap().call(request(ok));
        let given_up = tokio::time::timeout(std::time::Duration::from_millis(20), call).await;
        assert!(given_up.is_err());
        let text = page(&metrics);
        for line in [
            "hostpath_csi_rpc_requests_total{method=\"CreateVolume\",code=\"OK\"} 1",
            "hostpath_csi_rpc_requests_total{method=\"NodePublishVolume\",code=\"NotFound\"} 1",
            "hostpath_csi_rpc_requests_total{method=\"CreateVolume\",code=\"Canceled\"} 1",
            "hostpath_csi_rpc_duration_seconds_count{method=\"CreateVolume\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // The canceled call ran at least the 20 ms its caller waited.
        let sum: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("hostpath_csi_rpc_duration_seconds_sum{method=\"CreateVolume\"} ")
            })
            .unwrap()
            .parse()
            .unwrap();
        assert!(sum >= 0.02, "{sum}");
    }

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(
            method_of("/csi.v1.Node/NodePublishVolume"),
            "NodePublishVolume"
        );
        assert_eq!(method_of("/csi.v1.Node/Whatever"), "other");
        assert_eq!(method_of("/x.Y/Probe"), "other");
        assert_eq!(method_of("/csi.v1.Identity/Probe/extra"), "other");
    }
}
