//! Server-side HTTP/2 `:authority` normaliser for unix-socket gRPC endpoints.
//!
//! gRPC C-core clients (grpcio) send the percent-encoded socket path as
//! `:authority` and grpc-java sends the raw path. The `h2` crate rejects both
//! as malformed and resets every stream, and it has no option to relax that.
//! An endpoint on a unix socket has no use for the authority, so
//! [`LocalAuthority`] sits between the accepted socket and the HTTP/2 server
//! and rewrites the client's byte stream so that every header block the
//! server decodes carries `:authority: localhost` (a block without one gets
//! none added).
//!
//! Read side (client to server): the connection preface is checked and passed
//! on, then frames are parsed as they arrive. Frames other than HEADERS and
//! CONTINUATION are streamed through unchanged. A header block (one HEADERS
//! frame plus its CONTINUATION frames) is gathered, HPACK-decoded by a decoder
//! whose dynamic table follows the client's encoder, and re-encoded with
//! "literal header field without indexing, new name" representations only,
//! so the server's decoder never touches its dynamic table and stays in step.
//! The new block goes out as HEADERS + CONTINUATION frames of at most 16384
//! payload bytes (the smallest maximum frame size a peer may announce).
//!
//! Write side (server to client): passed straight through.
//!
//! Memory is bounded: a header block over 64 KiB (frame payloads, padding
//! included) or a decoded header list over 64 KiB (counted as RFC 7540
//! counts SETTINGS_MAX_HEADER_LIST_SIZE: name + value + 32 per field) is
//! refused, and output is produced in bounded steps. Any violation or
//! malformed input makes the read fail with [`io::ErrorKind::InvalidData`],
//! which makes the HTTP/2 server drop the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The client connection preface (RFC 7540 section 3.5).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header: 24-bit length, type, flags, 31-bit stream id.
const FRAME_HEADER_LEN: usize = 9;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Size of the stream dependency + weight carried by a HEADERS frame with
/// the PRIORITY flag.
const PRIORITY_LEN: usize = 5;

/// Largest header block accepted: the sum of the payload lengths of its
/// HEADERS and CONTINUATION frames.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Largest decoded header list accepted, in RFC 7540 "header list size" units.
const MAX_HEADER_LIST: usize = 64 * 1024;
/// Per-field overhead used when sizing a header list (RFC 7540 section 6.5.2).
const FIELD_OVERHEAD: usize = 32;
/// Largest payload of an emitted HEADERS/CONTINUATION frame: the initial
/// SETTINGS_MAX_FRAME_SIZE, which every HTTP/2 server accepts.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// Largest HPACK dynamic table the client may use: the server's
/// SETTINGS_HEADER_TABLE_SIZE, left at the protocol's initial value by tonic
/// (which has no option for it) and by hyper's and h2's defaults. A server
/// announcing more would see clients' larger table size updates refused.
const HPACK_TABLE_SIZE: usize = 4096;

/// Bytes read from the socket in one go.
const READ_CHUNK: usize = 16 * 1024;
/// Parsing pauses once this much output is waiting, so a small input that
/// expands a lot (many tiny header blocks) cannot pile up output.
const OUT_HIGH_WATER: usize = 16 * 1024;

const AUTHORITY: &[u8] = b":authority";
const LOCALHOST: &[u8] = b"localhost";

/// Wraps the server side of an HTTP/2 connection so that the server sees
/// `:authority: localhost` on every request, whatever the client sent.
///
/// Reads yield the rewritten client-to-server stream; writes go straight to
/// the wrapped stream. On malformed or hostile input, reads hand out the
/// bytes rewritten before the fault, then fail with `InvalidData`, and every
/// later read fails the same way.
///
/// Per connection it holds at most a few hundred KiB of buffers (read
/// chunk, one header block, its re-encoding, pending output), kept for reuse.
pub struct LocalAuthority<S> {
    inner: S,
    rewriter: Rewriter,
    /// Bytes read from `inner`; `input[in_pos..in_end]` is not parsed yet.
    input: Box<[u8]>,
    in_pos: usize,
    in_end: usize,
    /// Message of the error that ended the read side, repeated on later reads.
    failed: Option<String>,
}

impl<S> LocalAuthority<S> {
    /// Wraps `inner`, the server end of a connection, before any byte of it
    /// has been read.
    pub fn new(inner: S) -> Self {
        LocalAuthority {
            inner,
            rewriter: Rewriter::new(),
            input: vec![0; READ_CHUNK].into_boxed_slice(),
            in_pos: 0,
            in_end: 0,
            failed: None,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the stream. Bytes already read from it but not yet returned
    /// by a read of this wrapper are lost.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LocalAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.rewriter.drain_into(buf) {
                return Poll::Ready(Ok(()));
            }
            if let Some(msg) = &this.failed {
                return Poll::Ready(Err(invalid_data(msg.clone())));
            }
            // Parse what is buffered (possibly nothing: a zero-length frame
            // may still be waiting to be finished).
            match this.rewriter.feed(&this.input[this.in_pos..this.in_end]) {
                Ok(used) => this.in_pos += used,
                Err(err) => {
                    // Hand out what came before the bad input, then fail.
                    this.failed = Some(err.to_string());
                    continue;
                }
            }
            // `feed` stops early only when output is waiting; deliver it.
            if this.rewriter.has_output() {
                continue;
            }
            debug_assert_eq!(this.in_pos, this.in_end);
            let mut read_buf = ReadBuf::new(&mut this.input);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read_buf))?;
            let filled = read_buf.filled().len();
            if filled == 0 {
                // End of stream, possibly mid-frame: the server notices.
                return Poll::Ready(Ok(()));
            }
            this.in_pos = 0;
            this.in_end = filled;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LocalAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Lets tonic's `serve_with_incoming` accept wrapped streams, reporting the
/// wrapped stream's connection info (`UdsConnectInfo` for a `UnixStream`).
impl<S: Connected> Connected for LocalAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// What the HEADERS frame that opened a header block said.
#[derive(Clone, Copy)]
struct OpenBlock {
    stream_id: u32,
    end_stream: bool,
    /// Payload bytes of the block's frames so far, padding included.
    payload_len: usize,
    /// Stream dependency and weight, when the PRIORITY flag was set.
    priority: Option<[u8; PRIORITY_LEN]>,
}

/// Where the parser stands in the client's byte stream.
#[derive(Clone, Copy)]
enum State {
    /// Checking the preface; this many bytes of it matched so far.
    Preface(usize),
    /// Gathering a frame header into `Rewriter::header`; `have` bytes so far.
    /// `open` is the header block still waiting for CONTINUATION frames.
    FrameHeader {
        have: usize,
        open: Option<OpenBlock>,
    },
    /// Copying this many more payload bytes of a frame through unchanged.
    Passthrough(usize),
    /// Appending `remaining` more payload bytes of a HEADERS (`first`) or
    /// CONTINUATION frame with `flags` to `Rewriter::block`.
    HeaderPayload {
        remaining: usize,
        flags: u8,
        first: bool,
        open: OpenBlock,
    },
}

/// The I/O-free rewriting state machine: bytes in, rewritten bytes out.
struct Rewriter {
    state: State,
    /// The frame header being gathered.
    header: [u8; FRAME_HEADER_LEN],
    /// The header block fragment gathered so far (at most `MAX_HEADER_BLOCK`
    /// bytes).
    block: Vec<u8>,
    /// Follows the client's HPACK encoder across header blocks.
    decoder: Decoder<'static>,
    /// The re-encoded header block being framed.
    encoded: Vec<u8>,
    /// Rewritten bytes; `out[out_pos..]` is not yet handed to the reader.
    out: Vec<u8>,
    out_pos: usize,
}

impl Rewriter {
    fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE_SIZE);
        Rewriter {
            state: State::Preface(0),
            header: [0; FRAME_HEADER_LEN],
            block: Vec::new(),
            decoder,
            encoded: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
        }
    }

    fn has_output(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Moves waiting output into `buf`; returns whether anything was moved.
    fn drain_into(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if !self.has_output() {
            return false;
        }
        let n = buf.remaining().min(self.out.len() - self.out_pos);
        buf.put_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            // Keep the allocation for the next round.
            self.out.clear();
            self.out_pos = 0;
        }
        true
    }

    /// Parses `input`, appending rewritten bytes to the output. Returns how
    /// many bytes of `input` were consumed: all of them, unless the output
    /// reached `OUT_HIGH_WATER` first. Only called when no output is waiting.
    fn feed(&mut self, input: &[u8]) -> io::Result<usize> {
        let mut used = 0;
        while self.out.len() < OUT_HIGH_WATER {
            let rest = &input[used..];
            match self.state {
                State::Preface(matched) => {
                    if rest.is_empty() {
                        break;
                    }
                    let n = rest.len().min(PREFACE.len() - matched);
                    if rest[..n] != PREFACE[matched..matched + n] {
                        return Err(invalid_data("client did not send the HTTP/2 preface"));
                    }
                    self.out.extend_from_slice(&rest[..n]);
                    used += n;
                    self.state = if matched + n == PREFACE.len() {
                        State::FrameHeader {
                            have: 0,
                            open: None,
                        }
                    } else {
                        State::Preface(matched + n)
                    };
                }
                State::FrameHeader { have, open } => {
                    if rest.is_empty() {
                        break;
                    }
                    let n = rest.len().min(FRAME_HEADER_LEN - have);
                    self.header[have..have + n].copy_from_slice(&rest[..n]);
                    used += n;
                    self.state = if have + n == FRAME_HEADER_LEN {
                        self.on_frame_header(open)?
                    } else {
                        State::FrameHeader {
                            have: have + n,
                            open,
                        }
                    };
                }
                State::Passthrough(remaining) => {
                    if remaining == 0 {
                        self.state = State::FrameHeader {
                            have: 0,
                            open: None,
                        };
                        continue;
                    }
                    if rest.is_empty() {
                        break;
                    }
                    let n = rest.len().min(remaining);
                    self.out.extend_from_slice(&rest[..n]);
                    used += n;
                    self.state = State::Passthrough(remaining - n);
                }
                State::HeaderPayload {
                    remaining,
                    flags,
                    first,
                    open,
                } => {
                    if remaining == 0 {
                        let open = self.on_header_frame_end(flags, first, open)?;
                        self.state = State::FrameHeader { have: 0, open };
                        continue;
                    }
                    if rest.is_empty() {
                        break;
                    }
                    let n = rest.len().min(remaining);
                    self.block.extend_from_slice(&rest[..n]);
                    used += n;
                    self.state = State::HeaderPayload {
                        remaining: remaining - n,
                        flags,
                        first,
                        open,
                    };
                }
            }
        }
        Ok(used)
    }

    /// Decides what to do with the frame whose header was just gathered.
    /// `open` is the header block awaiting CONTINUATION frames, if any.
    fn on_frame_header(&mut self, open: Option<OpenBlock>) -> io::Result<State> {
        let h = &self.header;
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let kind = h[3];
        let flags = h[4];
        // The top bit is reserved and must be ignored.
        let stream_id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;

        let (mut open, first) = match (open, kind) {
            (Some(open), TYPE_CONTINUATION) if open.stream_id == stream_id => (open, false),
            (Some(_), TYPE_CONTINUATION) => {
                return Err(invalid_data("CONTINUATION frame for another stream"));
            }
            (Some(_), _) => {
                return Err(invalid_data("frame interleaved in a header block"));
            }
            (None, TYPE_CONTINUATION) => {
                return Err(invalid_data("CONTINUATION frame without a HEADERS frame"));
            }
            (None, TYPE_HEADERS) => {
                self.block.clear();
                let open = OpenBlock {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    payload_len: 0,
                    priority: None,
                };
                (open, true)
            }
            (None, _) => {
                self.out.extend_from_slice(&self.header);
                return Ok(State::Passthrough(len));
            }
        };
        // Checked before any payload is buffered.
        open.payload_len += len;
        if open.payload_len > MAX_HEADER_BLOCK {
            return Err(invalid_data("header block larger than 64 KiB"));
        }
        Ok(State::HeaderPayload {
            remaining: len,
            flags,
            first,
            open,
        })
    }

    /// Called once the payload of a HEADERS (`first`) or CONTINUATION frame is
    /// in `block`. Returns the header block still open after this frame.
    fn on_header_frame_end(
        &mut self,
        flags: u8,
        first: bool,
        mut open: OpenBlock,
    ) -> io::Result<Option<OpenBlock>> {
        if first {
            // HEADERS payload: [pad length] [priority] fragment [padding].
            // It is alone in `block`, as it starts the block.
            let mut start = 0;
            let mut pad = 0;
            if flags & FLAG_PADDED != 0 {
                pad = usize::from(
                    *self
                        .block
                        .first()
                        .ok_or_else(|| invalid_data("PADDED HEADERS frame without pad length"))?,
                );
                start = 1;
            }
            if flags & FLAG_PRIORITY != 0 {
                let fields = self
                    .block
                    .get(start..start + PRIORITY_LEN)
                    .ok_or_else(|| invalid_data("PRIORITY HEADERS frame too short"))?;
                let mut priority = [0; PRIORITY_LEN];
                priority.copy_from_slice(fields);
                open.priority = Some(priority);
                start += PRIORITY_LEN;
            }
            let end = self
                .block
                .len()
                .checked_sub(pad)
                .filter(|&end| end >= start)
                .ok_or_else(|| invalid_data("HEADERS padding longer than the frame"))?;
            self.block.truncate(end);
            self.block.drain(..start);
        }
        if flags & FLAG_END_HEADERS == 0 {
            return Ok(Some(open));
        }
        self.rewrite_block()?;
        self.emit_block(open);
        Ok(None)
    }

    /// Decodes the gathered block into `encoded`, re-encoded with the
    /// authority replaced.
    fn rewrite_block(&mut self) -> io::Result<()> {
        self.encoded.clear();
        let encoded = &mut self.encoded;
        let mut list_size = 0usize;
        self.decoder
            .decode_with_cb(&self.block, |name, value| {
                // The decoder cannot be stopped from the callback; past the
                // limit, fields are just counted (so the block is refused)
                // and no longer copied.
                list_size = list_size
                    .saturating_add(name.len() + value.len())
                    .saturating_add(FIELD_OVERHEAD);
                if list_size > MAX_HEADER_LIST {
                    return;
                }
                let value: &[u8] = if *name == *AUTHORITY {
                    LOCALHOST
                } else {
                    &value
                };
                encode_literal(encoded, &name, value);
            })
            .map_err(|err| invalid_data(format!("HPACK decoding failed: {err}")))?;
        self.block.clear();
        if list_size > MAX_HEADER_LIST {
            return Err(invalid_data("decoded header list larger than 64 KiB"));
        }
        Ok(())
    }

    /// Frames `encoded` as a HEADERS frame followed by CONTINUATION frames,
    /// none with more than `MAX_FRAME_PAYLOAD` payload bytes.
    fn emit_block(&mut self, open: OpenBlock) {
        let mut rest = &self.encoded[..];
        let mut first = true;
        loop {
            let prefix = if first { open.priority } else { None };
            let prefix_len = prefix.map_or(0, |p| p.len());
            let take = rest.len().min(MAX_FRAME_PAYLOAD - prefix_len);
            let (chunk, tail) = rest.split_at(take);

            let mut flags = 0;
            if tail.is_empty() {
                flags |= FLAG_END_HEADERS;
            }
            if first && open.end_stream {
                flags |= FLAG_END_STREAM;
            }
            if prefix.is_some() {
                flags |= FLAG_PRIORITY;
            }
            let kind = if first {
                TYPE_HEADERS
            } else {
                TYPE_CONTINUATION
            };
            let len = prefix_len + take;
            // `len` <= 16384, so its top byte is always zero.
            self.out
                .extend_from_slice(&[0, (len >> 8) as u8, len as u8, kind, flags]);
            self.out.extend_from_slice(&open.stream_id.to_be_bytes());
            if let Some(priority) = prefix {
                self.out.extend_from_slice(&priority);
            }
            self.out.extend_from_slice(chunk);

            rest = tail;
            first = false;
            if rest.is_empty() {
                break;
            }
        }
    }
}

/// Appends a "literal header field without indexing, new name" (RFC 7541
/// section 6.2.2): a zero octet, then name and value as plain strings.
fn encode_literal(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.push(0x00);
    encode_string(dst, name);
    encode_string(dst, value);
}

/// Appends a string literal without Huffman coding (RFC 7541 section 5.2):
/// its length as a 7-bit-prefix integer with the H bit clear, then the bytes.
fn encode_string(dst: &mut Vec<u8>, s: &[u8]) {
    encode_int7(dst, s.len());
    dst.extend_from_slice(s);
}

/// Appends `value` as an HPACK integer with a 7-bit prefix (RFC 7541 section
/// 5.1), the prefix octet's top bit clear.
fn encode_int7(dst: &mut Vec<u8>, value: usize) {
    const PREFIX_MAX: usize = 0x7f;
    if value < PREFIX_MAX {
        dst.push(value as u8);
        return;
    }
    dst.push(PREFIX_MAX as u8);
    let mut rest = value - PREFIX_MAX;
    while rest >= 0x80 {
        dst.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    dst.push(rest as u8);
}

fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int7(value: usize) -> Vec<u8> {
        let mut out = Vec::new();
        encode_int7(&mut out, value);
        out
    }

    #[test]
    fn integers_use_a_7_bit_prefix() {
        assert_eq!(int7(0), [0x00]);
        assert_eq!(int7(126), [0x7e]);
        // The prefix is full at 127: a zero continuation octet follows.
        assert_eq!(int7(127), [0x7f, 0x00]);
        assert_eq!(int7(128), [0x7f, 0x01]);
        // 300 - 127 = 173 = 0b1_0101101: low 7 bits with the continuation bit, then 1.
        assert_eq!(int7(300), [0x7f, 0xad, 0x01]);
        // 16384 - 127 = 16257 = 1 + 127 * 128.
        assert_eq!(int7(16_384), [0x7f, 0x81, 0x7f]);
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn output_stays_bounded_when_small_input_expands() {
        // One block puts a 3000-byte field in the client's table; 300 blocks
        // of 20 one-byte references follow, each decoding to ~63 KB.
        let mut input = PREFACE.to_vec();
        let mut block = vec![0x40, 5];
        block.extend_from_slice(b"x-big");
        encode_int7(&mut block, 3000);
        block.extend_from_slice(&[b'v'; 3000]);
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        for i in 0..300 {
            input.extend(frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS,
                3 + 2 * i,
                &[0xbe; 20],
            ));
        }
        assert!(input.len() < 16 * 1024);

        let mut rewriter = Rewriter::new();
        let (mut pos, mut total) = (0, 0);
        while pos < input.len() {
            pos += rewriter.feed(&input[pos..]).expect("valid input");
            // At most one rewritten block beyond the high-water mark.
            let bound = OUT_HIGH_WATER + MAX_HEADER_LIST + 5 * FRAME_HEADER_LEN;
            assert!(
                rewriter.out.len() <= bound,
                "{} bytes waiting",
                rewriter.out.len()
            );
            total += rewriter.out.len();
            rewriter.out.clear();
        }
        assert!(total > 300 * 60_000, "{total}");
    }
}
