//! Tests of `LocalAuthority`: rewriting of hand-built client byte streams
//! (fed in chunks of any size), refusal of hostile input, and end-to-end runs
//! against a real `h2` server and a real tonic server on a unix socket.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hostpath_csi::authority::LocalAuthority;
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

const PROTOCOL_ERROR: u32 = 0x1;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

// ---------------------------------------------------------------------------
// Building client input
// ---------------------------------------------------------------------------

/// One frame, with its length field taken from the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 1 << 24);
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer (RFC 7541 section 5.1) with a `prefix`-bit prefix and
/// `high` in the bits above it.
fn int(prefix: u32, high: u8, value: usize) -> Vec<u8> {
    let max = (1usize << prefix) - 1;
    if value < max {
        return vec![high | value as u8];
    }
    let mut out = vec![high | max as u8];
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
    out
}

/// A plain (non-Huffman) string literal.
fn raw(s: &[u8]) -> Vec<u8> {
    let mut out = int(7, 0x00, s.len());
    out.extend_from_slice(s);
    out
}

/// A Huffman-coded string literal, coded by an independent implementation.
fn huff(s: &[u8]) -> Vec<u8> {
    let mut coded = Vec::new();
    httlib_huffman::encode(s, &mut coded).expect("huffman encode");
    let mut out = int(7, 0x80, coded.len());
    out.extend_from_slice(&coded);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn fields(list: &[(&str, &str)]) -> Fields {
    list.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// HPACK block of a first request: POST /x with the given authority, both
/// `:path` and `:authority` added to the client's dynamic table with
/// incremental indexing (table afterwards: 62 = `:authority`, 63 = `:path`).
fn first_request_block(authority: &[u8]) -> Vec<u8> {
    cat(&[
        &[0x83, 0x86], // :method POST, :scheme http (static table)
        &[0x44],       // literal, incremental indexing, name = static 4 (:path)
        &raw(b"/x"),
        &[0x41], // literal, incremental indexing, name = static 1 (:authority)
        &huff(authority),
    ])
}

/// HPACK block of a second request made only of references to the first
/// request's dynamic table entries.
const SECOND_REQUEST_BLOCK: &[u8] = &[0x83, 0x86, 0xbf, 0xbe];

/// What the server should see for either request.
fn rewritten_request() -> Fields {
    fields(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/x"),
        (":authority", "localhost"),
    ])
}

// ---------------------------------------------------------------------------
// Running the adapter over in-memory input
// ---------------------------------------------------------------------------

/// A stream whose reads hand out `data` at most `chunk` bytes at a time,
/// returning `Pending` before every read so that each one is a fresh poll.
/// Writes are discarded.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
    ready: bool,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        let n = self
            .chunk
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Chunked {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs `input` through the adapter, delivered `chunk` bytes per read of
/// the socket and read back `read_size` bytes at a time, until end of
/// stream or the first error.
async fn rewrite_with(input: &[u8], chunk: usize, read_size: usize) -> io::Result<Vec<u8>> {
    let mut adapter = LocalAuthority::new(Chunked {
        data: input.to_vec(),
        pos: 0,
        chunk,
        ready: false,
    });
    let mut out = Vec::new();
    let mut buf = vec![0; read_size];
    loop {
        let n = adapter.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

async fn rewrite(input: &[u8]) -> io::Result<Vec<u8>> {
    rewrite_with(input, usize::MAX, 64 * 1024).await
}

/// Asserts that the adapter refuses `input` with `InvalidData`; returns
/// the error message.
async fn assert_refused(input: &[u8], what: &str) -> String {
    match rewrite(input).await {
        Err(err) => {
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
            err.to_string()
        }
        Ok(_) => panic!("{what}: accepted"),
    }
}

// ---------------------------------------------------------------------------
// Reading the adapter's output
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn bytes(&self) -> Vec<u8> {
        frame(self.kind, self.flags, self.stream, &self.payload)
    }
}

/// Splits the adapter's output into its preface and frames.
fn parse_output(out: &[u8]) -> Vec<Frame> {
    assert!(out.starts_with(PREFACE), "output lacks the preface");
    let mut rest = &out[PREFACE.len()..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 9, "truncated frame header");
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        frames.push(Frame {
            kind: rest[3],
            flags: rest[4],
            stream,
            payload: rest[9..9 + len].to_vec(),
        });
        rest = &rest[9 + len..];
    }
    frames
}

/// A rewritten header block as the server receives it.
#[derive(Debug)]
struct Block {
    stream: u32,
    /// Flags of its HEADERS frame.
    flags: u8,
    priority: Option<Vec<u8>>,
    fragment: Vec<u8>,
    /// Payload sizes of its frames.
    frame_sizes: Vec<usize>,
}

/// Collects the header blocks in `frames`, checking how each is framed:
/// HEADERS then CONTINUATIONs of the same stream, END_HEADERS exactly on
/// the last, no PADDED flag, no payload over 16384 bytes.
fn header_blocks(frames: &[Frame]) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut open = false;
    for f in frames {
        match f.kind {
            HEADERS => {
                assert!(!open, "HEADERS inside a block");
                assert_eq!(f.flags & PADDED, 0, "PADDED not cleared");
                let (priority, fragment) = if f.flags & PRIORITY != 0 {
                    (Some(f.payload[..5].to_vec()), f.payload[5..].to_vec())
                } else {
                    (None, f.payload.clone())
                };
                blocks.push(Block {
                    stream: f.stream,
                    flags: f.flags,
                    priority,
                    fragment,
                    frame_sizes: vec![f.payload.len()],
                });
            }
            CONTINUATION => {
                assert!(open, "CONTINUATION outside a block");
                let block = blocks.last_mut().expect("open block");
                assert_eq!(f.stream, block.stream);
                assert_eq!(f.flags & !END_HEADERS, 0, "stray CONTINUATION flags");
                block.fragment.extend_from_slice(&f.payload);
                block.frame_sizes.push(f.payload.len());
            }
            _ => assert!(!open, "frame interleaved in a block"),
        }
        assert!(f.payload.len() <= 16_384, "frame over 16384 bytes");
        if f.kind == HEADERS || f.kind == CONTINUATION {
            open = f.flags & END_HEADERS == 0;
        }
    }
    assert!(!open, "block left open");
    blocks
}

/// Parses a block that must consist only of "literal without indexing, new
/// name" fields with plain strings: the only form the adapter may emit.
fn literal_fields(mut block: &[u8]) -> Fields {
    fn take_int7(block: &mut &[u8]) -> usize {
        let first = block[0];
        assert_eq!(first & 0x80, 0, "Huffman-coded string emitted");
        *block = &block[1..];
        let mut value = usize::from(first & 0x7f);
        if value < 0x7f {
            return value;
        }
        let mut shift = 0;
        loop {
            let b = block[0];
            *block = &block[1..];
            value += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return value;
            }
        }
    }
    fn take_string(block: &mut &[u8]) -> Vec<u8> {
        let len = take_int7(block);
        let (s, rest) = block.split_at(len);
        *block = rest;
        s.to_vec()
    }
    let mut out = Vec::new();
    while !block.is_empty() {
        assert_eq!(block[0], 0x00, "not a literal without indexing, new name");
        block = &block[1..];
        let name = take_string(&mut block);
        let value = take_string(&mut block);
        out.push((name, value));
    }
    out
}

/// Decodes each rewritten block two ways (strict literal-only parse, and a
/// general HPACK decoder with a fresh table) and checks they agree.
fn decoded_blocks(out: &[u8]) -> Vec<(Block, Fields)> {
    header_blocks(&parse_output(out))
        .into_iter()
        .map(|block| {
            let literal = literal_fields(&block.fragment);
            let general = Decoder::new().decode(&block.fragment).expect("hpack");
            assert_eq!(literal, general);
            (block, literal)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Rewriting a Huffman / incremental-indexing authority
// ---------------------------------------------------------------------------

#[tokio::test]
async fn huffman_indexed_authority_becomes_localhost() {
    let block = cat(&[
        &first_request_block(b"%2Ftmp%2Fcsi.sock"),
        // Literal with incremental indexing, new name, both strings Huffman.
        &[0x40],
        &huff(b"content-type"),
        &huff(b"application/grpc"),
        // Literal never indexed, indexed name (static 16 accept-encoding).
        &[0x1f, 0x01],
        &raw(b"identity"),
    ]);
    let settings = frame(SETTINGS, 0, 0, &[0x00, 0x04, 0x00, 0x01, 0x00, 0x00]);
    let data = frame(DATA, END_STREAM, 1, b"\x00\x00\x00\x00\x00");
    let input = cat(&[
        PREFACE,
        &settings,
        &frame(HEADERS, END_HEADERS, 1, &block),
        &data,
    ]);

    let out = rewrite(&input).await.expect("rewrite");

    let frames = parse_output(&out);
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].bytes(), settings, "SETTINGS changed");
    assert_eq!(frames[2].bytes(), data, "DATA changed");
    let blocks = decoded_blocks(&out);
    assert_eq!(blocks.len(), 1);
    let (block, list) = &blocks[0];
    assert_eq!(block.stream, 1);
    assert_eq!(block.flags, END_HEADERS);
    let mut expected = rewritten_request();
    expected.extend(fields(&[
        ("content-type", "application/grpc"),
        ("accept-encoding", "identity"),
    ]));
    assert_eq!(list, &expected);
}

#[tokio::test]
async fn raw_path_authority_and_missing_authority() {
    // grpc-java style: the raw socket path, as a plain literal.
    let java = cat(&[&[0x83, 0x86, 0x84, 0x01], &raw(b"/tmp/csi.sock")]);
    // No :authority at all: none is added.
    let none = vec![0x83, 0x86, 0x84];
    let input = cat(&[
        PREFACE,
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, &java),
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, &none),
    ]);

    let blocks = decoded_blocks(&rewrite(&input).await.expect("rewrite"));

    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].0.flags, END_HEADERS | END_STREAM);
    let get = fields(&[(":method", "POST"), (":scheme", "http"), (":path", "/")]);
    let mut with_authority = get.clone();
    with_authority.push((b":authority".to_vec(), b"localhost".to_vec()));
    assert_eq!(blocks[0].1, with_authority);
    assert_eq!(blocks[1].1, get);
}

// ---------------------------------------------------------------------------
// 2. The client's dynamic table across requests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn second_request_referencing_dynamic_table() {
    let input = cat(&[
        PREFACE,
        &frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &first_request_block(b"%2Ftmp%2Fcsi.sock"),
        ),
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, SECOND_REQUEST_BLOCK),
    ]);

    let blocks = decoded_blocks(&rewrite(&input).await.expect("rewrite"));

    assert_eq!(blocks.len(), 2);
    assert_eq!((blocks[0].0.stream, blocks[1].0.stream), (1, 3));
    assert_eq!(blocks[0].1, rewritten_request());
    assert_eq!(blocks[1].1, rewritten_request());
}

#[tokio::test]
async fn rfc7541_appendix_c4_requests() {
    // RFC 7541 C.4: three requests with Huffman coding, the later ones
    // referring to entries the earlier ones added.
    let c41 = [
        0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90,
        0xf4, 0xff,
    ];
    let c42 = [
        0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
    ];
    let c43 = [
        0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f, 0x89,
        0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
    ];
    let input = cat(&[
        PREFACE,
        &frame(HEADERS, END_HEADERS, 1, &c41),
        &frame(HEADERS, END_HEADERS, 3, &c42),
        &frame(HEADERS, END_HEADERS, 5, &c43),
    ]);

    let blocks = decoded_blocks(&rewrite(&input).await.expect("rewrite"));

    let base = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
    let mut first = fields(&base);
    first.extend(fields(&[(":authority", "localhost")]));
    let mut second = first.clone();
    second.extend(fields(&[("cache-control", "no-cache")]));
    let third = fields(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "localhost"),
        ("custom-key", "custom-value"),
    ]);
    let lists: Vec<Fields> = blocks.into_iter().map(|(_, list)| list).collect();
    assert_eq!(lists, vec![first, second, third]);
}

#[tokio::test]
async fn dynamic_table_size_updates_are_followed() {
    // 0x3f 0xe1 0x1f = size update to 4096 (the server's table size).
    let resize = cat(&[&[0x3f, 0xe1, 0x1f], &first_request_block(b"a")]);
    let ok = cat(&[
        PREFACE,
        &frame(HEADERS, END_HEADERS, 1, &resize),
        &frame(HEADERS, END_HEADERS, 3, SECOND_REQUEST_BLOCK),
    ]);
    let blocks = decoded_blocks(&rewrite(&ok).await.expect("rewrite"));
    assert_eq!(blocks[1].1, rewritten_request());

    // Shrinking the table to 0 evicts the entries: referencing them fails.
    let evict = cat(&[&[0x20, 0x3f, 0xe1, 0x1f], SECOND_REQUEST_BLOCK]);
    let evicted = cat(&[
        PREFACE,
        &frame(HEADERS, END_HEADERS, 1, &first_request_block(b"a")),
        &frame(HEADERS, END_HEADERS, 3, &evict),
    ]);
    assert_refused(&evicted, "reference to an evicted entry").await;

    // Growing past the server's 4096 bytes is a protocol error.
    let too_big = cat(&[&[0x3f, 0xe2, 0x1f], &first_request_block(b"a")]);
    assert_refused(
        &cat(&[PREFACE, &frame(HEADERS, END_HEADERS, 1, &too_big)]),
        "table size 4097",
    )
    .await;
}

// ---------------------------------------------------------------------------
// 3. Framing: padding, priority, CONTINUATION, limits, garbage, chunking
// ---------------------------------------------------------------------------

#[tokio::test]
async fn padded_priority_block_over_continuations() {
    let block = first_request_block(b"%2Ftmp%2Fcsi.sock");
    let (a, rest) = block.split_at(3);
    let (b, c) = rest.split_at(5);
    let priority = [0x80, 0x00, 0x00, 0x07, 0x2a]; // exclusive on stream 7, weight 42
    let headers_payload = cat(&[&[4], &priority, a, &[0xaa; 4]]); // 4 padding bytes
    let input = cat(&[
        PREFACE,
        &frame(HEADERS, PADDED | PRIORITY | END_STREAM, 9, &headers_payload),
        &frame(CONTINUATION, 0, 9, b),
        &frame(CONTINUATION, END_HEADERS, 9, c),
    ]);

    let out = rewrite(&input).await.expect("rewrite");

    let frames = parse_output(&out);
    assert_eq!(frames.len(), 1, "small block not re-framed as one frame");
    let blocks = decoded_blocks(&out);
    let (block, list) = &blocks[0];
    assert_eq!(block.stream, 9);
    assert_eq!(block.flags, PRIORITY | END_STREAM | END_HEADERS);
    assert_eq!(block.priority.as_deref(), Some(&priority[..]));
    assert_eq!(list, &rewritten_request());
}

#[tokio::test]
async fn large_block_is_split_into_16384_byte_frames() {
    let big = vec![b'v'; 40_000];
    let block = cat(&[
        &first_request_block(b"%2Ftmp%2Fcsi.sock"),
        &[0x00],
        &raw(b"x-big"),
        &raw(&big),
    ]);
    let priority = [0, 0, 0, 0, 15];
    let input = cat(&[
        PREFACE,
        &frame(
            HEADERS,
            PRIORITY | END_STREAM,
            1,
            &cat(&[&priority, &block[..20_000]]),
        ),
        &frame(CONTINUATION, END_HEADERS, 1, &block[20_000..]),
    ]);

    let blocks = decoded_blocks(&rewrite(&input).await.expect("rewrite"));

    let (block, list) = &blocks[0];
    assert_eq!(block.frame_sizes.len(), 3);
    assert_eq!(block.frame_sizes[..2], [16_384, 16_384]);
    assert_eq!(block.flags, PRIORITY | END_STREAM);
    let mut expected = rewritten_request();
    expected.push((b"x-big".to_vec(), big));
    assert_eq!(list, &expected);
}

#[tokio::test]
async fn header_block_over_64_kib_is_refused() {
    let filler = vec![0u8; 40_000];
    let input = cat(&[
        PREFACE,
        &frame(HEADERS, 0, 1, &filler),
        &frame(CONTINUATION, END_HEADERS, 1, &filler[..30_000]),
    ]);
    assert_refused(&input, "70000-byte block over two frames").await;

    // A single frame claiming more than 64 KiB is refused from its header
    // alone, before any payload is buffered.
    let mut header_only = frame(HEADERS, END_HEADERS, 1, &[]);
    header_only[..3].copy_from_slice(&[0x01, 0x00, 0x01]); // 65537 bytes
    assert_refused(&cat(&[PREFACE, &header_only]), "65537-byte frame").await;

    // The limit counts frame payloads, padding included: 65536 bytes pass,
    // 65537 do not.
    let at_limit = |extra: usize| {
        let head = first_request_block(b"a");
        // Padding: 1 length byte + 255 bytes. Literal "x": 0x00, name, and a
        // value whose 4-byte length prefix is followed by `len` bytes.
        let len = 64 * 1024 - 256 - head.len() - 3 - 4 + extra;
        let fragment = cat(&[&head, &[0x00], &raw(b"x"), &raw(&vec![b'v'; len])]);
        let (a, b) = fragment.split_at(1000);
        let input = cat(&[
            PREFACE,
            &frame(HEADERS, PADDED, 1, &cat(&[&[255], a, &[0; 255]])),
            &frame(CONTINUATION, END_HEADERS, 1, b),
        ]);
        (input, len)
    };
    let (input, len) = at_limit(0);
    let blocks = decoded_blocks(&rewrite(&input).await.expect("64 KiB block"));
    assert_eq!(blocks[0].1.last().map(|(_, v)| v.len()), Some(len));
    let err = assert_refused(&at_limit(1).0, "64 KiB + 1 block").await;
    assert!(err.contains("header block larger"), "{err}");
}

#[tokio::test]
async fn decoded_list_over_64_kib_is_refused() {
    // A 3000-byte entry added to the dynamic table, then referenced 21 times:
    // a 3 KB block that decodes to 22 * 3037 = 66814 bytes.
    let mut block = cat(&[&[0x40], &raw(b"x-big"), &raw(&[b'v'; 3000])]);
    block.extend_from_slice(&[0xbe; 21]);
    let input = cat(&[PREFACE, &frame(HEADERS, END_HEADERS, 1, &block)]);
    let err = assert_refused(&input, "66814-byte list").await;
    assert!(err.contains("header list larger"), "{err}");

    // One reference fewer (63777 bytes) is accepted.
    block.pop();
    let input = cat(&[PREFACE, &frame(HEADERS, END_HEADERS, 1, &block)]);
    let blocks = decoded_blocks(&rewrite(&input).await.expect("63777-byte list"));
    assert_eq!(blocks[0].1.len(), 21);
}

#[tokio::test]
async fn malformed_hpack_is_refused() {
    let cases: &[(&str, &[u8])] = &[
        ("index 0", &[0x80]),
        ("index past the tables", &[0xc0]),
        (
            "integer too long",
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
        ("truncated integer", &[0x7f]),
        ("truncated name", &[0x40, 0x05, b'a']),
        ("missing value", &[0x40, 0x01, b'a']),
        (
            "string length beyond block",
            &[0x04, 0x7f, 0xff, 0xff, 0xff, 0x07],
        ),
        ("Huffman EOS", &[0x04, 0x84, 0xff, 0xff, 0xff, 0xff]),
        ("Huffman padding not ones", &[0x04, 0x81, 0x00]),
        ("size update at the end", &[0x82, 0x20]),
        ("size update over 4096", &[0x3f, 0xe2, 0x1f, 0x82]),
    ];
    for (what, block) in cases {
        let input = cat(&[PREFACE, &frame(HEADERS, END_HEADERS, 1, block)]);
        assert_refused(&input, what).await;
    }
}

#[tokio::test]
async fn malformed_framing_is_refused() {
    let ok_block = first_request_block(b"a");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad preface", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            "CONTINUATION without HEADERS",
            cat(&[PREFACE, &frame(CONTINUATION, END_HEADERS, 1, &ok_block)]),
        ),
        (
            "CONTINUATION of another stream",
            cat(&[
                PREFACE,
                &frame(HEADERS, 0, 1, &ok_block[..3]),
                &frame(CONTINUATION, END_HEADERS, 3, &ok_block[3..]),
            ]),
        ),
        (
            "DATA inside a header block",
            cat(&[
                PREFACE,
                &frame(HEADERS, 0, 1, &ok_block[..3]),
                &frame(DATA, 0, 1, b"x"),
                &frame(CONTINUATION, END_HEADERS, 1, &ok_block[3..]),
            ]),
        ),
        (
            "HEADERS inside a header block",
            cat(&[
                PREFACE,
                &frame(HEADERS, 0, 1, &ok_block[..3]),
                &frame(HEADERS, END_HEADERS, 3, &ok_block),
            ]),
        ),
        (
            "padding longer than the frame",
            cat(&[
                PREFACE,
                &frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82, 0x86]),
            ]),
        ),
        (
            "PADDED without pad length",
            cat(&[PREFACE, &frame(HEADERS, END_HEADERS | PADDED, 1, &[])]),
        ),
        (
            "PRIORITY fields cut short",
            cat(&[
                PREFACE,
                &frame(HEADERS, END_HEADERS | PRIORITY, 1, &[0, 0, 0]),
            ]),
        ),
    ];
    for (what, input) in &cases {
        assert_refused(input, what).await;
    }
}

#[tokio::test]
async fn errors_are_sticky() {
    let input = cat(&[PREFACE, &frame(CONTINUATION, END_HEADERS, 1, &[0x82])]);
    let mut adapter = LocalAuthority::new(Chunked {
        data: input,
        pos: 0,
        chunk: usize::MAX,
        ready: false,
    });
    let mut buf = [0u8; 1024];
    // The preface comes out first, then the error, then the error again.
    assert_eq!(
        adapter.read(&mut buf).await.expect("preface"),
        PREFACE.len()
    );
    for _ in 0..2 {
        let err = adapter.read(&mut buf).await.expect_err("sticky");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test]
async fn random_input_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let valid = first_request_block(b"%2Ftmp%2Fcsi.sock");
    let mut outcomes = [0usize; 2];
    for _ in 0..3000 {
        let mut input = PREFACE.to_vec();
        for _ in 0..rng.below(6) + 1 {
            let kind = [HEADERS, CONTINUATION, DATA, SETTINGS, 0xfa][rng.below(5)];
            let flags = rng.next() as u8;
            let stream = rng.below(4) as u32;
            let payload = match rng.below(3) {
                0 => {
                    let len = rng.below(64);
                    rng.bytes(len)
                }
                // A valid block with a few bytes flipped.
                1 => {
                    let mut b = valid.clone();
                    for _ in 0..rng.below(4) {
                        let i = rng.below(b.len());
                        b[i] = rng.next() as u8;
                    }
                    b
                }
                _ => valid.clone(),
            };
            input.extend_from_slice(&frame(kind, flags, stream, &payload));
        }
        if rng.below(4) == 0 {
            // Also garble the framing itself.
            let i = PREFACE.len() + rng.below(input.len() - PREFACE.len());
            input[i] = rng.next() as u8;
        }
        let chunk = rng.below(20) + 1;
        match rewrite_with(&input, chunk, 4096).await {
            Ok(_) => outcomes[0] += 1,
            Err(err) => {
                assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
                outcomes[1] += 1;
            }
        }
    }
    // The generator exercises both outcomes.
    assert!(outcomes[0] > 100 && outcomes[1] > 100, "{outcomes:?}");
}

#[tokio::test]
async fn byte_at_a_time_matches_bulk() {
    let block = first_request_block(b"%2Ftmp%2Fcsi.sock");
    let priority = [0, 0, 0, 1, 200];
    let headers = cat(&[&[3], &priority, &block[..4], &[0, 0, 0]]);
    let input = cat(&[
        PREFACE,
        &frame(SETTINGS, 0, 0, &[0x00, 0x02, 0x00, 0x00, 0x00, 0x00]),
        &frame(WINDOW_UPDATE, 0, 0, &[0x00, 0x01, 0x00, 0x00]),
        &frame(HEADERS, PADDED | PRIORITY, 1, &headers),
        &frame(CONTINUATION, 0, 1, &block[4..6]),
        &frame(CONTINUATION, 0, 1, &[]),
        &frame(CONTINUATION, END_HEADERS, 1, &block[6..]),
        &frame(DATA, 0, 1, &[7; 300]),
        &frame(DATA, END_STREAM, 1, &[]),
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, SECOND_REQUEST_BLOCK),
        &frame(PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]),
    ]);

    let bulk = rewrite(&input).await.expect("bulk");
    for (chunk, read_size) in [(1, 1), (1, 4096), (7, 3), (4096, 1), (13, 64)] {
        let piecewise = rewrite_with(&input, chunk, read_size)
            .await
            .expect("piecewise");
        assert_eq!(piecewise, bulk, "chunk {chunk}, read size {read_size}");
    }

    let frames = parse_output(&bulk);
    let kinds: Vec<u8> = frames.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [SETTINGS, WINDOW_UPDATE, HEADERS, DATA, DATA, HEADERS, PING]
    );
    assert_eq!(frames[3].payload, [7; 300]);
    let blocks = decoded_blocks(&bulk);
    assert_eq!(blocks[0].0.priority.as_deref(), Some(&priority[..]));
    assert_eq!(blocks[0].1, rewritten_request());
    assert_eq!(blocks[1].1, rewritten_request());
}

// ---------------------------------------------------------------------------
// 4. End to end with real servers
// ---------------------------------------------------------------------------

/// What a gRPC client sends first on a unix socket: preface, empty SETTINGS,
/// then two requests, the second made of dynamic-table references.
fn client_bytes(authority: &[u8]) -> Vec<u8> {
    cat(&[
        PREFACE,
        &frame(SETTINGS, 0, 0, &[]),
        &frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &first_request_block(authority),
        ),
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, SECOND_REQUEST_BLOCK),
    ])
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Frame {
    let mut h = [0u8; 9];
    r.read_exact(&mut h).await.expect("frame header");
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await.expect("frame payload");
    Frame {
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        payload,
    }
}

/// Reads the server's frames until `streams` have each got a response
/// HEADERS (returning each `:status`) or a RST_STREAM (returning its code
/// as `rst <code>`), in stream order.
async fn responses<R: AsyncRead + Unpin>(r: &mut R, streams: &[u32]) -> Vec<String> {
    let mut decoder = Decoder::new();
    let mut seen: Vec<(u32, String)> = Vec::new();
    while seen.len() < streams.len() {
        let f = read_frame(r).await;
        match f.kind {
            HEADERS => {
                assert_ne!(f.flags & END_HEADERS, 0, "server split its headers");
                let list = decoder.decode(&f.payload).expect("server hpack");
                let status = list
                    .iter()
                    .find(|(n, _)| n == b":status")
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .expect(":status");
                seen.push((f.stream, status));
            }
            RST_STREAM => {
                let code = u32::from_be_bytes(f.payload[..4].try_into().expect("4 bytes"));
                seen.push((f.stream, format!("rst {code}")));
            }
            _ => {}
        }
    }
    seen.sort();
    let ids: Vec<u32> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(ids, streams);
    seen.into_iter().map(|(_, what)| what).collect()
}

/// Serves one connection with `h2`, answering 200 to every request, and
/// returns the URIs of the requests it accepted.
async fn h2_server<T: AsyncRead + AsyncWrite + Unpin>(io: T) -> Vec<http::Uri> {
    let mut conn = h2::server::handshake(io).await.expect("h2 handshake");
    let mut uris = Vec::new();
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        uris.push(request.uri().clone());
        respond
            .send_response(http::Response::new(()), true)
            .expect("send response");
    }
    uris
}

/// Sends `client_bytes(authority)` to an `h2` server, through the adapter
/// or not; returns the client-visible outcome per stream and the URIs the
/// server accepted.
async fn h2_exchange(authority: &[u8], adapt: bool) -> (Vec<String>, Vec<http::Uri>) {
    let (mut client, server_io) = tokio::io::duplex(64 * 1024);
    let server = if adapt {
        tokio::spawn(h2_server(LocalAuthority::new(server_io)))
    } else {
        tokio::spawn(h2_server(server_io))
    };
    client
        .write_all(&client_bytes(authority))
        .await
        .expect("client write");
    let outcome = tokio::time::timeout(Duration::from_secs(10), responses(&mut client, &[1, 3]))
        .await
        .expect("server answered in time");
    drop(client);
    let uris = server.await.expect("server task");
    (outcome, uris)
}

#[tokio::test]
async fn h2_resets_unix_socket_authorities_without_adapter() {
    for authority in [&b"%2Ftmp%2Fcsi.sock"[..], b"/tmp/csi.sock"] {
        let (outcome, uris) = h2_exchange(authority, false).await;
        let reset = format!("rst {PROTOCOL_ERROR}");
        assert_eq!(outcome, [reset.clone(), reset]);
        assert!(uris.is_empty());
    }
}

#[tokio::test]
async fn h2_accepts_unix_socket_authorities_through_adapter() {
    for authority in [&b"%2Ftmp%2Fcsi.sock"[..], b"/tmp/csi.sock"] {
        let (outcome, uris) = h2_exchange(authority, true).await;
        assert_eq!(outcome, ["200", "200"]);
        assert_eq!(uris.len(), 2);
        for uri in uris {
            assert_eq!(uri.authority().map(|a| a.as_str()), Some("localhost"));
            assert_eq!(uri.path(), "/x");
        }
    }
}

#[tokio::test]
async fn tonic_serves_wrapped_unix_socket() {
    use tokio::net::{UnixListener, UnixStream};
    use tokio_stream::StreamExt;
    use tokio_stream::wrappers::UnixListenerStream;
    use tonic::transport::server::UdsConnectInfo;

    let dir = std::env::temp_dir().join(format!("h2authority-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("csi.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");

    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let service = tower::service_fn(move |request: http::Request<tonic::body::Body>| {
        let seen_tx = seen_tx.clone();
        async move {
            let has_uds_info = request.extensions().get::<UdsConnectInfo>().is_some();
            let _ = seen_tx.send((request.uri().clone(), has_uds_info));
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
        }
    });
    let incoming = UnixListenerStream::new(listener).map(|conn| conn.map(LocalAuthority::new));
    let server =
        tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(service, incoming));

    let mut client = UnixStream::connect(&path).await.expect("connect");
    client
        .write_all(&client_bytes(b"%2Ftmp%2Fcsi.sock"))
        .await
        .expect("client write");
    let outcome = tokio::time::timeout(Duration::from_secs(10), responses(&mut client, &[1, 3]))
        .await
        .expect("server answered in time");
    assert_eq!(outcome, ["200", "200"]);
    for _ in 0..2 {
        let (uri, has_uds_info) = seen_rx.recv().await.expect("request seen");
        assert_eq!(uri.authority().map(|a| a.as_str()), Some("localhost"));
        assert!(
            has_uds_info,
            "UdsConnectInfo missing from request extensions"
        );
    }

    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
