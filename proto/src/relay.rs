//! Binding a client's UDP address to a relay allocation on a supernode.
//!
//! A relay forwards SoM datagrams between the two parties of one
//! authenticated call without reading them (they are sealed end to end). It
//! learns each party's address from a **bind** datagram carrying that party's
//! 16-byte token (handed out in `RelayAllocated` over the authenticated,
//! encrypted supernode session, and to the peer inside a relay candidate):
//!
//! ```text
//! bind  = SoM header (function 0x03 Connect, random id) || "NRLY" || token (16)
//! reply = SoM header (echoed)                           || "NRLY" || token (16) || status (1)
//! status: 0 bound, 1 unknown or expired token, 2 over quota
//! ```
//!
//! Every other datagram reaching the relay is forwarded only if it comes from
//! an address bound to an allocation, and only to that allocation's other
//! party; anything else is dropped and counted. A party re-binds whenever its
//! address may have changed (a new NAT mapping). The token is a capability:
//! someone who sniffs it can redirect that relay leg (denial of service) but
//! can neither read nor forge media.

use crate::som::{Function, HEADER_LEN, Header};

/// Marks a relay bind (after the SoM header).
pub const MAGIC: &[u8; 4] = b"NRLY";
/// Bytes of a relay token.
pub const TOKEN_LEN: usize = 16;
/// Bytes of a bind datagram.
pub const BIND_LEN: usize = HEADER_LEN + 4 + TOKEN_LEN;
/// Bytes of a bind reply.
pub const REPLY_LEN: usize = BIND_LEN + 1;

/// What the relay answers a bind with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BindStatus {
    Bound = 0,
    UnknownToken = 1,
    OverQuota = 2,
}

/// Why bytes are not a relay bind or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("not a relay bind datagram")]
    NotBind,
    #[error("unknown bind status {0}")]
    BadStatus(u8),
}

/// A bind datagram for `token`.
pub fn encode_bind(token: &[u8; TOKEN_LEN], msg_id: u16, random: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(BIND_LEN);
    out.extend_from_slice(&Header::new(msg_id, Function::Connect, random).to_bytes());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(token);
    out
}

/// The token of a bind datagram.
pub fn decode_bind(datagram: &[u8]) -> Result<[u8; TOKEN_LEN], RelayError> {
    if datagram.len() != BIND_LEN {
        return Err(RelayError::NotBind);
    }
    parse(datagram)
}

fn parse(datagram: &[u8]) -> Result<[u8; TOKEN_LEN], RelayError> {
    let (header, rest) = Header::decode(datagram).map_err(|_| RelayError::NotBind)?;
    if header.function != Function::Connect || rest.get(..4) != Some(MAGIC.as_slice()) {
        return Err(RelayError::NotBind);
    }
    rest.get(4..4 + TOKEN_LEN)
        .and_then(|t| t.try_into().ok())
        .ok_or(RelayError::NotBind)
}

/// The relay's reply to a bind datagram.
pub fn encode_bind_reply(bind: &[u8], status: BindStatus) -> Vec<u8> {
    let mut out = bind.to_vec();
    out.push(status as u8);
    out
}

/// The token and status of a bind reply.
pub fn decode_bind_reply(datagram: &[u8]) -> Result<([u8; TOKEN_LEN], BindStatus), RelayError> {
    if datagram.len() != REPLY_LEN {
        return Err(RelayError::NotBind);
    }
    let token = parse(datagram)?;
    let status = match datagram[BIND_LEN] {
        0 => BindStatus::Bound,
        1 => BindStatus::UnknownToken,
        2 => BindStatus::OverQuota,
        other => return Err(RelayError::BadStatus(other)),
    };
    Ok((token, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_and_replies_round_trip() {
        let token = [0x5a; TOKEN_LEN];
        let bind = encode_bind(&token, 0x1234, 5);
        assert_eq!(bind.len(), BIND_LEN);
        assert_eq!(decode_bind(&bind), Ok(token));
        let reply = encode_bind_reply(&bind, BindStatus::OverQuota);
        assert_eq!(
            decode_bind_reply(&reply),
            Ok((token, BindStatus::OverQuota))
        );
        assert_eq!(decode_bind(&reply), Err(RelayError::NotBind));
    }

    #[test]
    fn sealed_datagrams_are_not_binds() {
        // A Data datagram of bind length is not a bind.
        let mut d = encode_bind(&[1; TOKEN_LEN], 1, 0);
        d[2] = 0x0d;
        assert_eq!(decode_bind(&d), Err(RelayError::NotBind));
        for len in 0..40 {
            let _ = decode_bind(&vec![0x03; len]);
            let _ = decode_bind_reply(&vec![0x03; len]);
        }
    }
}
