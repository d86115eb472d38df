//! A control connection over either transport: QUIC (one bidirectional
//! stream of envelope frames) or TLS over TCP (envelope records). Session
//! code written against [`ControlConn`], [`EnvelopeRecv`] and
//! [`EnvelopeSend`] runs unchanged on both.

use std::net::SocketAddr;
use std::time::Duration;

use natter_proto::messages::Envelope;
use natter_proto::record::Record;
use quinn::VarInt;

use crate::tcp::{RecordReader, TlsHandle};
use crate::{FramedRecv, FramedSend, NetError};

/// The transport a connection runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS over TCP (the firewall fallback).
    Tls,
}

impl Transport {
    /// `quic` or `tcp`, as logs, reports and the host cache spell it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tls => "tcp",
        }
    }
}

/// A connection, for closing it and asking who is at the other end.
#[derive(Debug, Clone)]
pub enum ControlConn {
    Quic(quinn::Connection),
    Tls(TlsHandle),
}

impl ControlConn {
    /// The transport.
    pub fn transport(&self) -> Transport {
        match self {
            ControlConn::Quic(_) => Transport::Quic,
            ControlConn::Tls(_) => Transport::Tls,
        }
    }

    /// This connection's TLS exporter value, the same at both ends and
    /// different on every other connection (see [`natter_proto::binding`]).
    pub fn exporter(&self) -> Result<natter_proto::binding::Exporter, NetError> {
        match self {
            ControlConn::Quic(c) => crate::exporter::quic_exporter(c),
            ControlConn::Tls(h) => h.exporter(),
        }
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        match self {
            ControlConn::Quic(c) => c.remote_address(),
            ControlConn::Tls(h) => h.remote_address(),
        }
    }

    /// Closes with an application code (same codes on both transports).
    pub fn close(&self, code: u32, reason: &[u8]) {
        match self {
            ControlConn::Quic(c) => c.close(VarInt::from_u32(code), reason),
            ControlConn::Tls(h) => h.close(code, &String::from_utf8_lossy(reason)),
        }
    }

    /// Whether the connection is closed (by either side).
    pub fn is_closed(&self) -> bool {
        match self {
            ControlConn::Quic(c) => c.close_reason().is_some(),
            ControlConn::Tls(h) => h.close_reason().is_some(),
        }
    }

    /// Why the connection closed (the peer's or our close reason, or the
    /// failure), once it has; `None` while open.
    pub fn close_reason(&self) -> Option<String> {
        match self {
            ControlConn::Quic(c) => c.close_reason().map(|e| match e {
                quinn::ConnectionError::ApplicationClosed(close) => {
                    String::from_utf8_lossy(&close.reason).into_owned()
                }
                quinn::ConnectionError::LocallyClosed => "closed".to_owned(),
                other => other.to_string(),
            }),
            ControlConn::Tls(h) => h.close_reason().map(|(_, reason)| reason),
        }
    }

    /// Resolves when the connection is closed.
    pub async fn closed(&self) {
        match self {
            ControlConn::Quic(c) => {
                c.closed().await;
            }
            ControlConn::Tls(h) => h.closed().await,
        }
    }
}

/// Receives envelopes.
#[derive(Debug)]
pub enum EnvelopeRecv {
    Quic(FramedRecv),
    Tls(RecordReader),
}

impl EnvelopeRecv {
    /// The next envelope; `None` when the peer ended the stream (or closed
    /// the TLS connection) cleanly. Errors are final. On TLS, DATAGRAM
    /// records (not expected on a control connection) are skipped.
    pub async fn next(&mut self) -> Result<Option<Envelope>, NetError> {
        match self {
            EnvelopeRecv::Quic(r) => r.next().await,
            EnvelopeRecv::Tls(r) => loop {
                match r.next().await? {
                    Some(Record::Envelope(e)) => return Ok(Some(e)),
                    Some(_) => continue,
                    None => return Ok(None),
                }
            },
        }
    }

    /// Like [`Self::next`], but a record other than an envelope on TLS is
    /// an error ([`NetError::UnexpectedRecord`]), for connections that
    /// carry envelopes only.
    pub async fn next_strict(&mut self) -> Result<Option<Envelope>, NetError> {
        match self {
            EnvelopeRecv::Quic(r) => r.next().await,
            EnvelopeRecv::Tls(r) => match r.next().await? {
                Some(Record::Envelope(e)) => Ok(Some(e)),
                Some(other) => Err(NetError::UnexpectedRecord(match other {
                    Record::Datagram(_) => "datagram",
                    Record::Close { .. } => "close",
                    Record::Keepalive => "keepalive",
                    Record::Envelope(_) => "envelope",
                })),
                None => Ok(None),
            },
        }
    }
}

/// Sends envelopes.
#[derive(Debug)]
pub enum EnvelopeSend {
    Quic(FramedSend),
    Tls(TlsHandle),
}

impl EnvelopeSend {
    /// Writes one envelope.
    pub async fn send(&mut self, envelope: &Envelope) -> Result<(), NetError> {
        match self {
            EnvelopeSend::Quic(s) => s.send(envelope).await,
            EnvelopeSend::Tls(h) => h.send_envelope(envelope).await,
        }
    }

    /// Ends the sending side so a following close does not discard what was
    /// written: QUIC finishes the stream and waits (at most `timeout`) for
    /// the acknowledgement; on TLS every record is already flushed in order
    /// and the close that follows is written after it.
    pub async fn finish(&mut self, timeout: Duration) -> Result<(), NetError> {
        match self {
            EnvelopeSend::Quic(s) => s.finish(timeout).await,
            EnvelopeSend::Tls(_) => Ok(()),
        }
    }
}
