//! Every standard gRPC client is served on the unix socket, whatever
//! `:authority` it sends: Python's grpcio (gRPC C-core) with default options
//! sends the percent-encoded socket path, grpc-java the raw path, Go
//! clients `localhost`. Here the real binary answers grpcio from PyPI and a
//! raw HTTP/2 request whose `:authority` is the percent-encoded socket path,
//! and every call of the burst a client may send before it has read the
//! server's stream limit.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Scratch;
use common::process::DriverProcess;
use loona_hpack::Decoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Python with grpcio that scripts/test-all.sh installs.
fn grpcio_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/grpc-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test-all.sh installs grpcio there (python3 -m venv target/grpc-venv; target/grpc-venv/bin/pip install grpcio==1.85.3)",
        python.display()
    );
    python
}

fn driver(scratch: &Scratch) -> DriverProcess {
    let pool = scratch.path().join("pool");
    std::fs::create_dir(&pool).unwrap();
    DriverProcess::start(scratch.path(), &pool, &[])
}

#[test]
fn grpcio_with_default_options_is_served() {
    let scratch = Scratch::new();
    let driver = driver(&scratch);
    // Messages go as raw bytes (no generated stubs): an empty
    // GetPluginInfoRequest, and a DeleteVolumeRequest whose volume_id
    // (field 1) is "BAD", which must be refused as malformed.
    let script = r#"
import grpc, sys
channel = grpc.insecure_channel("unix://" + sys.argv[1])
info = channel.unary_unary("/csi.v1.Identity/GetPluginInfo")(b"", timeout=20)
print("info", info.decode("latin-1"))
try:
    channel.unary_unary("/csi.v1.Controller/DeleteVolume")(b"\n\x03BAD", timeout=20)
    print("delete OK")
except grpc.RpcError as e:
    print("delete", e.code().name, e.details())
"#;
    let out = std::process::Command::new(grpcio_python())
        .arg("-c")
        .arg(script)
        .arg(&driver.socket)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("info") && said.contains("hostpath-csi.dev"),
        "{said}"
    );
    assert!(
        said.contains("delete INVALID_ARGUMENT volume id \"BAD\" is malformed"),
        "{said}"
    );
}

const HEADERS: u8 = 0x1;
const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK "literal without indexing, new name", plain strings (< 127 bytes).
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0);
    for s in [name, value] {
        block.push(u8::try_from(s.len()).unwrap());
        block.extend_from_slice(s.as_bytes());
    }
}

/// The HEADERS and DATA frames of an empty GetPluginInfo call on `stream`.
fn get_plugin_info(stream: u32, authority: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/csi.v1.Identity/GetPluginInfo"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        literal(&mut block, name, value);
    }
    let mut frames = frame(HEADERS, END_HEADERS, stream, &block);
    // One gRPC message: not compressed, 0 bytes (an empty request).
    frames.extend(frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 0]));
    frames
}

/// The client's connection preface and its (empty) SETTINGS.
fn preface() -> Vec<u8> {
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello
}

/// Reads the next frame as (type, flags, stream, payload); acknowledges the
/// server's SETTINGS on the way.
async fn next_frame(stream: &mut tokio::net::UnixStream) -> (u8, u8, u32, Vec<u8>) {
    loop {
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).await.unwrap();
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0; len];
        stream.read_exact(&mut payload).await.unwrap();
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
        if kind == SETTINGS && flags & ACK == 0 {
            stream
                .write_all(&frame(SETTINGS, ACK, 0, &[]))
                .await
                .unwrap();
            continue;
        }
        return (kind, flags, id, payload);
    }
}

#[tokio::test]
async fn a_raw_http2_request_with_the_socket_path_as_authority_is_served() {
    let scratch = Scratch::new();
    let driver = driver(&scratch);
    let authority = driver.socket.to_string_lossy().replace('/', "%2F");
    let mut stream = tokio::net::UnixStream::connect(&driver.socket)
        .await
        .unwrap();
    let mut hello = preface();
    hello.extend(get_plugin_info(1, &authority));
    stream.write_all(&hello).await.unwrap();

    let mut decoder = Decoder::new();
    let (mut headers, mut body) = (Vec::new(), Vec::new());
    let answer = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (kind, flags, _, payload) = next_frame(&mut stream).await;
            match kind {
                HEADERS => {
                    for (name, value) in decoder.decode(&payload).unwrap() {
                        headers.push((
                            String::from_utf8_lossy(&name).into_owned(),
                            String::from_utf8_lossy(&value).into_owned(),
                        ));
                    }
                    if flags & END_STREAM != 0 {
                        return "answered";
                    }
                }
                DATA => body.extend_from_slice(&payload),
                RST_STREAM => return "reset",
                GOAWAY => return "goaway",
                _ => {}
            }
        }
    })
    .await
    .expect("an answer within 20 s");
    assert_eq!(answer, "answered", "{headers:?}");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header(":status"), Some("200"), "{headers:?}");
    assert_eq!(header("grpc-status"), Some("0"), "{headers:?}");
    assert!(
        String::from_utf8_lossy(&body).contains("hostpath-csi.dev"),
        "{body:?}"
    );
}

/// Streams a gRPC client opens before it has read the server's SETTINGS:
/// grpc-go and hyper (under tonic) both assume 100 until told otherwise.
const STREAMS_ASSUMED_BEFORE_SETTINGS: u32 = 100;

#[tokio::test]
async fn a_new_connections_first_hundred_calls_at_once_are_all_answered() {
    let scratch = Scratch::new();
    let driver = driver(&scratch);
    let mut stream = tokio::net::UnixStream::connect(&driver.socket)
        .await
        .unwrap();
    // All sent before a byte from the server is read, as a client bursting
    // on a fresh connection does; a stream over the server's limit would be
    // refused (RST_STREAM REFUSED_STREAM), and tonic does not retry those.
    let mut burst = preface();
    for call in 0..STREAMS_ASSUMED_BEFORE_SETTINGS {
        burst.extend(get_plugin_info(2 * call + 1, "localhost"));
    }
    stream.write_all(&burst).await.unwrap();

    // Every header block goes through one decoder (HPACK's table is the
    // connection's); a call ends with its trailers' grpc-status, or a reset.
    let mut decoder = Decoder::new();
    let (mut answered, mut reset) = (
        std::collections::BTreeMap::new(),
        std::collections::BTreeSet::new(),
    );
    tokio::time::timeout(Duration::from_secs(30), async {
        while answered.len() + reset.len() < STREAMS_ASSUMED_BEFORE_SETTINGS as usize {
            match next_frame(&mut stream).await {
                (HEADERS, flags, id, payload) => {
                    let headers = decoder.decode(&payload).unwrap();
                    if flags & END_STREAM != 0 {
                        let status = headers
                            .iter()
                            .find(|(name, _)| name.as_slice() == b"grpc-status")
                            .map(|(_, value)| String::from_utf8_lossy(value).into_owned());
                        answered.insert(id, status);
                    }
                }
                (RST_STREAM, _, id, _) => {
                    reset.insert(id);
                }
                (GOAWAY, _, _, payload) => panic!("GOAWAY {payload:?}"),
                _ => {}
            }
        }
    })
    .await
    .expect("every call answered or reset within 30 s");
    assert!(reset.is_empty(), "streams reset: {reset:?}");
    let not_ok: Vec<_> = answered
        .iter()
        .filter(|(_, status)| status.as_deref() != Some("0"))
        .collect();
    assert!(not_ok.is_empty(), "answered but not OK: {not_ok:?}");
    assert_eq!(answered.len(), STREAMS_ASSUMED_BEFORE_SETTINGS as usize);
}
