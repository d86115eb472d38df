//! Binding a client's UDP address to a relay allocation on a supernode.
//!
//! A relay forwards SoM datagrams between the two parties of one
//! authenticated call without reading them (they are sealed end to end). It
//! learns each party's address from a **bind** datagram carrying that party's
//! 16-byte token (handed out in `RelayAllocated` over the authenticated,
//! encrypted supernode session, to that party only) and a **cookie** proving
//! that the sender receives at the address it sends from:
//!
//! ```text
//! bind  = SoM header (0x03 Connect, random id) || "NRLY" || 0x80   || token (16) || cookie (16)
//! reply = SoM header (echoed)                  || "NRLY" || status || token (16) || cookie (16)
//! status: 0 bound, 1 unknown or expired token, 2 over quota,
//!         3 cookie (the source did not echo a valid cookie: bind again with this one)
//! ```
//!
//! The cookie is [`cookie`]: HMAC-SHA256 under a secret of the relay over the
//! source address, the token and a time bucket, cut to 16 bytes; the relay
//! keeps no state per source. A first bind carries a zero cookie and gets
//! status 3 with the cookie for its source; only a bind echoing a valid
//! cookie binds. Every reply carries the cookie for its destination (the
//! bind's source) and is exactly as long as the bind: the relay never sends
//! more bytes toward an address than it received from it before the address
//! proved it receives (amplification 1.0), and never forwards media toward
//! an address that did not.
//!
//! Every other datagram reaching the relay is forwarded only if it comes from
//! an address bound to an allocation, and only to that allocation's other
//! party; anything else is dropped and counted. A party re-binds whenever its
//! address may have changed (a new NAT mapping). The token is a capability:
//! someone who sniffs it can redirect that relay leg to an address they
//! receive at (denial of service) but can neither read nor forge media.

use std::net::{IpAddr, SocketAddr};

use hkdf::hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::som::{Function, HEADER_LEN, Header};

/// Marks a relay bind (after the SoM header).
pub const MAGIC: &[u8; 4] = b"NRLY";
/// The byte after [`MAGIC`] in a bind (a reply has its status there).
pub const BIND_KIND: u8 = 0x80;
/// Bytes of a relay token.
pub const TOKEN_LEN: usize = 16;
/// Bytes of a bind cookie.
pub const COOKIE_LEN: usize = 16;
/// Bytes of a bind datagram.
pub const BIND_LEN: usize = HEADER_LEN + 4 + 1 + TOKEN_LEN + COOKIE_LEN;
/// Bytes of a bind reply: the same as the bind (amplification 1.0).
pub const REPLY_LEN: usize = BIND_LEN;
/// Seconds of one cookie time bucket; a cookie is valid in its bucket and
/// the next one (30 to 60 s).
pub const COOKIE_BUCKET_SECS: u64 = 30;
/// The domain separation of [`cookie`].
pub const COOKIE_LABEL: &[u8] = b"NATTER-RELAY-COOKIE-V2";

/// A relay token.
pub type Token = [u8; TOKEN_LEN];
/// A bind cookie.
pub type Cookie = [u8; COOKIE_LEN];

/// What the relay answers a bind with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BindStatus {
    Bound = 0,
    UnknownToken = 1,
    OverQuota = 2,
    /// The bind did not echo a valid cookie for its source address: nothing
    /// changed; the reply carries the cookie to bind with.
    Cookie = 3,
}

/// Why bytes are not a relay bind or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("not a relay bind datagram")]
    NotBind,
    #[error("unknown bind status {0}")]
    BadStatus(u8),
}

/// A decoded bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind {
    pub token: Token,
    pub cookie: Cookie,
}

/// A decoded bind reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindReply {
    pub token: Token,
    pub status: BindStatus,
    /// The cookie for the address the reply was sent to.
    pub cookie: Cookie,
}

/// The cookie of a bind from `source` with `token` in time bucket `bucket`
/// (seconds since the relay started / [`COOKIE_BUCKET_SECS`]):
/// HMAC-SHA256(`secret`, [`COOKIE_LABEL`] || bucket (8) || token (16) ||
/// source IP (16, IPv4 as IPv4-mapped IPv6) || source port (2)), first 16 bytes.
pub fn cookie(secret: &[u8; 32], bucket: u64, token: &Token, source: SocketAddr) -> Cookie {
    let ip = match source.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key size");
    mac.update(COOKIE_LABEL);
    mac.update(&bucket.to_be_bytes());
    mac.update(token);
    mac.update(&ip.octets());
    mac.update(&source.port().to_be_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; COOKIE_LEN];
    out.copy_from_slice(&full[..COOKIE_LEN]);
    out
}

/// A bind datagram for `token`, echoing `cookie` (zeros on a first bind).
pub fn encode_bind(token: &Token, cookie: &Cookie, msg_id: u16, random: u8) -> Vec<u8> {
    encode(
        Header::new(msg_id, Function::Connect, random).to_bytes(),
        BIND_KIND,
        token,
        cookie,
    )
}

/// The bind a TLS relay leg sends (its first record, and again to take the
/// side's forwarding back): the connection proves the address, so the
/// cookie is zeros.
pub fn encode_leg_bind(token: &Token, msg_id: u16) -> Vec<u8> {
    encode_bind(token, &[0; COOKIE_LEN], msg_id, 0)
}

fn encode(header: [u8; HEADER_LEN], kind: u8, token: &Token, cookie: &Cookie) -> Vec<u8> {
    let mut out = Vec::with_capacity(BIND_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(MAGIC);
    out.push(kind);
    out.extend_from_slice(token);
    out.extend_from_slice(cookie);
    out
}

/// The parts of a bind-shaped datagram: header, kind byte, token, cookie.
fn parse(datagram: &[u8]) -> Result<([u8; HEADER_LEN], u8, Token, Cookie), RelayError> {
    if datagram.len() != BIND_LEN {
        return Err(RelayError::NotBind);
    }
    let (header, rest) = Header::decode(datagram).map_err(|_| RelayError::NotBind)?;
    if header.function != Function::Connect || rest.get(..4) != Some(MAGIC.as_slice()) {
        return Err(RelayError::NotBind);
    }
    let kind = rest[4];
    let token = rest[5..5 + TOKEN_LEN]
        .try_into()
        .map_err(|_| RelayError::NotBind)?;
    let cookie = rest[5 + TOKEN_LEN..]
        .try_into()
        .map_err(|_| RelayError::NotBind)?;
    Ok((header.to_bytes(), kind, token, cookie))
}

/// The token and cookie of a bind datagram.
pub fn decode_bind(datagram: &[u8]) -> Result<Bind, RelayError> {
    match parse(datagram)? {
        (_, BIND_KIND, token, cookie) => Ok(Bind { token, cookie }),
        _ => Err(RelayError::NotBind),
    }
}

/// The relay's reply to the bind datagram `bind` (which must decode): its
/// header and token, `status`, and the cookie for the bind's source.
pub fn encode_bind_reply(bind: &[u8], status: BindStatus, cookie: &Cookie) -> Vec<u8> {
    let (header, token) = match parse(bind) {
        Ok((header, _, token, _)) => (header, token),
        Err(_) => ([0; HEADER_LEN], [0; TOKEN_LEN]),
    };
    encode(header, status as u8, &token, cookie)
}

/// The token, status and cookie of a bind reply.
pub fn decode_bind_reply(datagram: &[u8]) -> Result<BindReply, RelayError> {
    let (_, kind, token, cookie) = parse(datagram)?;
    let status = match kind {
        0 => BindStatus::Bound,
        1 => BindStatus::UnknownToken,
        2 => BindStatus::OverQuota,
        3 => BindStatus::Cookie,
        BIND_KIND => return Err(RelayError::NotBind),
        other => return Err(RelayError::BadStatus(other)),
    };
    Ok(BindReply {
        token,
        status,
        cookie,
    })
}

/// One side's leg on a relay allocation: where (the relay's UDP address, or
/// the supernode's TLS listener for a TCP leg) and the token it binds with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLeg {
    pub addr: SocketAddr,
    pub token: Token,
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
    /// The relay refused the token (unknown, over quota): never asked again.
    refused: bool,
    /// The last cookie the relay gave this side (zeros before the first).
    cookie: Cookie,
}

/// Keeps one side bound on every UDP relay leg it knows (sans-IO): bind
/// datagrams every [`BIND_RETRY_MS`] until the relay confirms (at most
/// [`BIND_TRIES`]), then every [`REBIND_MS`]; a refusal stops the leg. Each
/// bind echoes the last cookie the relay sent; a cookie reply (status 3)
/// brings a new one and makes the next bind due at once.
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
            refused: false,
            cookie: [0; COOKIE_LEN],
        });
    }

    /// Binds every leg again from now on, as a new one (with its cookie;
    /// refused legs stay refused): the relay forwards to a side's last
    /// bind, so a side whose TLS leg took the forwarding asks for it back
    /// over UDP this way.
    pub fn rebind_all(&mut self) {
        for b in self.legs.iter_mut().filter(|b| !b.refused) {
            b.bound = false;
            b.tries = 0;
            b.last_ms = None;
        }
    }

    /// Bind datagrams due now, with their destination.
    pub fn poll(&mut self, now_ms: u64) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        for b in &mut self.legs {
            let interval = if b.bound { REBIND_MS } else { BIND_RETRY_MS };
            let due = b
                .last_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= interval);
            if due && !b.refused && (b.bound || b.tries < BIND_TRIES) {
                b.last_ms = Some(now_ms);
                b.tries += 1;
                self.msg_id = self.msg_id.wrapping_add(1);
                out.push((
                    b.leg.addr,
                    encode_bind(&b.leg.token, &b.cookie, self.msg_id, 0),
                ));
            }
        }
        out
    }

    /// When the next bind datagram falls due (`None`: none will).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.legs
            .iter()
            .filter(|b| !b.refused && (b.bound || b.tries < BIND_TRIES))
            .map(|b| {
                let interval = if b.bound { REBIND_MS } else { BIND_RETRY_MS };
                b.last_ms.map_or(0, |t| t.saturating_add(interval))
            })
            .min()
    }

    /// Handles a datagram from `from` if it is a bind reply: `None` when it
    /// was not one, else whether it confirmed a bind of this side's (the
    /// relay answered over UDP: UDP to it works).
    pub fn handle(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<bool> {
        let Ok(reply) = decode_bind_reply(datagram) else {
            return None;
        };
        let mut confirmed = false;
        for b in &mut self.legs {
            if b.leg.addr != from || b.leg.token != reply.token {
                continue;
            }
            b.cookie = reply.cookie;
            match reply.status {
                BindStatus::Bound => {
                    b.bound = true;
                    confirmed = true;
                }
                // Not bound by this one (a bound side stays bound): bind
                // again now, with the cookie.
                BindStatus::Cookie => b.last_ms = None,
                BindStatus::UnknownToken | BindStatus::OverQuota => {
                    b.bound = false;
                    b.refused = true;
                }
            }
        }
        Some(confirmed)
    }

    /// Whether `addr` is a relay this side binds to.
    pub fn is_relay(&self, addr: SocketAddr) -> bool {
        self.legs.iter().any(|b| b.leg.addr == addr)
    }

    /// Whether a relay at `addr` confirmed a bind.
    pub fn is_bound_at(&self, addr: SocketAddr) -> bool {
        self.legs.iter().any(|b| b.leg.addr == addr && b.bound)
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
        let cookie = [0xc0; COOKIE_LEN];
        let bind = encode_bind(&token, &cookie, 0x1234, 5);
        assert_eq!(bind.len(), BIND_LEN);
        assert_eq!(decode_bind(&bind), Ok(Bind { token, cookie }));
        let fresh = [0x11; COOKIE_LEN];
        let reply = encode_bind_reply(&bind, BindStatus::Cookie, &fresh);
        assert_eq!(reply.len(), bind.len(), "amplification 1.0");
        assert_eq!(
            decode_bind_reply(&reply),
            Ok(BindReply {
                token,
                status: BindStatus::Cookie,
                cookie: fresh
            })
        );
        assert_eq!(reply[..HEADER_LEN], bind[..HEADER_LEN]);
        assert_eq!(decode_bind(&reply), Err(RelayError::NotBind));
        assert_eq!(decode_bind_reply(&bind), Err(RelayError::NotBind));
    }

    #[test]
    fn sealed_datagrams_are_not_binds() {
        // A Data datagram of bind length is not a bind.
        let mut d = encode_bind(&[1; TOKEN_LEN], &[0; COOKIE_LEN], 1, 0);
        d[2] = 0x0d;
        assert_eq!(decode_bind(&d), Err(RelayError::NotBind));
        for len in 0..60 {
            let _ = decode_bind(&vec![0x03; len]);
            let _ = decode_bind_reply(&vec![0x03; len]);
        }
    }

    #[test]
    fn cookies_depend_on_secret_bucket_token_and_source() {
        let a = SocketAddr::from(([192, 0, 2, 1], 4000));
        let c = cookie(&[1; 32], 7, &[2; TOKEN_LEN], a);
        assert_eq!(c, cookie(&[1; 32], 7, &[2; TOKEN_LEN], a));
        assert_ne!(c, cookie(&[9; 32], 7, &[2; TOKEN_LEN], a));
        assert_ne!(c, cookie(&[1; 32], 8, &[2; TOKEN_LEN], a));
        assert_ne!(c, cookie(&[1; 32], 7, &[3; TOKEN_LEN], a));
        let other_port = SocketAddr::from(([192, 0, 2, 1], 4001));
        assert_ne!(c, cookie(&[1; 32], 7, &[2; TOKEN_LEN], other_port));
        let other_ip = SocketAddr::from(([192, 0, 2, 2], 4000));
        assert_ne!(c, cookie(&[1; 32], 7, &[2; TOKEN_LEN], other_ip));
    }

    #[test]
    fn binds_echo_the_cookie_the_relay_sent() {
        let relay = SocketAddr::from(([198, 51, 100, 1], 3478));
        let leg = RelayLeg {
            addr: relay,
            token: [4; TOKEN_LEN],
        };
        let mut binds = RelayBinds::default();
        binds.add(leg);
        let first = binds.poll(0);
        assert_eq!(decode_bind(&first[0].1).unwrap().cookie, [0; COOKIE_LEN]);
        let cookie = [0x77; COOKIE_LEN];
        let reply = encode_bind_reply(&first[0].1, BindStatus::Cookie, &cookie);
        assert_eq!(binds.handle(relay, &reply), Some(false));
        assert!(!binds.is_bound(&leg));
        // Due at once, with the cookie.
        assert_eq!(binds.poll_timeout(), Some(0));
        let second = binds.poll(1);
        assert_eq!(decode_bind(&second[0].1).unwrap().cookie, cookie);
        let bound = encode_bind_reply(&second[0].1, BindStatus::Bound, &cookie);
        assert_eq!(binds.handle(relay, &bound), Some(true));
        assert!(binds.is_bound(&leg));
        // A later cookie reply (a new bucket) keeps the side bound.
        let newer = [0x78; COOKIE_LEN];
        let reply = encode_bind_reply(&second[0].1, BindStatus::Cookie, &newer);
        assert_eq!(binds.handle(relay, &reply), Some(false));
        assert!(binds.is_bound(&leg));
        assert_eq!(decode_bind(&binds.poll(2)[0].1).unwrap().cookie, newer);
    }

    #[test]
    fn rebind_all_asks_again_at_once_but_never_a_refused_leg() {
        let relay = SocketAddr::from(([198, 51, 100, 1], 3478));
        let leg = |t| RelayLeg {
            addr: relay,
            token: [t; TOKEN_LEN],
        };
        let mut binds = RelayBinds::default();
        binds.add(leg(1));
        binds.add(leg(2));
        let first = binds.poll(0);
        assert_eq!(first.len(), 2);
        let cookie = [0x55; COOKIE_LEN];
        let bound = encode_bind_reply(&first[0].1, BindStatus::Bound, &cookie);
        let refused = encode_bind_reply(&first[1].1, BindStatus::UnknownToken, &cookie);
        assert_eq!(binds.handle(relay, &bound), Some(true));
        assert_eq!(binds.handle(relay, &refused), Some(false));
        // Bound: next due at the 15 s refresh; refused: never.
        assert_eq!(binds.poll_timeout(), Some(REBIND_MS));
        binds.rebind_all();
        assert!(!binds.is_bound(&leg(1)));
        let again = binds.poll(100);
        assert_eq!(again.len(), 1, "only the bound leg binds again");
        assert_eq!(decode_bind(&again[0].1).unwrap().token, leg(1).token);
        assert_eq!(
            decode_bind(&again[0].1).unwrap().cookie,
            cookie,
            "with its cookie"
        );
        // Unconfirmed again: retried every BIND_RETRY_MS, BIND_TRIES times.
        assert_eq!(binds.poll_timeout(), Some(100 + BIND_RETRY_MS));
        let tries = (1..BIND_TRIES + 5)
            .filter(|k| !binds.poll(100 + u64::from(*k) * BIND_RETRY_MS).is_empty())
            .count() as u32;
        assert_eq!(tries + 1, BIND_TRIES);
        assert_eq!(binds.poll_timeout(), None);
    }
}
