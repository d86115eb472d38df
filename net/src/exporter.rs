//! The TLS exporter of a QUIC connection: the 32 bytes every Natter
//! binding signs (see [`natter_proto::binding`]). TLS over TCP computes its
//! own at the handshake ([`crate::TlsHandle::exporter`]).

use crate::NetError;

/// A QUIC connection's TLS exporter value (see [`natter_proto::binding`]).
pub fn quic_exporter(
    conn: &quinn::Connection,
) -> Result<natter_proto::binding::Exporter, NetError> {
    let mut out = [0u8; natter_proto::binding::EXPORTER_LEN];
    conn.export_keying_material(&mut out, natter_proto::binding::EXPORTER_LABEL, b"")
        .map_err(|_| NetError::NoExporter)?;
    Ok(out)
}
