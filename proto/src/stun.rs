//! STUN binding (RFC 8489), enough for supernodes to act as standard STUN
//! reflectors and for `natter netcheck` to use any standard STUN server, plus
//! the RFC 5780 attributes used to measure NAT filtering.
//!
//! ```text
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |0 0|     STUN message type     |         message length        |
//! |                   magic cookie 0x2112A442                     |
//! |                  transaction id (96 bits)                     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! attributes: type (u16) | length (u16) | value, padded to 4 bytes
//! ```
//!
//! A SoM datagram and a STUN message can share one UDP port: [`looks_like_stun`]
//! tells them apart by the two zero bits, the magic cookie and a length that
//! matches the datagram.
//!
//! **No amplification.** A reflector answers a Binding request with
//! [`answer`], which never returns more than [`answer_budget`] bytes (1.6
//! times the request): a minimal 20-byte request gets XOR-MAPPED-ADDRESS
//! alone (32 bytes over IPv4), and a client that wants the RFC 5780
//! attributes pads its request with PADDING ([`Message::pad_to`],
//! [`PADDED_REQUEST_LEN`]) to make room for them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The fixed magic cookie.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Bytes of the STUN header.
pub const HEADER_LEN: usize = 20;
/// Binding request.
pub const BINDING_REQUEST: u16 = 0x0001;
/// Binding success response.
pub const BINDING_SUCCESS: u16 = 0x0101;
/// Binding error response.
pub const BINDING_ERROR: u16 = 0x0111;
/// The error code of a server that does not know a comprehension-required
/// attribute (RFC 8489 section 14.8), such as PADDING.
pub const UNKNOWN_ATTRIBUTE: u16 = 420;

/// How much larger than its request an answer may be: 8/5 (1.6 times).
pub const ANSWER_RATIO: (usize, usize) = (8, 5);
/// The largest answer with every attribute a reflector can give (IPv6
/// XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS of 24 bytes each,
/// SOFTWARE `natter` of 12, FINGERPRINT of 8).
pub const FULL_ANSWER_MAX: usize = HEADER_LEN + 3 * (4 + 20) + (4 + 8) + 8;
/// The request length whose budget holds [`FULL_ANSWER_MAX`]: what a client
/// pads to when it needs the RFC 5780 attributes.
pub const PADDED_REQUEST_LEN: usize =
    (FULL_ANSWER_MAX * ANSWER_RATIO.1).div_ceil(ANSWER_RATIO.0 * 4) * 4;

const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_CHANGE_REQUEST: u16 = 0x0003;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_PADDING: u16 = 0x0026;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_FINGERPRINT: u16 = 0x8028;
const ATTR_RESPONSE_ORIGIN: u16 = 0x802b;
const ATTR_OTHER_ADDRESS: u16 = 0x802c;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Why bytes are not a STUN message we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("not a STUN message")]
    NotStun,
    #[error("STUN message is truncated")]
    Truncated,
    #[error("STUN attribute {0:#06x} is malformed")]
    BadAttribute(u16),
    #[error("STUN fingerprint does not match")]
    BadFingerprint,
}

/// A STUN binding message (request or response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: u16,
    pub transaction_id: [u8; 12],
    /// XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS from old servers).
    pub mapped: Option<SocketAddr>,
    /// RFC 5780 CHANGE-REQUEST: answer from another IP / another port.
    pub change_ip: bool,
    pub change_port: bool,
    /// RFC 5780 OTHER-ADDRESS: the server's alternate address.
    pub other_address: Option<SocketAddr>,
    /// RFC 5780 RESPONSE-ORIGIN: where the response was sent from.
    pub response_origin: Option<SocketAddr>,
    /// RFC 5780 PADDING: bytes of its value (0: no PADDING attribute).
    pub padding: usize,
    /// ERROR-CODE of an error response (class * 100 + number).
    pub error_code: Option<u16>,
}

/// The optional trailer attributes [`Message::encode_with`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Trailer {
    software: bool,
    fingerprint: bool,
}

impl Message {
    /// A binding request.
    pub fn request(transaction_id: [u8; 12]) -> Self {
        Self {
            kind: BINDING_REQUEST,
            transaction_id,
            mapped: None,
            change_ip: false,
            change_port: false,
            other_address: None,
            response_origin: None,
            padding: 0,
            error_code: None,
        }
    }

    /// Adds a PADDING attribute (zeros) so the encoded message is at least
    /// `total` bytes; no attribute when it already is.
    pub fn pad_to(&mut self, total: usize) {
        self.padding = 0;
        let len = self.encode().len();
        if len < total {
            // The attribute's own 4-byte header counts too; an empty value
            // would mean no attribute, so it is at least 4 bytes.
            self.padding = ((total - len).saturating_sub(4).div_ceil(4) * 4).max(4);
        }
    }

    /// The success response telling the requester it was seen as `mapped`.
    pub fn response(transaction_id: [u8; 12], mapped: SocketAddr) -> Self {
        Self {
            kind: BINDING_SUCCESS,
            mapped: Some(mapped),
            ..Self::request(transaction_id)
        }
    }

    /// Encodes the message, with SOFTWARE and FINGERPRINT.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(Trailer {
            software: true,
            fingerprint: true,
        })
    }

    fn encode_with(&self, trailer: Trailer) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(&self.kind.to_be_bytes());
        out.extend_from_slice(&[0, 0]); // length, patched below
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&self.transaction_id);
        if let Some(addr) = self.mapped {
            let value = xor_address(addr, &self.transaction_id);
            attribute(&mut out, ATTR_XOR_MAPPED_ADDRESS, &value);
        }
        if self.change_ip || self.change_port {
            let flags = (u32::from(self.change_ip) << 2) | (u32::from(self.change_port) << 1);
            attribute(&mut out, ATTR_CHANGE_REQUEST, &flags.to_be_bytes());
        }
        if let Some(addr) = self.response_origin {
            attribute(&mut out, ATTR_RESPONSE_ORIGIN, &plain_address(addr));
        }
        if let Some(addr) = self.other_address {
            attribute(&mut out, ATTR_OTHER_ADDRESS, &plain_address(addr));
        }
        if let Some(code) = self.error_code {
            let value = [0, 0, (code / 100 % 8) as u8, (code % 100) as u8];
            attribute(&mut out, ATTR_ERROR_CODE, &value);
        }
        if self.padding > 0 {
            attribute(&mut out, ATTR_PADDING, &vec![0u8; self.padding]);
        }
        if trailer.software {
            attribute(&mut out, ATTR_SOFTWARE, b"natter");
        }
        if trailer.fingerprint {
            // FINGERPRINT covers everything before it, with the length
            // already counting the fingerprint attribute itself.
            set_length(&mut out, 8);
            let crc = crc32(&out) ^ FINGERPRINT_XOR;
            attribute(&mut out, ATTR_FINGERPRINT, &crc.to_be_bytes());
        }
        set_length(&mut out, 0);
        out
    }

    /// Decodes a STUN message. A FINGERPRINT (last attribute) must match and
    /// is checked first; unknown attributes are skipped.
    pub fn decode(bytes: &[u8]) -> Result<Self, StunError> {
        if !looks_like_stun(bytes) {
            return Err(StunError::NotStun);
        }
        // A FINGERPRINT is the last attribute; check it before trusting anything.
        let n = bytes.len();
        if n >= HEADER_LEN + 8 && bytes[n - 8..n - 4] == [0x80, 0x28, 0x00, 0x04] {
            let mut got = [0u8; 4];
            got.copy_from_slice(&bytes[n - 4..]);
            if u32::from_be_bytes(got) != crc32(&bytes[..n - 8]) ^ FINGERPRINT_XOR {
                return Err(StunError::BadFingerprint);
            }
        }
        let kind = u16::from_be_bytes([bytes[0], bytes[1]]);
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&bytes[8..20]);
        let mut msg = Self {
            kind,
            ..Self::request(transaction_id)
        };
        let mut at = HEADER_LEN;
        while at < bytes.len() {
            let head = bytes.get(at..at + 4).ok_or(StunError::Truncated)?;
            let attr = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let value = bytes
                .get(at + 4..at + 4 + len)
                .ok_or(StunError::Truncated)?;
            match attr {
                ATTR_XOR_MAPPED_ADDRESS => {
                    msg.mapped = Some(
                        parse_address(value, Some(&transaction_id))
                            .ok_or(StunError::BadAttribute(attr))?,
                    );
                }
                ATTR_MAPPED_ADDRESS if msg.mapped.is_none() => {
                    msg.mapped =
                        Some(parse_address(value, None).ok_or(StunError::BadAttribute(attr))?);
                }
                ATTR_CHANGE_REQUEST => {
                    let flags: [u8; 4] = value
                        .try_into()
                        .map_err(|_| StunError::BadAttribute(attr))?;
                    let flags = u32::from_be_bytes(flags);
                    msg.change_ip = flags & 4 != 0;
                    msg.change_port = flags & 2 != 0;
                }
                ATTR_OTHER_ADDRESS => {
                    msg.other_address =
                        Some(parse_address(value, None).ok_or(StunError::BadAttribute(attr))?);
                }
                ATTR_RESPONSE_ORIGIN => {
                    msg.response_origin =
                        Some(parse_address(value, None).ok_or(StunError::BadAttribute(attr))?);
                }
                ATTR_PADDING => msg.padding = len,
                ATTR_ERROR_CODE => {
                    let code = value.get(2..4).ok_or(StunError::BadAttribute(attr))?;
                    // RFC 8489 14.8: class 3..=6, number 0..=99; anything
                    // else has no code to stand for (and would not encode
                    // back to the same bytes).
                    let (class, number) = (code[0] & 7, code[1]);
                    if !(3..=6).contains(&class) || number > 99 {
                        return Err(StunError::BadAttribute(attr));
                    }
                    msg.error_code = Some(u16::from(class) * 100 + u16::from(number));
                }
                ATTR_FINGERPRINT => {
                    let got: [u8; 4] = value
                        .try_into()
                        .map_err(|_| StunError::BadAttribute(attr))?;
                    if u32::from_be_bytes(got) != crc32(&bytes[..at]) ^ FINGERPRINT_XOR {
                        return Err(StunError::BadFingerprint);
                    }
                }
                _ => {}
            }
            at += 4 + len.div_ceil(4) * 4;
        }
        Ok(msg)
    }
}

/// The most bytes an answer to a request of `request_len` bytes may have:
/// 1.6 times the request, rounded down.
pub fn answer_budget(request_len: usize) -> usize {
    request_len.saturating_mul(ANSWER_RATIO.0) / ANSWER_RATIO.1
}

/// The Binding success response a reflector sends to `request` (which was
/// `request_len` bytes on the wire) from `from`: XOR-MAPPED-ADDRESS always,
/// then, while the answer stays within [`answer_budget`], FINGERPRINT,
/// OTHER-ADDRESS (`other`), RESPONSE-ORIGIN (`origin`) and SOFTWARE, in that
/// order. `None` when even XOR-MAPPED-ADDRESS alone would not fit (a
/// request shorter than 28 bytes from an IPv6 source): such a request is
/// not answered.
pub fn answer(
    request: &Message,
    request_len: usize,
    from: SocketAddr,
    origin: SocketAddr,
    other: SocketAddr,
) -> Option<Vec<u8>> {
    let budget = answer_budget(request_len);
    let mut response = Message::response(request.transaction_id, from);
    let mut trailer = Trailer {
        software: false,
        fingerprint: false,
    };
    let mut best = response.encode_with(trailer);
    if best.len() > budget {
        return None;
    }
    // Each step adds one attribute to what fitted so far; one that does not
    // fit is left out and the next (smaller or equal) one is tried.
    type Step = fn(&mut Message, &mut Trailer, SocketAddr, SocketAddr);
    let steps: [Step; 4] = [
        |_, t, _, _| t.fingerprint = true,
        |m, _, _, other| m.other_address = Some(other),
        |m, _, origin, _| m.response_origin = Some(origin),
        |_, t, _, _| t.software = true,
    ];
    for step in steps {
        let (mut m, mut t) = (response.clone(), trailer);
        step(&mut m, &mut t, origin, other);
        let bytes = m.encode_with(t);
        if bytes.len() <= budget {
            (response, trailer, best) = (m, t, bytes);
        }
    }
    Some(best)
}

/// Whether a datagram is (most likely) STUN rather than SoM: top two bits
/// zero, the magic cookie, and a length that matches the datagram.
pub fn looks_like_stun(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN
        && bytes[0] & 0xC0 == 0
        && bytes[4..8] == MAGIC_COOKIE.to_be_bytes()
        && usize::from(u16::from_be_bytes([bytes[2], bytes[3]])) == bytes.len() - HEADER_LEN
        && bytes.len().is_multiple_of(4)
}

fn attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().div_ceil(4) * 4, 0);
}

/// Sets the header length to the attributes so far plus `extra` bytes.
fn set_length(out: &mut [u8], extra: usize) {
    let len = (out.len() - HEADER_LEN + extra) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
}

fn plain_address(addr: SocketAddr) -> Vec<u8> {
    let mut v = vec![0u8];
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&addr.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.push(2);
            v.extend_from_slice(&addr.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
    }
    v
}

fn xor_mask(transaction_id: &[u8; 12]) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(transaction_id);
    mask
}

fn xor_address(addr: SocketAddr, transaction_id: &[u8; 12]) -> Vec<u8> {
    let mut v = plain_address(addr);
    let mask = xor_mask(transaction_id);
    v[2] ^= mask[0];
    v[3] ^= mask[1];
    for (b, m) in v[4..].iter_mut().zip(mask) {
        *b ^= m;
    }
    v
}

fn parse_address(value: &[u8], transaction_id: Option<&[u8; 12]>) -> Option<SocketAddr> {
    let mut v = value.to_vec();
    if let Some(tid) = transaction_id {
        let mask = xor_mask(tid);
        *v.get_mut(2)? ^= mask[0];
        *v.get_mut(3)? ^= mask[1];
        for (b, m) in v.get_mut(4..)?.iter_mut().zip(mask) {
            *b ^= m;
        }
    }
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]);
    let ip = match (v.get(1)?, v.len()) {
        (1, 8) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&v[4..8]).ok()?)),
        (2, 20) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&v[4..20]).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// CRC-32 (IEEE 802.3), as FINGERPRINT requires.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn decodes_the_rfc_5769_ipv4_response_vector() {
        // RFC 5769 section 2.2 (with MESSAGE-INTEGRITY, which we skip).
        let hex = concat!(
            "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220",
            "002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7",
            "80280004c07d4c96"
        );
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let msg = Message::decode(&bytes).unwrap();
        assert_eq!(msg.kind, BINDING_SUCCESS);
        assert_eq!(msg.mapped, Some("192.0.2.1:32853".parse().unwrap()));
    }

    #[test]
    fn round_trips_with_rfc_5780_attributes() {
        let mut msg = Message::response([7; 12], "[2001:db8::1]:4242".parse().unwrap());
        msg.other_address = Some("198.51.100.11:3479".parse().unwrap());
        msg.response_origin = Some("198.51.100.10:3478".parse().unwrap());
        let bytes = msg.encode();
        assert!(looks_like_stun(&bytes));
        assert_eq!(Message::decode(&bytes).unwrap(), msg);
        let mut req = Message::request([9; 12]);
        req.change_port = true;
        assert_eq!(Message::decode(&req.encode()).unwrap(), req);
    }

    fn addrs() -> [SocketAddr; 4] {
        [
            "192.0.2.1:32853".parse().unwrap(),
            "[2001:db8::1]:4242".parse().unwrap(),
            "198.51.100.10:3478".parse().unwrap(),
            "[2001:db8::10]:3478".parse().unwrap(),
        ]
    }

    #[test]
    fn a_minimal_request_gets_xor_mapped_address_alone() {
        let [v4, _, origin, _] = addrs();
        let other = SocketAddr::new(origin.ip(), origin.port() + 1);
        let request = Message::request([3; 12]);
        // A bare header, as the smallest clients send it.
        let bare = &request.encode_with(Trailer {
            software: false,
            fingerprint: false,
        });
        assert_eq!(bare.len(), HEADER_LEN);
        let bytes = answer(
            &Message::decode(bare).unwrap(),
            bare.len(),
            v4,
            origin,
            other,
        )
        .unwrap();
        assert!(bytes.len() <= answer_budget(HEADER_LEN), "{}", bytes.len());
        let got = Message::decode(&bytes).unwrap();
        assert_eq!(got, Message::response([3; 12], v4));
    }

    #[test]
    fn no_answer_exceeds_the_budget_and_larger_requests_get_more() {
        let [v4, v6, origin4, origin6] = addrs();
        for (from, origin) in [(v4, origin4), (v6, origin6)] {
            let other = SocketAddr::new(origin.ip(), origin.port() + 1);
            let mut attributes_before = 0;
            for len in (HEADER_LEN..=256).step_by(4) {
                let request = Message::request([len as u8; 12]);
                match answer(&request, len, from, origin, other) {
                    None => {
                        // Only when XOR-MAPPED-ADDRESS alone is too big.
                        let alone =
                            Message::response(request.transaction_id, from).encode_with(Trailer {
                                software: false,
                                fingerprint: false,
                            });
                        assert!(alone.len() > answer_budget(len), "{from} {len}");
                    }
                    Some(bytes) => {
                        assert!(
                            bytes.len() * 5 <= len * 8,
                            "{from}: {len} -> {}",
                            bytes.len()
                        );
                        let got = Message::decode(&bytes).unwrap();
                        assert_eq!(got.kind, BINDING_SUCCESS);
                        assert_eq!(got.mapped, Some(from));
                        let attributes = usize::from(got.other_address.is_some())
                            + usize::from(got.response_origin.is_some());
                        assert!(attributes >= attributes_before, "{from} {len}");
                        attributes_before = attributes;
                    }
                }
            }
        }
        // A request with FINGERPRINT (28 bytes) is answered from IPv6 too.
        assert!(answer(&Message::request([0; 12]), 28, v6, origin6, origin6).is_some());
        assert!(answer(&Message::request([0; 12]), 24, v6, origin6, origin6).is_none());
    }

    #[test]
    fn a_padded_request_gets_the_full_answer() {
        let [v4, v6, origin4, origin6] = addrs();
        let mut request = Message::request([8; 12]);
        request.change_port = true;
        request.pad_to(PADDED_REQUEST_LEN);
        let bytes = request.encode();
        assert!(bytes.len() >= PADDED_REQUEST_LEN && bytes.len() < PADDED_REQUEST_LEN + 8);
        let decoded = Message::decode(&bytes).unwrap();
        assert!(decoded.padding > 0);
        assert!(decoded.change_port);
        for (from, origin) in [(v4, origin4), (v6, origin6)] {
            let other = SocketAddr::new(origin.ip(), origin.port() + 1);
            let full = answer(&decoded, bytes.len(), from, origin, other).unwrap();
            let got = Message::decode(&full).unwrap();
            assert_eq!(got.other_address, Some(other));
            assert_eq!(got.response_origin, Some(origin));
            // SOFTWARE too: the same bytes as the unrestricted encoder.
            let mut all = Message::response([8; 12], from);
            all.other_address = Some(other);
            all.response_origin = Some(origin);
            assert_eq!(full, all.encode());
            if from.is_ipv6() {
                assert_eq!(full.len(), FULL_ANSWER_MAX);
            }
        }
        // Already long enough: no padding added.
        let mut long = Message::request([9; 12]);
        long.pad_to(HEADER_LEN);
        assert_eq!(long.padding, 0);
    }

    #[test]
    fn error_codes_round_trip() {
        let mut error = Message::request([4; 12]);
        error.kind = BINDING_ERROR;
        error.error_code = Some(UNKNOWN_ATTRIBUTE);
        assert_eq!(Message::decode(&error.encode()).unwrap(), error);
    }

    #[test]
    fn a_corrupted_message_fails_its_fingerprint() {
        let mut bytes = Message::response([1; 12], "10.0.0.1:1".parse().unwrap()).encode();
        bytes[25] ^= 1;
        assert_eq!(Message::decode(&bytes), Err(StunError::BadFingerprint));
    }
}
