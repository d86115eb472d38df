//! What each signature covers: the one place that builds the bytes signed
//! with an RSA key outside certificates and call key shares.
//!
//! Signatures that prove possession of a key to a peer are bound to the
//! connection they travel on with the TLS exporter (RFC 8446, section 7.5;
//! for QUIC, RFC 9001, section 4.1): both ends of one TLS connection compute
//! the same 32 bytes, and no other connection has them. A signature relayed
//! to a different connection (a rogue supernode passing on an honest one's
//! challenge) therefore fails. Variable-length fields are prefixed with
//! their length as a big-endian u16 (`len16`), so no two inputs give the
//! same bytes.
//!
//! ```text
//! exporter   = TLS-Exporter(label "EXPORTER-natter-v2", context "", 32)
//! login      = "NATTER-LOGIN-V2"    || exporter || len16(name) || name
//!              || len16(public_key) || public_key || chat_key (32)
//! announce   = "NATTER-ANNOUNCE-V2" || exporter || node_id (16)
//! promote    = "NATTER-PROMOTE-V1"  || exporter || node_id (16)
//! link hello = "NATTER-LINK-V2"     || role (1 dialler, 2 acceptor) || exporter
//! SN join    = "NATTER-SN-JOIN-V2"  || exporter || nonce
//! join proof = "NATTER-JOIN-V2"     || exporter || node_id || nonce || SHA-256(statement)
//! statement  = "NATTER-STATEMENT-V2" || statement (encoded JoinStatement)
//! chat       = "NATTER-CHAT-V2"     || message_id || len16(from) || from
//!              || len16(to) || to || sent_at (i64 BE) || SHA-256(text)
//! ```

use sha2::{Digest, Sha256};

/// The TLS exporter label of every binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-natter-v2";
/// Bytes taken from the exporter.
pub const EXPORTER_LEN: usize = 32;

/// The 32 exporter bytes of one TLS connection.
pub type Exporter = [u8; EXPORTER_LEN];

/// Which end of a supernode link signs a [`link_hello_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum LinkRole {
    Dialler = 1,
    Acceptor = 2,
}

/// Appends `bytes` prefixed with their length (`len16`).
pub(crate) fn push16(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

/// What a client signs in `LoginRequest.proof`.
pub fn login_message(
    exporter: &Exporter,
    name: &str,
    public_key_der: &[u8],
    chat_key: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + name.len() + public_key_der.len());
    m.extend_from_slice(b"NATTER-LOGIN-V2");
    m.extend_from_slice(exporter);
    push16(&mut m, name.as_bytes());
    push16(&mut m, public_key_der);
    m.extend_from_slice(chat_key);
    m
}

/// What a supernode signs in `SupernodeAnnounce.signature`.
pub fn announce_message(exporter: &Exporter, node_id: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(b"NATTER-ANNOUNCE-V2");
    m.extend_from_slice(exporter);
    m.extend_from_slice(node_id);
    m
}

/// What the user sponsoring a promoted client's supernode signs in
/// `SupernodeAnnounce.sponsor_signature`, with the key of its USER
/// certificate: this connection's exporter and the supernode key's id, so
/// the sponsorship names one key and cannot be replayed on another
/// connection.
pub fn promote_message(exporter: &Exporter, node_id: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(b"NATTER-PROMOTE-V1");
    m.extend_from_slice(exporter);
    m.extend_from_slice(node_id);
    m
}

/// What each end of a supernode link signs in `LinkHello.signature`.
pub fn link_hello_message(role: LinkRole, exporter: &Exporter) -> Vec<u8> {
    let mut m = Vec::with_capacity(48);
    m.extend_from_slice(b"NATTER-LINK-V2");
    m.push(role as u8);
    m.extend_from_slice(exporter);
    m
}

/// What a supernode signs in `JoinChallenge.signature`.
pub fn supernode_join_message(exporter: &Exporter, nonce: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(96);
    m.extend_from_slice(b"NATTER-SN-JOIN-V2");
    m.extend_from_slice(exporter);
    m.extend_from_slice(nonce);
    m
}

/// What a client signs in `JoinProof.signature`.
pub fn join_proof_message(
    exporter: &Exporter,
    node_id: &[u8],
    nonce: &[u8],
    statement: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(b"NATTER-JOIN-V2");
    m.extend_from_slice(exporter);
    m.extend_from_slice(node_id);
    m.extend_from_slice(nonce);
    m.extend_from_slice(&Sha256::digest(statement));
    m
}

/// What a client signs in `JoinProof.statement_signature` (and what every
/// replica checks in `UserRecord.statement_signature`).
pub fn statement_message(statement: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(19 + statement.len());
    m.extend_from_slice(b"NATTER-STATEMENT-V2");
    m.extend_from_slice(statement);
    m
}

/// What a sender signs in `ChatBody.signature`.
pub fn chat_message(message_id: &[u8], from: &str, to: &str, sent_at: i64, text: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(b"NATTER-CHAT-V2");
    m.extend_from_slice(message_id);
    push16(&mut m, from.as_bytes());
    push16(&mut m, to.as_bytes());
    m.extend_from_slice(&sent_at.to_be_bytes());
    m.extend_from_slice(&Sha256::digest(text.as_bytes()));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let e = [7u8; EXPORTER_LEN];
        assert_ne!(
            login_message(&e, "ab", b"c", &[0; 32]),
            login_message(&e, "a", b"bc", &[0; 32])
        );
        assert_ne!(
            chat_message(&[1; 16], "ab", "c", 5, "x"),
            chat_message(&[1; 16], "a", "bc", 5, "x")
        );
    }

    #[test]
    fn the_promote_message_is_apart_from_the_announce_message() {
        let e = [7u8; EXPORTER_LEN];
        // Same exporter and node id, different domains: a supernode's own
        // announce signature never passes for a user's sponsorship.
        assert_ne!(
            promote_message(&e, &[1; 16]),
            announce_message(&e, &[1; 16])
        );
        assert!(promote_message(&e, &[1; 16]).starts_with(b"NATTER-PROMOTE-V1"));
    }

    #[test]
    fn roles_and_exporters_change_the_link_message() {
        let a = [1u8; EXPORTER_LEN];
        let b = [2u8; EXPORTER_LEN];
        assert_ne!(
            link_hello_message(LinkRole::Dialler, &a),
            link_hello_message(LinkRole::Acceptor, &a)
        );
        assert_ne!(
            link_hello_message(LinkRole::Dialler, &a),
            link_hello_message(LinkRole::Dialler, &b)
        );
    }
}
