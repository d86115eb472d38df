//! Envelope frames on QUIC streams, decoded with
//! [`natter_proto::frame::FrameDecoder`] (bounded to two maximum frames).

use bytes::Bytes;
use natter_proto::frame::{self, FrameDecoder};
use natter_proto::messages::Envelope;
use quinn::{RecvStream, SendStream};

use crate::NetError;

/// Most received chunks (each up to a packet's payload) taken at a time.
const READ_CHUNKS: usize = 16;

/// The receiving half of a framed stream. It holds no read buffer of its
/// own (it takes quinn's received chunks as they are), so an idle stream
/// costs only the decoder's partial frame: a supernode holds thousands.
#[derive(Debug)]
pub struct FramedRecv {
    stream: RecvStream,
    decoder: FrameDecoder,
    failed: bool,
}

impl FramedRecv {
    /// Wraps `stream`, refusing frames over [`frame::MAX_FRAME_LEN`].
    pub fn new(stream: RecvStream) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::default(),
            failed: false,
        }
    }

    /// The next envelope, or `None` when the peer finished the stream cleanly
    /// between frames. Any error (oversized, truncated or undecodable frame,
    /// transport failure) is final: the caller should close the connection.
    /// Cancel-safe: no data is lost if the future is dropped.
    pub async fn next(&mut self) -> Result<Option<Envelope>, NetError> {
        if self.failed {
            return Err(NetError::Truncated);
        }
        let result = self.next_inner().await;
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    async fn next_inner(&mut self) -> Result<Option<Envelope>, NetError> {
        loop {
            if let Some(frame) = self.decoder.poll_frame() {
                return Ok(Some(frame?));
            }
            // Cancel-safe, like `read`: chunks are handed out whole or not
            // at all; several at a time, as `read` copied them.
            let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
            match self.stream.read_chunks(&mut chunks).await? {
                None if self.decoder.buffered() == 0 => return Ok(None),
                None => return Err(NetError::Truncated),
                Some(n) => {
                    for chunk in chunks.iter().take(n) {
                        self.decoder.handle_data(chunk)?;
                    }
                }
            }
        }
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut RecvStream {
        &mut self.stream
    }
}

/// Writes `envelope` as one frame.
pub async fn write_envelope(stream: &mut SendStream, envelope: &Envelope) -> Result<(), NetError> {
    let bytes = frame::to_frame(envelope)?;
    stream.write_all(&bytes).await?;
    Ok(())
}

/// The sending half of a framed stream.
#[derive(Debug)]
pub struct FramedSend {
    stream: SendStream,
}

impl FramedSend {
    /// Wraps `stream`.
    pub fn new(stream: SendStream) -> Self {
        Self { stream }
    }

    /// Writes one envelope.
    pub async fn send(&mut self, envelope: &Envelope) -> Result<(), NetError> {
        write_envelope(&mut self.stream, envelope).await
    }

    /// Finishes the stream and waits (at most `timeout`) until the peer has
    /// acknowledged everything written, so a following connection close does
    /// not discard the last frames.
    pub async fn finish(&mut self, timeout: std::time::Duration) -> Result<(), NetError> {
        self.stream.finish()?;
        let _ = tokio::time::timeout(timeout, self.stream.stopped()).await;
        Ok(())
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut SendStream {
        &mut self.stream
    }
}
