//! Length-delimited framing of [`Envelope`]s on a byte stream (a QUIC stream
//! or a TLS connection).
//!
//! ```text
//! frame := length (u32, big-endian, 1..=MAX_FRAME_LEN) || Envelope (protobuf, `length` bytes)
//! ```
//!
//! [`FrameDecoder`] is sans-IO: feed it bytes with [`FrameDecoder::handle_data`],
//! then drain [`FrameDecoder::poll_frame`] until it returns `None`. A frame
//! whose declared length exceeds the limit is reported as soon as its 4-byte
//! prefix arrives, so a peer can never make the decoder buffer more than one
//! maximum-size frame plus one read.

use prost::Message;

use crate::messages::{Envelope, wire_version};

/// Default upper bound on one envelope's encoded length (64 KiB).
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Size of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("malformed envelope: {0}")]
    Malformed(#[from] prost::DecodeError),
    #[error("unsupported protocol version {0} (this side speaks {ours})", ours = wire_version())]
    UnsupportedVersion(u32),
    #[error("envelope has no body or an unknown message type")]
    MissingBody,
    #[error("decoder buffer full: {buffered} bytes unread")]
    BufferFull { buffered: usize },
}

/// The length `envelope` would have in a frame (without the prefix), or
/// why it cannot be framed: the check [`encode_frame`] makes, without
/// encoding.
pub fn frame_len(envelope: &Envelope) -> Result<usize, FrameError> {
    let len = envelope.encoded_len();
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    Ok(len)
}

/// Appends `envelope` as one frame to `out`.
pub fn encode_frame(envelope: &Envelope, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = frame_len(envelope)?;
    out.reserve(LENGTH_PREFIX_LEN + len);
    // `len <= MAX_FRAME_LEN` so it fits in a u32.
    out.extend_from_slice(&(len as u32).to_be_bytes());
    envelope
        .encode(out)
        .map_err(|_| FrameError::TooLarge { len, max: len })?;
    Ok(())
}

/// Encodes `envelope` as one frame into a fresh buffer.
pub fn to_frame(envelope: &Envelope) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_frame(envelope, &mut out)?;
    Ok(out)
}

/// Decodes and validates one envelope (the bytes after the length prefix).
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, FrameError> {
    if bytes.is_empty() {
        return Err(FrameError::Empty);
    }
    if bytes.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let envelope = Envelope::decode(bytes)?;
    if envelope.version != wire_version() {
        return Err(FrameError::UnsupportedVersion(envelope.version));
    }
    if envelope.body.is_none() {
        return Err(FrameError::MissingBody);
    }
    Ok(envelope)
}

/// Bytes of buffer a decoder keeps between frames.
const IDLE_BUFFER: usize = 1024;

/// Incremental decoder of a stream of frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_frame: usize,
    failed: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame` (at most [`MAX_FRAME_LEN`]).
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_frame: max_frame.min(MAX_FRAME_LEN),
            failed: false,
        }
    }

    /// The most bytes the decoder accepts unread: one maximum frame and one read.
    pub fn capacity(&self) -> usize {
        2 * (LENGTH_PREFIX_LEN + self.max_frame)
    }

    /// Buffers bytes read from the stream. Fails when the caller has not
    /// drained [`Self::poll_frame`] and the buffer would exceed [`Self::capacity`].
    pub fn handle_data(&mut self, data: &[u8]) -> Result<(), FrameError> {
        if self.buf.len() + data.len() > self.capacity() {
            return Err(FrameError::BufferFull {
                buffered: self.buf.len() + data.len(),
            });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete frame, if one is buffered. After an error the stream
    /// is out of sync: every later call returns `None` and the connection
    /// should be closed.
    pub fn poll_frame(&mut self) -> Option<Result<Envelope, FrameError>> {
        if self.failed {
            return None;
        }
        let prefix: [u8; LENGTH_PREFIX_LEN] = self.buf.get(..LENGTH_PREFIX_LEN)?.try_into().ok()?;
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_frame {
            self.failed = true;
            return Some(Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            }));
        }
        let end = LENGTH_PREFIX_LEN + len;
        if self.buf.len() < end {
            return None;
        }
        let result = decode_envelope(&self.buf[LENGTH_PREFIX_LEN..end]);
        self.buf.drain(..end);
        if self.buf.is_empty() {
            // An idle stream keeps a small buffer, not its largest frame:
            // a supernode holds thousands of mostly idle streams.
            self.buf.shrink_to(IDLE_BUFFER);
        }
        if result.is_err() {
            self.failed = true;
        }
        Some(result)
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}
