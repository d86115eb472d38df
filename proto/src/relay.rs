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

use std::net::SocketAddr;

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

/// One side's leg on a relay allocation: where (the relay's UDP address, or
/// the supernode's TLS listener for a TCP leg) and the token it binds with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLeg {
    pub addr: SocketAddr,
    pub token: [u8; TOKEN_LEN],
}

/// Interval between bind attempts until the relay answers.
pub const BIND_RETRY_MS: u64 = 200;
/// Bind attempts before giving up on a relay leg.
pub const BIND_TRIES: u32 = 25;
/// Re-bind a bound leg this often (NAT mappings can change).
pub const REBIND_MS: u64 = 15_000;
/// Most legs bound at once.
pub const MAX_BINDS: usize = 8;

#[derive(Debug, Clone)]
struct Binding {
    leg: RelayLeg,
    bound: bool,
    tries: u32,
    last_ms: Option<u64>,
}

/// Keeps one side bound on every UDP relay leg it knows (sans-IO): bind
/// datagrams every [`BIND_RETRY_MS`] until the relay confirms (at most
/// [`BIND_TRIES`]), then every [`REBIND_MS`]; a refusal stops the leg.
#[derive(Debug, Clone, Default)]
pub struct RelayBinds {
    legs: Vec<Binding>,
    msg_id: u16,
}

impl RelayBinds {
    /// Starts binding `leg` (ignored if known, or when [`MAX_BINDS`] are).
    pub fn add(&mut self, leg: RelayLeg) {
        if self.legs.iter().any(|b| b.leg == leg) || self.legs.len() >= MAX_BINDS {
            return;
        }
        self.legs.push(Binding {
            leg,
            bound: false,
            tries: 0,
            last_ms: None,
        });
    }

    /// Bind datagrams due now, with their destination.
    pub fn poll(&mut self, now_ms: u64) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        for b in &mut self.legs {
            let interval = if b.bound { REBIND_MS } else { BIND_RETRY_MS };
            let due = b
                .last_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= interval);
            if due && (b.bound || b.tries < BIND_TRIES) {
                b.last_ms = Some(now_ms);
                b.tries += 1;
                self.msg_id = self.msg_id.wrapping_add(1);
                out.push((b.leg.addr, encode_bind(&b.leg.token, self.msg_id, 0)));
            }
        }
        out
    }

    /// When the next bind datagram falls due (`None`: none will).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.legs
            .iter()
            .filter(|b| b.bound || b.tries < BIND_TRIES)
            .map(|b| {
                let interval = if b.bound { REBIND_MS } else { BIND_RETRY_MS };
                b.last_ms.map_or(0, |t| t.saturating_add(interval))
            })
            .min()
    }

    /// Handles a datagram from `from` if it is a bind reply; returns whether it was.
    pub fn handle(&mut self, from: SocketAddr, datagram: &[u8]) -> bool {
        let Ok((token, status)) = decode_bind_reply(datagram) else {
            return false;
        };
        for b in &mut self.legs {
            if b.leg.addr == from && b.leg.token == token {
                b.bound = status == BindStatus::Bound;
                if !b.bound {
                    b.tries = BIND_TRIES; // refused: stop asking
                }
            }
        }
        true
    }

    /// Whether `addr` is a relay this side binds to.
    pub fn is_relay(&self, addr: SocketAddr) -> bool {
        self.legs.iter().any(|b| b.leg.addr == addr)
    }

    /// Whether the relay confirmed the bind of `leg`.
    pub fn is_bound(&self, leg: &RelayLeg) -> bool {
        self.legs.iter().any(|b| b.leg == *leg && b.bound)
    }
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
