//! Certificates as they arrive from peers and from the login server:
//! `Certificate` (protobuf) then `proto::cert::verify` (user certificates) against the fixed test
//! issuer (`proto/tests/vectors/issuer.pem`); the `CertificateBody` decode;
//! `parse_public_key` (PKCS#1 DER). Total; a certificate verifies only if
//! its body is the issuer's signed body; a parsed key re-encodes and parses
//! to the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_fuzz::{ISSUER, NOW_S};
use natter_proto::cert::{self, CertError, parse_public_key, public_key_der};
use natter_proto::messages::{Certificate, CertificateBody};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let issuer = ISSUER.public_key();
    if let Ok(certificate) = Certificate::decode(data) {
        match cert::verify(&certificate, &issuer, NOW_S) {
            Ok(verified) => {
                // Only the issuer's own signature gets here: the body is its.
                let body =
                    CertificateBody::decode(certificate.body.as_slice()).expect("signed body");
                assert_eq!(verified.name, body.name);
                assert!(verified.not_before <= NOW_S && NOW_S < verified.not_after);
            }
            Err(CertError::BadSignature | CertError::WrongIssuer) => {}
            // Past the signature, only a body the issuer really signed gets
            // another error (a version-1 body, the other kind, expired).
            Err(e) => assert!(
                cert::verify_signature(&issuer, &certificate.body, &certificate.signature).is_ok(),
                "a body the issuer never signed got past the signature: {e}"
            ),
        }
    }
    if let Ok(body) = CertificateBody::decode(data) {
        assert_eq!(
            CertificateBody::decode(body.encode_to_vec().as_slice()),
            Ok(body)
        );
    }
    if let Ok(key) = parse_public_key(data) {
        assert_eq!(parse_public_key(&public_key_der(&key)), Ok(key));
    }
});
