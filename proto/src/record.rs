//! Records on a TLS-over-TCP connection, the firewall fallback used where
//! UDP is blocked (docs/PROTOCOL.md, section 10).
//!
//! A QUIC connection carries envelopes on streams and closes with a code;
//! a TCP connection has one byte stream, so every unit on it is a typed,
//! length-prefixed record:
//!
//! ```text
//! record := kind (u8) || length (u32, big-endian) || body (length bytes)
//! kind 0x01 ENVELOPE  body: one Envelope (protobuf), 1..=MAX_FRAME_LEN bytes
//! kind 0x02 DATAGRAM  body: one datagram exactly as it would travel over
//!                     UDP (SoM media, relay bind), 1..=MAX_DATAGRAM_LEN bytes
//! kind 0x03 CLOSE     body: code (u32, big-endian) || reason (UTF-8),
//!                     4..=4+MAX_REASON_LEN bytes; the last record sent
//! kind 0x04 KEEPALIVE body: empty; sent after a second without other records
//!                     (QUIC's PING), so a silent peer is noticed
//! ```
//!
//! [`RecordDecoder`] is sans-IO and total: any byte string yields records or
//! one error after which the connection must be closed, and it never buffers
//! more than one maximum record plus one read.

use crate::frame::{FrameError, MAX_FRAME_LEN, decode_envelope};
use crate::messages::Envelope;

/// Size of the record header (kind and length).
pub const HEADER_LEN: usize = 5;
/// Longest datagram carried in a record (a UDP datagram on a 1500-byte path).
pub const MAX_DATAGRAM_LEN: usize = 1472;
/// Longest close reason, in bytes.
pub const MAX_REASON_LEN: usize = 123;

/// Record kinds.
pub const KIND_ENVELOPE: u8 = 0x01;
pub const KIND_DATAGRAM: u8 = 0x02;
pub const KIND_CLOSE: u8 = 0x03;
pub const KIND_KEEPALIVE: u8 = 0x04;

/// One record.
// The envelope variant is large (version 2 grew `Envelope`); records are
// decoded one at a time and moved rarely, so boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A signaling message, as one frame on a QUIC stream would carry it.
    Envelope(Envelope),
    /// A datagram, as one UDP datagram would carry it.
    Datagram(Vec<u8>),
    /// The sender closes the connection with an application code (the same
    /// codes QUIC's CONNECTION_CLOSE carries) and a reason.
    Close { code: u32, reason: String },
    /// Nothing: keeps an idle connection (and middleboxes) alive.
    Keepalive,
}

/// Why a record could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("unknown record kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("record of kind 0x{kind:02x} has length {len}, allowed {min}..={max}")]
    BadLength {
        kind: u8,
        len: usize,
        min: usize,
        max: usize,
    },
    #[error("close reason is not UTF-8")]
    BadReason,
    #[error(transparent)]
    Envelope(#[from] FrameError),
    #[error("decoder buffer full: {buffered} bytes unread")]
    BufferFull { buffered: usize },
}

fn limits(kind: u8) -> Result<(usize, usize), RecordError> {
    match kind {
        KIND_ENVELOPE => Ok((1, MAX_FRAME_LEN)),
        KIND_DATAGRAM => Ok((1, MAX_DATAGRAM_LEN)),
        KIND_CLOSE => Ok((4, 4 + MAX_REASON_LEN)),
        KIND_KEEPALIVE => Ok((0, 0)),
        other => Err(RecordError::UnknownKind(other)),
    }
}

fn check_len(kind: u8, len: usize) -> Result<(), RecordError> {
    let (min, max) = limits(kind)?;
    if (min..=max).contains(&len) {
        Ok(())
    } else {
        Err(RecordError::BadLength {
            kind,
            len,
            min,
            max,
        })
    }
}

fn push_header(kind: u8, len: usize, out: &mut Vec<u8>) -> Result<(), RecordError> {
    check_len(kind, len)?;
    out.reserve(HEADER_LEN + len);
    out.push(kind);
    // `check_len` bounds `len` far below u32::MAX.
    out.extend_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Appends an ENVELOPE record to `out`.
pub fn encode_envelope(envelope: &Envelope, out: &mut Vec<u8>) -> Result<(), RecordError> {
    let mut frame = Vec::new();
    crate::frame::encode_frame(envelope, &mut frame)?;
    let body = frame
        .get(crate::frame::LENGTH_PREFIX_LEN..)
        .unwrap_or_default();
    push_header(KIND_ENVELOPE, body.len(), out)?;
    out.extend_from_slice(body);
    Ok(())
}

/// Appends a DATAGRAM record to `out`.
pub fn encode_datagram(datagram: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
    push_header(KIND_DATAGRAM, datagram.len(), out)?;
    out.extend_from_slice(datagram);
    Ok(())
}

/// Appends a CLOSE record to `out`; a longer reason is cut at a character
/// boundary to [`MAX_REASON_LEN`] bytes.
pub fn encode_close(code: u32, reason: &str, out: &mut Vec<u8>) {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = reason.get(..end).unwrap_or_default();
    out.push(KIND_CLOSE);
    out.extend_from_slice(&((4 + reason.len()) as u32).to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
}

/// Encodes `record` into a fresh buffer.
pub fn to_bytes(record: &Record) -> Result<Vec<u8>, RecordError> {
    let mut out = Vec::new();
    match record {
        Record::Envelope(e) => encode_envelope(e, &mut out)?,
        Record::Datagram(d) => encode_datagram(d, &mut out)?,
        Record::Close { code, reason } => encode_close(*code, reason, &mut out),
        Record::Keepalive => push_header(KIND_KEEPALIVE, 0, &mut out)?,
    }
    Ok(out)
}

fn decode_body(kind: u8, body: &[u8]) -> Result<Record, RecordError> {
    match kind {
        KIND_ENVELOPE => Ok(Record::Envelope(decode_envelope(body)?)),
        KIND_DATAGRAM => Ok(Record::Datagram(body.to_vec())),
        KIND_KEEPALIVE => Ok(Record::Keepalive),
        _ => {
            let (code, reason) = body.split_at_checked(4).ok_or(RecordError::BadLength {
                kind,
                len: body.len(),
                min: 4,
                max: 4 + MAX_REASON_LEN,
            })?;
            let code = u32::from_be_bytes(code.try_into().unwrap_or([0; 4]));
            let reason = std::str::from_utf8(reason).map_err(|_| RecordError::BadReason)?;
            Ok(Record::Close {
                code,
                reason: reason.to_owned(),
            })
        }
    }
}

/// Incremental decoder of a stream of records.
#[derive(Debug, Default)]
pub struct RecordDecoder {
    buf: Vec<u8>,
    failed: bool,
}

impl RecordDecoder {
    /// The most bytes the decoder accepts unread: one maximum record and one read.
    pub const CAPACITY: usize = 2 * (HEADER_LEN + MAX_FRAME_LEN);

    /// Buffers bytes read from the connection. Fails when the caller has not
    /// drained [`Self::poll_record`] and the buffer would exceed [`Self::CAPACITY`].
    pub fn handle_data(&mut self, data: &[u8]) -> Result<(), RecordError> {
        if self.buf.len() + data.len() > Self::CAPACITY {
            self.failed = true;
            return Err(RecordError::BufferFull {
                buffered: self.buf.len() + data.len(),
            });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete record, if one is buffered. After an error the
    /// stream is out of sync: every later call returns `None`.
    pub fn poll_record(&mut self) -> Option<Result<Record, RecordError>> {
        if self.failed {
            return None;
        }
        let header: [u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        let kind = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if let Err(e) = check_len(kind, len) {
            self.failed = true;
            return Some(Err(e));
        }
        let end = HEADER_LEN + len;
        let body = self.buf.get(HEADER_LEN..end)?;
        let result = decode_body(kind, body);
        self.buf.drain(..end);
        if result.is_err() {
            self.failed = true;
        }
        Some(result)
    }

    /// Bytes buffered but not yet returned as records.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Ping, envelope::Body};

    fn ping(id: u64) -> Envelope {
        Envelope::new(id, Body::Ping(Ping { nonce: id }))
    }

    #[test]
    fn records_round_trip_byte_by_byte() {
        let records = vec![
            Record::Envelope(ping(7)),
            Record::Datagram(vec![0xAB; 61]),
            Record::Keepalive,
            Record::Close {
                code: 3,
                reason: "refused".into(),
            },
        ];
        let mut bytes = Vec::new();
        for r in &records {
            bytes.extend(to_bytes(r).unwrap());
        }
        let mut decoder = RecordDecoder::default();
        let mut out = Vec::new();
        for b in &bytes {
            decoder.handle_data(std::slice::from_ref(b)).unwrap();
            while let Some(r) = decoder.poll_record() {
                out.push(r.unwrap());
            }
        }
        assert_eq!(out, records);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn a_datagram_record_is_its_header_and_the_datagram() {
        let bytes = to_bytes(&Record::Datagram(vec![1, 2, 3])).unwrap();
        assert_eq!(bytes, [0x02, 0, 0, 0, 3, 1, 2, 3]);
    }

    #[test]
    fn bad_headers_are_refused_as_soon_as_they_arrive() {
        for header in [
            [0x05, 0, 0, 0, 1],
            [0x04, 0, 0, 0, 1],
            [0x02, 0, 0, 0, 0],
            [0x02, 0, 0, 0x05, 0xC1],
            [0x01, 0, 1, 0, 1],
            [0x03, 0, 0, 0, 3],
        ] {
            let mut decoder = RecordDecoder::default();
            decoder.handle_data(&header).unwrap();
            assert!(
                matches!(decoder.poll_record(), Some(Err(_))),
                "{header:?} accepted"
            );
            assert!(decoder.poll_record().is_none(), "out of sync stays failed");
        }
    }

    #[test]
    fn oversized_inputs_cannot_be_encoded() {
        assert!(to_bytes(&Record::Datagram(vec![0; MAX_DATAGRAM_LEN + 1])).is_err());
        assert!(to_bytes(&Record::Datagram(Vec::new())).is_err());
        let long = "é".repeat(100);
        let bytes = to_bytes(&Record::Close {
            code: 1,
            reason: long,
        })
        .unwrap();
        assert!(bytes.len() <= HEADER_LEN + 4 + MAX_REASON_LEN);
        let mut decoder = RecordDecoder::default();
        decoder.handle_data(&bytes).unwrap();
        assert!(matches!(
            decoder.poll_record(),
            Some(Ok(Record::Close { code: 1, .. }))
        ));
    }

    #[test]
    fn the_buffer_is_bounded() {
        let mut decoder = RecordDecoder::default();
        let chunk = vec![0x02; 4096];
        let mut fed = 0;
        while decoder.handle_data(&chunk).is_ok() {
            fed += chunk.len();
            assert!(fed <= RecordDecoder::CAPACITY);
            // Never drained: the caller misbehaves.
        }
    }
}
