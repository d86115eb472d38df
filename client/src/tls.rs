//! The client's TLS configuration for the login server, over QUIC and over
//! TCP (the firewall fallback).
//!
//! The login server's TLS certificate is issued by its signing key (see
//! `natter_login::datadir`). The client turns the pinned signing key
//! (`login-key.pub`) into the only trust anchor, so the TLS handshake itself
//! authenticates the server: a man in the middle without the signing key
//! cannot complete it, and never sees the password. The issued user
//! certificate is verified against the same key as a second check.

use std::sync::Arc;

use rsa::RsaPublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{Der, TrustAnchor};

use crate::ClientError;

/// ALPN protocol id (natter-net's, defined once).
pub use natter_net::ALPN;
/// The name in the server's TLS certificate (sent as SNI).
pub const TLS_SERVER_NAME: &str = "natter-login";
/// Common name of the TLS certificate's issuer: the signing key.
pub const TLS_ISSUER_CN: &str = "natter login signing key";

/// Parses a pinned login key file: PEM `PUBLIC KEY` (SubjectPublicKeyInfo,
/// as `natter-login` writes it) or `RSA PUBLIC KEY` (PKCS#1).
pub fn parse_login_key(pem: &str) -> Result<RsaPublicKey, ClientError> {
    RsaPublicKey::from_public_key_pem(pem)
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
        .map_err(|e| ClientError::Crypto(format!("not an RSA public key in PEM form: {e}")))
}

/// Reads and parses a pinned login key file.
pub fn read_login_key(path: &std::path::Path) -> Result<RsaPublicKey, ClientError> {
    let pem = std::fs::read_to_string(path).map_err(|e| ClientError::file(path, e))?;
    parse_login_key(&pem).map_err(|e| ClientError::file(path, e))
}

fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(value.len(), &mut out);
    out.extend_from_slice(value);
    out
}

/// The contents (without the outer SEQUENCE header) of a DER SEQUENCE.
fn sequence_contents(der: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        n if n < 0x80 => (usize::from(n), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => (
            usize::from(*rest.first()?) << 8 | usize::from(*rest.get(1)?),
            rest.get(2..)?,
        ),
        _ => return None,
    };
    (rest.len() == len).then_some(rest)
}

/// The trust anchor standing for the login server's signing key: the
/// issuer name the server puts in its TLS certificate, and the pinned key.
pub fn trust_anchor(login_key: &RsaPublicKey) -> Result<TrustAnchor<'static>, ClientError> {
    // Name ::= SEQUENCE OF SET OF SEQUENCE { OID 2.5.4.3 (CN), UTF8String }.
    // A trust anchor holds the *contents* of the Name and SPKI sequences.
    let mut atv = der_tlv(0x06, &[0x55, 0x04, 0x03]);
    atv.extend(der_tlv(0x0c, TLS_ISSUER_CN.as_bytes()));
    let subject = der_tlv(0x31, &der_tlv(0x30, &atv));
    let spki = login_key
        .to_public_key_der()
        .map_err(|e| ClientError::Crypto(format!("login key: {e}")))?;
    let spki = sequence_contents(spki.as_bytes())
        .ok_or_else(|| ClientError::Crypto("login key: bad SPKI encoding".into()))?
        .to_vec();
    Ok(TrustAnchor {
        subject: Der::from(subject),
        subject_public_key_info: Der::from(spki),
        name_constraints: None,
    })
}

/// The server-certificate verifier that trusts only `login_key`: the
/// standard webpki checks (chain, name, validity, handshake signature) over
/// a root store holding the one [`trust_anchor`]. QUIC and TLS over TCP use
/// this same verifier, so both transports pin the login server alike.
pub fn login_verifier(
    login_key: &RsaPublicKey,
) -> Result<Arc<dyn ServerCertVerifier>, ClientError> {
    let provider = natter_net::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.roots.push(trust_anchor(login_key)?);
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| ClientError::Crypto(format!("login key verifier: {e}")))?;
    Ok(verifier)
}

/// A quinn client configuration that trusts only `login_key`, with the
/// transport `settings` of the login connection.
pub fn client_config(
    login_key: &RsaPublicKey,
    settings: &natter_net::TransportSettings,
) -> Result<quinn::ClientConfig, ClientError> {
    natter_net::client_config(login_verifier(login_key)?, settings)
        .map_err(|e| ClientError::Crypto(e.to_string()))
}

/// A TLS-over-TCP client configuration (TLS 1.3, ALPN `natter/1`) that
/// trusts only `login_key`, like [`client_config`] for QUIC.
pub fn tcp_client_config(
    login_key: &RsaPublicKey,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    natter_net::tls::client_tls_config(login_verifier(login_key)?)
        .map_err(|e| ClientError::Crypto(e.to_string()))
}
